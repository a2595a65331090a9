// Row-wise reductions on the GPU, defined in kernels/reduce.cu (distill::kernels): sum / mean / max over the
// last axis of a contiguous [R, K] buffer, the sum of all elements, and their backward passes. The
// Tensor-level ops (shape checks, allocation) are cuda::sum_last(...) etc. in distill/ops/reduce.hpp.
//
// Contract (the same numerics as cpu:: in ops/reduce.hpp):
//  - Inputs f32, bf16 or f16, device pointers, contiguous; accumulation in f32 (sum_all adds its block
//    partials in f64, as the CPU does).
//  - Results do not change from run to run: every sum has a fixed order (fixed chunks per row, fixed grids,
//    warp-shuffle + shared-memory trees, no atomics).
//  - max: NaN wins (the first NaN of a row), otherwise the first index of the maximum (ties are not split).
//  - *_backward launchers ACCUMULATE into dx (dx += ...).
//
// Also the row plan that kernels/reduce.cu and kernels/softmax.cu share: how warps/blocks cover the rows.
// It is plain host code, so it can be checked without a GPU.
#pragma once
#include <algorithm>
#include <cstdint>

namespace distill::cuda {

// --- row plan -------------------------------------------------------------------------------------------
// Each thread holds up to kRowElemsPerThread elements of a row in registers (loaded with 16-byte vectors
// when the row length and the pointers allow). Rows that fit one warp's registers get one warp each
// (kWarpRowsPerBlock rows per block, shuffles only); longer ones get a block of up to kRowMaxThreads
// threads; rows longer than one block's registers (the vocabulary) are cut into `chunks` equal chunks,
// one block each, whose partial results a second kernel combines in a fixed order.
inline constexpr int kRowElemsPerThread = 16;
inline constexpr int kRowMaxThreads = 1024;
inline constexpr int kWarpRowsPerBlock = 8;
inline constexpr int64_t kRowMaxBlocks = int64_t{1} << 24;  // grid-stride loops cover more items

struct RowPlan {
  int vec = 1;                // elements per load: 16 / sizeof(T) when K % that == 0 and pointers are aligned
  bool warp_per_row = false;  // one warp per row, kWarpRowsPerBlock rows per block
  int threads = 32;           // threads per row (per chunk): the block size unless warp_per_row
  int64_t chunks = 1;         // blocks per row
  int64_t chunk_vecs = 0;     // vectors per chunk (chunk c covers vectors [c * chunk_vecs, (c + 1) * chunk_vecs))
  int64_t items = 0;          // rows * chunks: the work items (warps or blocks)
  int64_t blocks = 0;         // grid size (0 when there is nothing to do)
  int block_threads = 0;      // blockDim.x

  int vecs_per_thread() const { return kRowElemsPerThread / vec; }
};

// R rows of K elements of `elem_bytes` bytes; `aligned16`: every pointer the kernel reads or writes row-wise
// is 16-byte aligned.
inline RowPlan plan_rows(int64_t R, int64_t K, int elem_bytes, bool aligned16) {
  RowPlan p;
  const int vmax = 16 / elem_bytes;
  p.vec = (aligned16 && vmax > 1 && K % vmax == 0) ? vmax : 1;
  const int vpt = p.vecs_per_thread();
  const int64_t nvec = K / p.vec;
  if (R <= 0 || K <= 0) return p;
  if (nvec <= int64_t{32} * vpt) {
    p.warp_per_row = true;
    p.threads = 32;
    p.chunks = 1;
    p.chunk_vecs = nvec;
    p.items = R;
    p.block_threads = 32 * kWarpRowsPerBlock;
    p.blocks = std::min<int64_t>((R + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock, kRowMaxBlocks);
    return p;
  }
  const int64_t cap = int64_t{kRowMaxThreads} * vpt;  // vectors one block holds
  p.chunks = (nvec + cap - 1) / cap;
  p.chunk_vecs = (nvec + p.chunks - 1) / p.chunks;
  const int64_t need = (p.chunk_vecs + vpt - 1) / vpt;
  p.threads = static_cast<int>((need + 31) / 32 * 32);
  p.block_threads = p.threads;
  p.items = R * p.chunks;
  p.blocks = std::min<int64_t>(p.items, kRowMaxBlocks);
  return p;
}

// --- launchers (kernels/reduce.cu); T: float, bf16, f16. x is [R, K] contiguous; R, K > 0 --------------
// y[r] = sum_k x[r, k] (mean: divided by K), y [R].
template <class T>
void sum_last_rows(const T* x, T* y, int64_t R, int64_t K, bool mean);
// y[r] = x[r, idx[r]], idx[r] = the first NaN of the row, else the first index of its maximum.
template <class T>
void max_last_rows(const T* x, T* y, int64_t* idx, int64_t R, int64_t K);
// y[0] = sum of x[0..n) (n >= 0).
template <class T>
void sum_all_flat(const T* x, T* y, int64_t n);

// dx[r, k] += g[r] * scale (scale applied in f64, then rounded to f32 once per row, as on the CPU).
template <class T>
void sum_last_backward_rows(const T* g, T* dx, int64_t R, int64_t K, double scale);
// dx[r, idx[r]] += g[r].
template <class T>
void max_last_backward_rows(const int64_t* idx, const T* g, T* dx, int64_t R, int64_t K);
// dx[i] += g[0] for i < n (g is a one-element device buffer).
template <class T>
void sum_all_backward_flat(const T* g, T* dx, int64_t n);

}  // namespace distill::cuda
