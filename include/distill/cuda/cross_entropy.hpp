// Cross-entropy on the GPU: launchers defined in kernels/cross_entropy.cu (distill::kernels). Semantics are
// those of ops/cross_entropy.hpp (mean over rows whose target != ignore_index; 0 and no gradient when every
// row is ignored), computed in f32 for every input dtype:
//  - cross_entropy: one block per row reads the row once, keeping an online (max, sum of exp) per thread,
//    merged across the block; lse = max + log(sum). The loss is the mean of (lse - logit[target]), summed in
//    double by one block in a fixed order (deterministic). Backward adds (softmax - onehot) * g / count
//    straight into the logits' gradient: no [N, V] buffer besides the gradient itself.
//  - linear_cross_entropy: the logits are computed a chunk at a time, [rows, vocab chunk] in T, with
//    cuda::gemm (cuBLASLt, f32 accumulate), the chunk buffer kept under kLceChunkBytes; the per-row online
//    (max, sum) is merged across vocabulary chunks. Forward saves only the per-row lse (f32). Backward
//    recomputes each chunk's logits, turns them into dlogits in place (in T), then
//      dweight[chunk] += dlogits^T @ hidden   (gemm with beta = 1, straight into the gradient)
//      dhidden        += dlogits @ weight[chunk] (an f32 [rows, C] accumulator, added to the gradient once)
//    For 16-bit T the logits are rounded to T before the softmax (as in PyTorch's bf16 lm_head); the CPU
//    path keeps them in f32, so the two agree within the bf16 tolerance.
// Targets passed here must already be validated (the Var ops check them on the host, naming the row).
// Everything runs on cuda::stream(). This header does not include CUDA headers. T: float, bf16, f16.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace distill::cuda {

// logits [N, V] contiguous, targets device int32 [N] (each in [0, V) or == ignore_index), count = number of
// rows whose target != ignore_index. Writes lse [N] (f32; 0 on ignored rows) and loss (device, one T):
// the mean over the counted rows of lse - logit[target], or 0 when count == 0.
template <class T>
void cross_entropy_forward(const T* logits, int64_t N, int64_t V, const int32_t* targets, int32_t ignore_index,
                           int64_t count, float* lse, T* loss);

// dlogits [N, V] (contiguous) += (softmax(logits) - onehot(target)) * grad_out[0] / count on the rows whose
// target != ignore_index; grad_out is a device pointer to one T (the loss's upstream gradient).
template <class T>
void cross_entropy_backward(const T* logits, int64_t N, int64_t V, const int32_t* targets, int32_t ignore_index,
                            int64_t count, const float* lse, const T* grad_out, T* dlogits);

// --- linear_cross_entropy ---------------------------------------------------------------------------
// Scratch budget of the logits chunk ([rows, ld] values of T).
inline constexpr size_t kLceChunkBytes = size_t{256} << 20;

// How linear_cross_entropy tiles n active rows x V classes: `rows` rows and `vocab` classes per chunk, the
// chunk buffer's row stride `ld` (vocab rounded up to 16 bytes, so cuBLASLt's 16-byte rule holds).
// vocab_chunk / row_chunk > 0 force a size (tests); 0 = largest under `budget` bytes (vocabulary chunks are
// multiples of 128 classes, so weight chunks stay 16-byte aligned).
struct LceTiling {
  int64_t rows = 0, vocab = 0, ld = 0;
};
inline LceTiling lce_tiling(int64_t n, int64_t V, size_t elem_bytes, int64_t vocab_chunk = 0, int64_t row_chunk = 0,
                            size_t budget = kLceChunkBytes) {
  LceTiling t;
  const int64_t per16 = std::max<int64_t>(1, 16 / static_cast<int64_t>(elem_bytes));
  const int64_t cap = static_cast<int64_t>(budget / elem_bytes);  // values of T in the budget
  n = std::max<int64_t>(n, 1);
  V = std::max<int64_t>(V, 1);
  if (vocab_chunk > 0) {
    t.vocab = std::min(vocab_chunk, V);
  } else {
    const int64_t rows_first = row_chunk > 0 ? std::min(row_chunk, n) : n;
    const int64_t fit = cap / rows_first;  // classes per row that fit with all rows at once
    t.vocab = fit >= V ? V : std::min(V, std::max<int64_t>(128, fit / 128 * 128));
  }
  t.ld = (t.vocab + per16 - 1) / per16 * per16;
  if (row_chunk > 0)
    t.rows = std::min(row_chunk, n);
  else
    t.rows = std::clamp<int64_t>(cap / t.ld, 1, n);
  return t;
}

// hidden [N, C] and weight [V, C] contiguous. active: device int32 [n], the rows whose target is not ignored
// (ascending), or nullptr when n == N (every row counts). targets: device int32 [n], the targets of those
// rows (all in [0, V)). Writes lse [n] (f32) and loss (device, one T) = mean over the n rows; n > 0.
template <class T>
void linear_cross_entropy_forward(const T* hidden, const T* weight, int64_t N, int64_t C, int64_t V,
                                  const int32_t* active, const int32_t* targets, int64_t n, float* lse, T* loss,
                                  int64_t vocab_chunk = 0, int64_t row_chunk = 0);

// dhidden [N, C] += dlogits @ weight and dweight [V, C] += dlogits^T @ hidden (either may be nullptr: not
// wanted), recomputing the logits chunk by chunk; dlogits = (softmax - onehot) * grad_out[0] / n on the
// active rows. Same active / targets / lse as the forward; grad_out is a device pointer to one T.
template <class T>
void linear_cross_entropy_backward(const T* hidden, const T* weight, int64_t N, int64_t C, int64_t V,
                                   const int32_t* active, const int32_t* targets, int64_t n, const float* lse,
                                   const T* grad_out, T* dhidden, T* dweight, int64_t vocab_chunk = 0,
                                   int64_t row_chunk = 0);

}  // namespace distill::cuda
