// LoRA adapters with PEFT's conventions (SPEC §7; peft/tuners/lora/layer.py):
//   y = base(x) + B(A(dropout(x))) * scaling,   A [r, in], B [out, r], no bias
//   scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
//   init "default": A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0 (a no-op at start)
//   init "gaussian": A ~ N(0, 1/r), B = 0
// Dropout applies to the adapter branch's input only. The adapter computes in f32 (PEFT keeps adapter weights
// in f32 and casts x to their dtype; the sum is cast back to the base output's dtype T).
// Target modules are matched as PEFT does for a list: the module's name equals a target or ends in "." + target;
// "all-linear" selects every projection (never the lm_head). Initial values come from our generator, not
// torch's: the distributions are PEFT's, the draws are not (a run starts from an adapter file to match PEFT).
#pragma once
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "distill/nn/functional.hpp"
#include "distill/ops/matmul.hpp"
#include "distill/ops/shape_ops.hpp"

namespace distill::nn {

inline const std::vector<std::string>& default_lora_targets() {
  static const std::vector<std::string> t{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return t;
}

struct LoraConfig {
  int64_t r = 8;
  double alpha = 8;
  bool rslora = false;
  double dropout = 0;
  std::vector<std::string> targets = default_lora_targets();  // or {"all-linear"}
  std::string init = "default";                               // "default" (kaiming A, zero B) or "gaussian"
  uint64_t seed = 3407;

  double scaling() const { return rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r); }
  void validate() const {
    DISTILL_CHECK(r >= 1, "LoRA: rank r must be >= 1, got ", r);
    DISTILL_CHECK(std::isfinite(alpha), "LoRA: lora_alpha must be finite, got ", alpha);
    DISTILL_CHECK(dropout >= 0 && dropout < 1, "LoRA: lora_dropout must be in [0, 1), got ", dropout);
    DISTILL_CHECK(!targets.empty(), "LoRA: no target modules");
    DISTILL_CHECK(init == "default" || init == "gaussian", "LoRA: init must be \"default\" or \"gaussian\", got \"",
                  init, "\"");
  }
  // Whether the module called `module` (e.g. "model.layers.3.self_attn.q_proj") is a target.
  bool targets_module(std::string_view module) const {
    for (const std::string& t : targets) {
      if (t == "all-linear") return true;
      if (module == t) return true;
      if (module.size() > t.size() && module.ends_with(t) && module[module.size() - t.size() - 1] == '.') return true;
    }
    return false;
  }
};

// A trainable adapter (f32 master weights on device D).
template <class D = Cpu>
struct LoraAdapter {
  Var<float, D> A;  // [r, in]
  Var<float, D> B;  // [out, r]
  double scaling = 1;
  double dropout = 0;

  int64_t rank() const { return A.dim(0); }
  int64_t in_features() const { return A.dim(1); }
  int64_t out_features() const { return B.dim(0); }

  // A fresh adapter for a projection [out, in]; `seed` should differ per module (derive_seed).
  static LoraAdapter make(int64_t in, int64_t out, const LoraConfig& c, uint64_t seed) {
    c.validate();
    std::mt19937_64 g(seed);
    auto a = Tensor<float>::empty({c.r, in});
    if (c.init == "gaussian") {
      std::normal_distribution<double> n(0.0, 1.0 / static_cast<double>(c.r));
      for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] = static_cast<float>(n(g));
    } else {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      std::uniform_real_distribution<double> u(-bound, bound);
      for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] = static_cast<float>(u(g));
    }
    LoraAdapter l;
    if constexpr (std::is_same_v<D, Cpu>) {
      l.A = Var<float, D>::param(a);
      l.B = Var<float, D>::param(Tensor<float>::zeros({out, c.r}));
    } else {
      l.A = Var<float, D>::param(a.template to<D>());
      l.B = Var<float, D>::param(Tensor<float, D>::zeros({out, c.r}));
    }
    l.scaling = c.scaling();
    l.dropout = c.dropout;
    return l;
  }

  // The adapter's contribution for x [..., in] (in T), in T: cast(B(A(dropout(f32(x))))) * scaling.
  // `train` enables dropout; `seed` picks its mask.
  template <class T>
  Var<T, D> delta(const Var<T, D>& x, bool train, uint64_t seed) const {
    const Shape s = x.shape();
    DISTILL_CHECK(s.back() == in_features(), "LoRA: input ", s.str(), " does not end in in_features ", in_features());
    Var<float, D> h = reshape(cast<float>(x), {s.rows(), s.back()});
    if (train && dropout > 0) h = nn::dropout(h, dropout, seed);
    Var<float, D> y = matmul(matmul(h, A, false, true), B, false, true);
    y = y * static_cast<float>(scaling);
    return reshape(cast<T>(y), s.with(-1, out_features()));
  }

  // scaling · (B @ A), [out, in], f32 (the merge delta, PEFT's get_delta_weight).
  Tensor<float> delta_weight() const {
    const Tensor<float> a = A.value().template to<Cpu>(), b = B.value().template to<Cpu>();
    Tensor<float> w = cpu::matmul(b, a, false, false);
    const auto s = static_cast<float>(scaling);
    for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] *= s;
    return w;
  }
};

}  // namespace distill::nn
