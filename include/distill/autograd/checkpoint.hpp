// Activation checkpointing: run `fn` without recording, keep only its output, and recompute it with
// recording during backward. Gradients equal those of running without checkpointing.
// Contract: every non-leaf Var that `fn` reads must be passed as an argument (trainable leaves such as
// weights may be captured); the recompute must be deterministic. `fn` is stored and called AGAIN
// during backward(), possibly after the scope that created it has returned: capture by value (Vars
// and small configs are cheap to copy), never references to locals that may be gone by then.
#pragma once
#include <tuple>

#include "distill/autograd/var.hpp"

namespace distill::autograd {

template <class F, class... Vs>
auto checkpoint(F fn, const Vs&... inputs) {
  using Out = std::invoke_result_t<F, const Vs&...>;
  if (!grad_enabled()) return fn(inputs...);
  Out out;
  {
    NoGradGuard no_grad;
    out = fn(inputs...);
  }
  std::vector<std::shared_ptr<Node>> parents{inputs.node()...};
  auto bw = [fn, inputs...](typename Out::node_type& self) {
    auto detached = std::make_tuple(Vs(inputs.value(), inputs.requires_grad())...);
    Out re;
    {
      EnableGradGuard grad_on;
      re = std::apply(fn, detached);
    }
    if (!re.requires_grad()) return;
    re.backward(self.grad);
    std::apply(
        [&](const auto&... det) {
          auto add = [](const auto& orig, const auto& d) {
            if (orig.requires_grad() && d.grad().defined()) accumulate(orig.grad_buffer(), d.grad());
          };
          (add(inputs, det), ...);
        },
        detached);
  };
  return Out::record("checkpoint", out.value(), parents, bw, /*always=*/true);
}

}  // namespace distill::autograd
