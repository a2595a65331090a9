// Embedding gather / scatter-add on the GPU: launchers defined in kernels/embedding.cu (distill::kernels).
// Semantics are those of ops/embedding.hpp (the truth): out[k, :] = weight[ids[k], :], and backward
// dw[ids[k], :] += g[k, :].
//  - Gather: one warp per output row, 16-byte vector copies when the rows allow them (else scalar).
//  - Scatter-add, deterministic without float atomics: the (id, position) pairs are stably radix-sorted on
//    the device (CUB), so each id's occurrences sit together in order of appearance; the thread that sees the
//    first occurrence of an id owns that id's row (one 16-byte column group of it), sums the occurrences in
//    order in f32 and adds the sum to the gradient once. Same order and arithmetic as cpu::: for f32 the
//    result equals the CPU's bit for bit, and two runs always agree bit for bit.
// The ids must already be checked against [0, V) (the Var op does it on the host, naming the bad id).
// Everything runs on cuda::stream(). This header does not include CUDA headers. T: float, bf16, f16.
#pragma once
#include <cstdint>

namespace distill::cuda {

// out[k * ldo + c] = weight[ids[k] * ldw + c] for k < n, c < C. ids: device int32 [n], all in [0, V).
// Also the row gather of linear_cross_entropy (active rows of the hidden states).
template <class T>
void embedding_forward(const T* weight, int64_t ldw, const int32_t* ids, int64_t n, int64_t C, T* out, int64_t ldo);

// dw [V, C] (contiguous) += scatter of g [n, C] (contiguous) by ids (device int32 [n], all in [0, V)).
// Repeated ids add up, summed in f32 in order of appearance, each dw element rounded once.
template <class T>
void embedding_backward_accumulate(T* dw, int64_t V, int64_t C, const int32_t* ids, int64_t n, const T* g);

}  // namespace distill::cuda
