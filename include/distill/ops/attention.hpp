// Scaled-dot-product attention (causal / sliding window, GQA, KV-cache offset), forward and backward.
//   attention(q, k, v, opts): q [B, T, H, D], k and v [B, S, KV, D] -> out [B, T, H, D].
// Layout, GQA mapping and mask semantics: attention_ref.hpp (ref::, the truth). The CPU fast path
// (flash-attention tiles with an online softmax): attention_cpu.hpp. On Cuda (f32 and bf16): the fused
// kernels of kernels/attention_fwd.cu and kernels/attention_bwd.cu (include/distill/cuda/attention.hpp).
// The recorded op saves out and the row logsumexp; its backward recomputes the probabilities tile by tile
// and ACCUMULATES into the gradients of those of q, k, v that require one.
#pragma once
#include "distill/core/nvtx.hpp"
#include "distill/ops/attention_cpu.hpp"
#include "distill/ops/attention_ref.hpp"
#ifdef DISTILL_WITH_CUDA
#include "distill/cuda/attention.hpp"
#endif

namespace distill {

template <FloatingDtype T, class D>
Var<T, D> attention(const Var<T, D>& q, const Var<T, D>& k, const Var<T, D>& v, AttentionOptions opts = {}) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                  "attention on Cuda takes f32 or bf16 (f64 and f16 stay on the CPU)");
    NvtxRange nvtx("attention");
    const Tensor<T, Cuda> qc = q.value().contiguous(), kc = k.value().contiguous(), vc = v.value().contiguous();
    const auto d = detail::attention_dims(qc.shape(), kc.shape(), vc.shape(), opts, "attention");
    AttentionForward<T, Cuda> fwd{Tensor<T, Cuda>::empty(qc.shape()), Tensor<float, Cuda>::empty({d.B, d.H, d.T})};
    cuda::attention_forward(qc, kc, vc, opts, fwd.out, fwd.lse);
    return Var<T, Cuda>::record("attention", fwd.out, {q.node(), k.node(), v.node()}, [q, k, v, fwd, opts](auto& self) {
      NvtxRange nvtx_bw("attention_backward");
      const Tensor<T, Cuda> qb = q.value().contiguous(), kb = k.value().contiguous(), vb = v.value().contiguous();
      // The kernels overwrite dq, dk, dv; the op's contract is to add into the gradient buffers.
      const auto dq = Tensor<T, Cuda>::empty(qb.shape());
      const auto dk = Tensor<T, Cuda>::empty(kb.shape());
      const auto dv = Tensor<T, Cuda>::empty(vb.shape());
      cuda::attention_backward(qb, kb, vb, fwd.out, fwd.lse, self.grad.contiguous(), opts, dq, dk, dv);
      if (q.requires_grad()) autograd::accumulate(q.grad_buffer(), dq);
      if (k.requires_grad()) autograd::accumulate(k.grad_buffer(), dk);
      if (v.requires_grad()) autograd::accumulate(v.grad_buffer(), dv);
    });
#else
    static_assert(expr::dependent_false_v<T>,
                  "attention on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
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
}

}  // namespace distill
