// Scaled-dot-product attention (causal / sliding window, GQA, KV-cache offset), forward and backward.
//   attention(q, k, v, opts): q [B, T, H, D], k and v [B, S, KV, D] -> out [B, T, H, D].
// Layout, GQA mapping and mask semantics: attention_ref.hpp (ref::, the truth). The CPU fast path
// (flash-attention tiles with an online softmax): attention_cpu.hpp.
// The recorded op saves out and the row logsumexp; its backward recomputes the probabilities tile by tile
// and ACCUMULATES into the gradients of those of q, k, v that require one.
#pragma once
#include "distill/ops/attention_cpu.hpp"
#include "distill/ops/attention_ref.hpp"

namespace distill {

template <FloatingDtype T>
Var<T> attention(const Var<T>& q, const Var<T>& k, const Var<T>& v, AttentionOptions opts = {}) {
  AttentionForward<T> fwd = cpu::attention_forward(q.value(), k.value(), v.value(), opts);
  Tensor<T> out = fwd.out;
  return Var<T>::record("attention", out, {q.node(), k.node(), v.node()}, [q, k, v, fwd, opts](auto& self) {
    const AttentionGrads<T> g =
        cpu::attention_backward(q.value(), k.value(), v.value(), fwd.out, fwd.lse, self.grad, opts);
    if (q.requires_grad()) autograd::accumulate(q.grad_buffer(), g.dq);
    if (k.requires_grad()) autograd::accumulate(k.grad_buffer(), g.dk);
    if (v.requires_grad()) autograd::accumulate(v.grad_buffer(), g.dv);
  });
}

}  // namespace distill
