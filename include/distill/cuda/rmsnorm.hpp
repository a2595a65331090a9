// RMSNorm on the GPU: launchers defined in kernels/rmsnorm.cu (distill::kernels), and the launch plan they
// share (plain host code, so it can be checked without a GPU). The Tensor-level entry points (shape checks,
// allocation) are cuda::rms_norm_forward / cuda::rms_norm_backward in distill/ops/rmsnorm.hpp.
//
// Contract (the numerics of cpu:: in ops/rmsnorm.hpp, SPEC §1.2 / §2.2):
//  - x, y, g, dx: contiguous [rows, cols] device buffers; w, dw: [cols]; rstd: [rows] f32. T: f32, bf16, f16.
//  - rstd = 1 / sqrt(sum(x^2) / cols + eps) in f32 (IEEE division and square root, as the CPU);
//    with s = (Weight ? 0 : 1) + w in f32: Weight y = T(float(T(x * rstd)) * s), OnePlusWeight
//    y = T(x * rstd * s) — cpu::rms_norm_forward's expressions in its order; only the order of the sum of
//    squares differs.
//  - Backward writes (does not accumulate) dx and dw, each only when its pointer is non-null.
//    dw = sum over rows of g * x̂ (x̂ rounded to T for Weight): every block of the backward kernel adds the
//    rows it owns into its own f32 partial row [nblocks, cols], and a second kernel adds the partials in a
//    fixed order. No atomics: dw is the same from run to run on a given GPU.
// Host code only: no CUDA headers here.
#pragma once
#include <algorithm>
#include <cstdint>

namespace distill {
enum class RmsNormStyle;  // defined in distill/ops/rmsnorm.hpp
}

namespace distill::cuda {

// --- launch plan ------------------------------------------------------------------------------------
// A row is held in registers: each of its `row_threads` threads loads `packs` packs of `vec` elements
// (16 bytes when the row length and the pointers allow, else one element), pack p = thread + k * row_threads,
// so a warp's loads are contiguous. Short rows share a block (rows_per_block rows of row_threads threads,
// reduced with warp shuffles); rows of more than 32 threads add a shared-memory step. Rows too long for
// registers (packs == 0) go to a looping kernel that reads them twice.
// The forward aims at 4 16-byte packs per thread (64 bytes in flight); the backward, which holds x, g and
// the dw sums, at 2 (bf16 at 4 spills past 128 registers). Both allow up to 4, or 8 one-element packs.
inline constexpr int kRmsNormBlockThreads = 256;  // threads per block while a row needs no more
inline constexpr int kRmsNormMaxRowThreads = 512;
inline constexpr int kRmsNormForwardVecPacks = 4;
inline constexpr int kRmsNormBackwardVecPacks = 2;
inline constexpr int kRmsNormMaxVecPacks = 4;
inline constexpr int kRmsNormScalarPacks = 8;  // aimed at and allowed with one-element packs

struct RmsNormPlan {
  int vec = 1;             // elements per load: 16 / sizeof(T), or 1
  int row_threads = 1;     // threads per row: a power of two, at most kRmsNormMaxRowThreads
  int rows_per_block = 1;  // rows a block works on at once
  int packs = 0;           // packs per thread: 1, 2, 4 (16-byte packs) or 1, 2, 4, 8 (one element); 0: long rows

  int block_threads() const { return row_threads * rows_per_block; }
  bool long_rows() const { return packs == 0; }
};

// cols > 0 elements per row of `elem_bytes` bytes; `aligned16`: every row buffer the kernel touches starts
// on a 16-byte boundary; `backward`: the plan of the backward kernel.
inline RmsNormPlan plan_rms_norm(int64_t cols, int elem_bytes, bool aligned16, bool backward = false) {
  RmsNormPlan p;
  const int vmax = 16 / elem_bytes;
  p.vec = (aligned16 && vmax > 1 && cols % vmax == 0) ? vmax : 1;
  const int target = p.vec == 1 ? kRmsNormScalarPacks : backward ? kRmsNormBackwardVecPacks : kRmsNormForwardVecPacks;
  const int most = p.vec == 1 ? kRmsNormScalarPacks : kRmsNormMaxVecPacks;
  const int64_t npk = cols / p.vec;
  int tpr = 1;
  while (tpr < kRmsNormMaxRowThreads && int64_t{tpr} * target < npk) tpr *= 2;
  const int64_t need = (npk + tpr - 1) / tpr;
  if (need > most) {  // longer than one block's registers
    p.row_threads = kRmsNormMaxRowThreads;
    p.rows_per_block = 1;
    p.packs = 0;
    return p;
  }
  int packs = 1;
  while (packs < need) packs *= 2;
  p.row_threads = tpr;
  p.rows_per_block = std::max(1, kRmsNormBlockThreads / tpr);
  p.packs = packs;
  return p;
}

// --- launchers (on current_stream()) ----------------------------------------------------------------
// y = rms_norm(x, w) row by row and rstd [rows]; rows >= 0, 0 < cols < 2^31.
template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, float* rstd, int64_t rows, int64_t cols, float eps,
                      RmsNormStyle style);

// dx [rows, cols] and dw [cols] from x, w, the forward's rstd and the upstream gradient g; dx or dw may be
// null (not computed). Overwrites them. rows == 0 gives dw = 0.
template <class T>
void rms_norm_backward(const T* x, const T* w, const float* rstd, const T* g, T* dx, T* dw, int64_t rows, int64_t cols,
                       RmsNormStyle style);

}  // namespace distill::cuda
