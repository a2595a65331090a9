// Fused (flash-attention style) attention on the GPU: launchers defined in kernels/attention_fwd.cu and
// kernels/attention_bwd.cu (distill::kernels). Layout, GQA mapping, positions and mask semantics are
// exactly those of ops/attention_ref.hpp (the truth):
//   q [B, T, H, D], k and v [B, S, KV, D] (contiguous), out [B, T, H, D]; query t sits at position
//   t + (S - T); query head h reads kv head h / (H / KV).
// Memory is linear in T and S: no [T, S] matrix is ever materialized. Inputs f32 or bf16, accumulation
// in f32; the forward saves lse [B, H, T] (f32) = logsumexp over the visible keys of scale * q k^T.
#pragma once
#include "distill/ops/attention_ref.hpp"
#include "distill/tensor/tensor.hpp"

namespace distill::cuda {

// Writes out [B, T, H, D] and lse [B, H, T] (both preallocated, contiguous).
template <class T>
void attention_forward(const Tensor<T, Cuda>& q, const Tensor<T, Cuda>& k, const Tensor<T, Cuda>& v,
                       const AttentionOptions& opts, const Tensor<T, Cuda>& out, const Tensor<float, Cuda>& lse);

// Writes (overwrites, does not accumulate) dq [B, T, H, D], dk and dv [B, S, KV, D] from the forward's out
// and lse and the upstream gradient dout [B, T, H, D]. A dk/dv shared by a GQA group sums over its heads.
template <class T>
void attention_backward(const Tensor<T, Cuda>& q, const Tensor<T, Cuda>& k, const Tensor<T, Cuda>& v,
                        const Tensor<T, Cuda>& out, const Tensor<float, Cuda>& lse, const Tensor<T, Cuda>& dout,
                        const AttentionOptions& opts, const Tensor<T, Cuda>& dq, const Tensor<T, Cuda>& dk,
                        const Tensor<T, Cuda>& dv);

}  // namespace distill::cuda
