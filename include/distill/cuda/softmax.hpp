// softmax / log_softmax over the last axis on the GPU, defined in kernels/softmax.cu (distill::kernels).
// The Tensor-level ops are cuda::softmax(...) etc. in distill/ops/softmax.hpp.
//
// Contract (the numerics of cpu:: in ops/softmax.hpp):
//  - x, y, g, dx: contiguous [R, K] device buffers, f32 / bf16 / f16, computed in f32.
//  - Forward: each row shifted by its max; softmax = exp(x - m) * (1 / sum), log_softmax = (x - m) - log(sum).
//    A row of all -inf gives NaN; -inf entries elsewhere give 0 / -inf.
//  - Rows that fit one block's registers (K <= 16384, see plan_rows in cuda/reduce.hpp) are read once and
//    written once. Longer rows (vocabularies up to 262,144 and beyond) are cut into fixed chunks: a first
//    kernel writes each chunk's (max, sum of exp) pair, a second merges a row's pairs in chunk order and
//    writes the chunk (it walks the chunks in reverse, so the most recently read ones are still in L2).
//  - Backward (from the saved output y and upstream g), ACCUMULATING into dx:
//      softmax:      dx += y * (g - sum(g * y))
//      log_softmax:  dx += g - exp(y) * sum(g)
//  - Deterministic: fixed chunking and reduction trees, no atomics.
#pragma once
#include <cstdint>

#include "distill/cuda/reduce.hpp"

namespace distill::cuda {

// y = softmax(x) (log: log_softmax) row by row; R, K > 0.
template <class T>
void softmax_rows(const T* x, T* y, int64_t R, int64_t K, bool log);

// dx += the softmax (log: log_softmax) backward from the output y and upstream gradient g; R, K > 0.
template <class T>
void softmax_backward_rows(const T* y, const T* g, T* dx, int64_t R, int64_t K, bool log);

}  // namespace distill::cuda
