// RMSNorm forward and backward (launchers declared in include/distill/cuda/rmsnorm.hpp), the lab's v2
// (kernels/dev/rmsnorm/v2_row_in_registers.cu): every row is loaded once into registers — 16-byte packs when
// the row length and pointers allow — reduced with warp shuffles (plus one shared-memory step for rows of
// more than 32 threads), and written once. Short rows share a block. Rows too long for registers are read
// twice by a looping kernel.
// Backward: dx row by row; dw as per-block f32 partial rows (each block adds the rows it owns, then its row
// slots in order through shared memory) reduced by a second kernel in a fixed order: no atomics.
// Rounding points are cpu::'s (distill/ops/rmsnorm.hpp): the same expressions in the same order, IEEE
// division and square root for rstd.
// kernels/dev/rmsnorm/emulate_rmsnorm.cpp compiles this file on the CPU (DISTILL_KERNEL_EMULATION: every
// thread a fiber, the launch helpers below replaced) to check it without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#ifndef DISTILL_KERNEL_EMULATION
#include "distill/cuda/check.hpp"
#endif
#include "distill/cuda/rmsnorm.hpp"
#include "distill/ops/rmsnorm.hpp"

namespace distill::cuda {

namespace {

#ifndef DISTILL_KERNEL_EMULATION
// Every launch goes through here: on current_stream(), checked.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  kernel<<<grid, block, smem, stream()>>>(args...);
  DISTILL_CHECK_LAUNCH();
}

int sm_count() {
  int dev = 0, n = 0;
  DISTILL_CHECK_CUDA(cudaGetDevice(&dev));
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return std::max(n, 1);
}

template <class... P>
int blocks_per_sm(void (*kernel)(P...), int threads, size_t smem) {
  int n = 0;
  DISTILL_CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  return std::max(n, 1);
}

template <class T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ float4 s_dynamic[];
  return reinterpret_cast<T*>(s_dynamic);
}
#endif

// --- element types ------------------------------------------------------------------------------------
// Library dtype -> the CUDA type with the same bits, and conversions through f32 (RNE, as the host).
template <class T>
struct DevType {
  using type = T;
};
template <>
struct DevType<bf16> {
  using type = __nv_bfloat16;
};
template <>
struct DevType<f16> {
  using type = __half;
};

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <class S>
__device__ __forceinline__ S from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
// v rounded to S and back (an identity for f32).
template <class S>
__device__ __forceinline__ float round_to(float v) {
  if constexpr (std::is_same_v<S, float>)
    return v;
  else
    return to_f(from_f<S>(v));
}

template <class S, int V>
struct alignas(sizeof(S) * V) Pack {
  S v[V];
};

// --- reductions ---------------------------------------------------------------------------------------
// Sum of v over the blockDim.x threads of a row (a power of two; every block is a whole number of warps,
// rows laid out threadIdx.x fastest, so a row of <= 32 threads is an aligned lane group). Every thread of the
// row gets the same bits (a butterfly adds the same two halves on both sides). Rows of more than 32 threads
// add their warps' sums in warp order through s_red (block threads / 32 floats). Block-uniform control flow.
__device__ __forceinline__ float row_sum(float v, float* s_red) {
  const int tpr = static_cast<int>(blockDim.x);
  const int width = tpr < 32 ? tpr : 32;
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (tpr <= 32) return v;
  const int nw = tpr / 32;
  float* s = s_red + threadIdx.y * nw;
  if ((threadIdx.x & 31) == 0) s[threadIdx.x / 32] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < nw; ++i) t += s[i];
  __syncthreads();  // s_red is reused by the next call
  return t;
}

// --- forward, rows in registers -----------------------------------------------------------------------
// Block (row_threads, rows_per_block); grid-stride over groups of rows_per_block rows.
template <class S, int V, int P>
__global__ void __launch_bounds__(kRmsNormMaxRowThreads)
    rms_norm_forward_v2(const S* __restrict__ x, const S* __restrict__ w, S* __restrict__ y, float* __restrict__ rstd,
                        int64_t rows, int cols, float eps, bool one_plus) {
  using Pk = Pack<S, V>;
  __shared__ float s_red[32];
  const int tx = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int npk = cols / V;
  const float s0 = one_plus ? 1.f : 0.f;  // s = s0 + w, as cpu's scale_of
  Pk rw[P];                               // zeros past the row's end: the backward's dot multiplies them by zero
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = tx + k * tpr;
    if (p < npk) {
      rw[k] = reinterpret_cast<const Pk*>(w)[p];
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) rw[k].v[e] = from_f<S>(0.f);
    }
  }
  const int64_t rpb = blockDim.y, groups = (rows + rpb - 1) / rpb;
  for (int64_t gi = blockIdx.x; gi < groups; gi += gridDim.x) {
    const int64_t row = gi * rpb + threadIdx.y;
    const bool valid = row < rows;
    const Pk* gx = reinterpret_cast<const Pk*>(x + (valid ? row : 0) * int64_t{cols});  // [cols / V]
    Pk rx[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const int p = tx + k * tpr;
      if (valid && p < npk) {
        rx[k] = gx[p];
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) rx[k].v[e] = from_f<S>(0.f);
      }
    }
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < P; ++k)
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float v = to_f(rx[k].v[e]);
        ss += v * v;
      }
    ss = row_sum(ss, s_red);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
    if (!valid) continue;  // after the last block-wide step of this iteration
    if (tx == 0) rstd[row] = r;
    Pk* gy = reinterpret_cast<Pk*>(y + row * int64_t{cols});
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const int p = tx + k * tpr;
      if (p >= npk) continue;
      Pk out;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float xh = to_f(rx[k].v[e]) * r;
        const float s = s0 + to_f(rw[k].v[e]);
        out.v[e] = from_f<S>(one_plus ? xh * s : round_to<S>(xh) * s);
      }
      gy[p] = out;
    }
  }
}

// --- backward, rows in registers ----------------------------------------------------------------------
// dx (when non-null) row by row; dw partials (when `partial` is non-null): this block's row slots accumulate
// their own columns over the rows they visit, then the slots are added in slot order (through s_dw,
// rows_per_block * cols floats of dynamic shared memory, when rows_per_block > 1) into partial[blockIdx.x].
template <class S, int V, int P>
__global__ void __launch_bounds__(kRmsNormMaxRowThreads)
    rms_norm_backward_v2(const S* __restrict__ x, const S* __restrict__ w, const float* __restrict__ rstd,
                         const S* __restrict__ g, S* __restrict__ dx, float* __restrict__ partial, int64_t rows,
                         int cols, bool one_plus) {
  using Pk = Pack<S, V>;
  float* s_dw = dynamic_smem<float>();  // [rows_per_block, cols] when needed
  __shared__ float s_red[32];
  const int tx = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int npk = cols / V;
  const bool need_dx = dx != nullptr, need_dw = partial != nullptr;
  const float s0 = one_plus ? 1.f : 0.f;
  Pk rw[P];  // zeros past the row's end (0 * garbage could be NaN in the dot)
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = tx + k * tpr;
    if (need_dx && p < npk) {
      rw[k] = reinterpret_cast<const Pk*>(w)[p];
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) rw[k].v[e] = from_f<S>(0.f);
    }
  }
  float acc[P * V];
#pragma unroll
  for (int i = 0; i < P * V; ++i) acc[i] = 0.f;

  const int64_t rpb = blockDim.y, groups = (rows + rpb - 1) / rpb;
  for (int64_t gi = blockIdx.x; gi < groups; gi += gridDim.x) {
    const int64_t row = gi * rpb + threadIdx.y;
    const bool valid = row < rows;
    const int64_t off = (valid ? row : 0) * int64_t{cols};
    const Pk* gx = reinterpret_cast<const Pk*>(x + off);  // [cols / V]
    const Pk* gg = reinterpret_cast<const Pk*>(g + off);
    Pk rx[P], rg[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const int p = tx + k * tpr;
      if (valid && p < npk) {
        rx[k] = gx[p];
        rg[k] = gg[p];
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) rx[k].v[e] = rg[k].v[e] = from_f<S>(0.f);
      }
    }
    const float r = valid ? rstd[row] : 0.f;
    if (need_dw) {
#pragma unroll
      for (int k = 0; k < P; ++k)
#pragma unroll
        for (int e = 0; e < V; ++e) {
          float xh = to_f(rx[k].v[e]) * r;
          if (!one_plus) xh = round_to<S>(xh);  // the forward's rounding point (Weight)
          acc[k * V + e] += to_f(rg[k].v[e]) * xh;
        }
    }
    if (need_dx) {
      float dot = 0.f;
#pragma unroll
      for (int k = 0; k < P; ++k)
#pragma unroll
        for (int e = 0; e < V; ++e) dot += to_f(rg[k].v[e]) * (s0 + to_f(rw[k].v[e])) * to_f(rx[k].v[e]);
      dot = row_sum(dot, s_red);
      if (!valid) continue;
      const float mean_dot = dot * r / static_cast<float>(cols);
      Pk* gdx = reinterpret_cast<Pk*>(dx + off);
#pragma unroll
      for (int k = 0; k < P; ++k) {
        const int p = tx + k * tpr;
        if (p >= npk) continue;
        Pk out;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float xv = to_f(rx[k].v[e]), gs = to_f(rg[k].v[e]) * (s0 + to_f(rw[k].v[e]));
          out.v[e] = from_f<S>(r * (gs - xv * r * mean_dot));
        }
        gdx[p] = out;
      }
    }
  }

  if (!need_dw) return;
  float* gp = partial + int64_t{blockIdx.x} * cols;  // [cols]
  if (blockDim.y == 1) {
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const int p = tx + k * tpr;
      if (p >= npk) continue;
#pragma unroll
      for (int e = 0; e < V; ++e) gp[p * V + e] = acc[k * V + e];
    }
    return;
  }
  float* slot = s_dw + threadIdx.y * int64_t{cols};
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const int p = tx + k * tpr;
    if (p >= npk) continue;
#pragma unroll
    for (int e = 0; e < V; ++e) slot[p * V + e] = acc[k * V + e];
  }
  __syncthreads();
  const int nthreads = static_cast<int>(blockDim.x * blockDim.y);
  for (int c = static_cast<int>(threadIdx.y * blockDim.x) + tx; c < cols; c += nthreads) {
    float t = 0.f;
    for (int j = 0; j < static_cast<int>(blockDim.y); ++j) t += s_dw[j * int64_t{cols} + c];
    gp[c] = t;
  }
}

// --- rows too long for registers ------------------------------------------------------------------------
// One block (kRmsNormMaxRowThreads, 1) per row, grid-stride; the row is read twice (the second read mostly
// from L2).
template <class S, int V>
__global__ void __launch_bounds__(kRmsNormMaxRowThreads)
    rms_norm_forward_long(const S* __restrict__ x, const S* __restrict__ w, S* __restrict__ y, float* __restrict__ rstd,
                          int64_t rows, int cols, float eps, bool one_plus) {
  using Pk = Pack<S, V>;
  __shared__ float s_red[32];
  const int tx = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int npk = cols / V;
  const float s0 = one_plus ? 1.f : 0.f;
  const Pk* gw = reinterpret_cast<const Pk*>(w);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Pk* gx = reinterpret_cast<const Pk*>(x + row * int64_t{cols});
    float ss = 0.f;
    for (int p = tx; p < npk; p += tpr) {
      const Pk a = gx[p];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float v = to_f(a.v[e]);
        ss += v * v;
      }
    }
    ss = row_sum(ss, s_red);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
    if (tx == 0) rstd[row] = r;
    Pk* gy = reinterpret_cast<Pk*>(y + row * int64_t{cols});
    for (int p = tx; p < npk; p += tpr) {
      const Pk a = gx[p], b = gw[p];
      Pk out;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float xh = to_f(a.v[e]) * r;
        const float s = s0 + to_f(b.v[e]);
        out.v[e] = from_f<S>(one_plus ? xh * s : round_to<S>(xh) * s);
      }
      gy[p] = out;
    }
  }
}

// dw partials accumulate straight into partial[blockIdx.x] (zeroed first): each thread owns its columns.
template <class S, int V>
__global__ void __launch_bounds__(kRmsNormMaxRowThreads)
    rms_norm_backward_long(const S* __restrict__ x, const S* __restrict__ w, const float* __restrict__ rstd,
                           const S* __restrict__ g, S* __restrict__ dx, float* __restrict__ partial, int64_t rows,
                           int cols, bool one_plus) {
  using Pk = Pack<S, V>;
  __shared__ float s_red[32];
  const int tx = static_cast<int>(threadIdx.x), tpr = static_cast<int>(blockDim.x);
  const int npk = cols / V;
  const float s0 = one_plus ? 1.f : 0.f;
  const Pk* gw = reinterpret_cast<const Pk*>(w);
  float* gp = partial ? partial + int64_t{blockIdx.x} * cols : nullptr;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * int64_t{cols};
    const Pk* gx = reinterpret_cast<const Pk*>(x + off);
    const Pk* gg = reinterpret_cast<const Pk*>(g + off);
    const float r = rstd[row];
    float mean_dot = 0.f;
    if (dx) {
      float dot = 0.f;
      for (int p = tx; p < npk; p += tpr) {
        const Pk a = gx[p], b = gg[p], c = gw[p];
#pragma unroll
        for (int e = 0; e < V; ++e) dot += to_f(b.v[e]) * (s0 + to_f(c.v[e])) * to_f(a.v[e]);
      }
      dot = row_sum(dot, s_red);
      mean_dot = dot * r / static_cast<float>(cols);
    }
    for (int p = tx; p < npk; p += tpr) {
      const Pk a = gx[p], b = gg[p];
      if (gp) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          float xh = to_f(a.v[e]) * r;
          if (!one_plus) xh = round_to<S>(xh);
          gp[p * V + e] += to_f(b.v[e]) * xh;
        }
      }
      if (dx) {
        const Pk c = gw[p];
        Pk out;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float xv = to_f(a.v[e]), gs = to_f(b.v[e]) * (s0 + to_f(c.v[e]));
          out.v[e] = from_f<S>(r * (gs - xv * r * mean_dot));
        }
        reinterpret_cast<Pk*>(dx + off)[p] = out;
      }
    }
  }
}

// --- dw: partials [nb, cols] -> dw [cols] ---------------------------------------------------------------
// Block (32 columns, kReduceSlices slices): slice j adds partial rows j, j + kReduceSlices, ... in order, then
// slice 0 adds the slices in order. A fixed order for a given nb.
constexpr int kReduceSlices = 16;

template <class S>
__global__ void rms_norm_dw_reduce(const float* __restrict__ partial, int64_t nb, int cols, S* __restrict__ dw) {
  __shared__ float s[kReduceSlices][33];
  const int64_t c = int64_t{blockIdx.x} * 32 + threadIdx.x;
  float t = 0.f;
  if (c < cols)
    for (int64_t b = threadIdx.y; b < nb; b += kReduceSlices) t += partial[b * cols + c];
  s[threadIdx.y][threadIdx.x] = t;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  float u = 0.f;
  for (int j = 0; j < kReduceSlices; ++j) u += s[j][threadIdx.x];
  dw[c] = from_f<S>(u);
}

// --- host side ------------------------------------------------------------------------------------------
bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Blocks for a persistent (grid-stride) launch: as many as fit on the GPU at once, at most `work`.
template <class K>
int64_t resident_blocks(K kernel, int threads, size_t smem, int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>(work, int64_t{blocks_per_sm(kernel, threads, smem)} * sm_count()));
}

constexpr int64_t kMaxGrid = int64_t{1} << 30;

template <class S, int V, int P>
void launch_forward(const RmsNormPlan& pl, const S* x, const S* w, S* y, float* rstd, int64_t rows, int cols, float eps,
                    bool one_plus) {
  const int64_t groups = (rows + pl.rows_per_block - 1) / pl.rows_per_block;
  const dim3 block(pl.row_threads, pl.rows_per_block);
  const unsigned grid = static_cast<unsigned>(std::min(groups, kMaxGrid));
  launch(rms_norm_forward_v2<S, V, P>, grid, block, 0, x, w, y, rstd, rows, cols, eps, one_plus);
}

template <class S, int V>
void forward_vec(const RmsNormPlan& pl, const S* x, const S* w, S* y, float* rstd, int64_t rows, int cols, float eps,
                 bool one_plus) {
  switch (pl.packs) {
    case 0: {
      const unsigned grid = static_cast<unsigned>(std::min(rows, kMaxGrid));
      launch(rms_norm_forward_long<S, V>, grid, kRmsNormMaxRowThreads, 0, x, w, y, rstd, rows, cols, eps, one_plus);
      return;
    }
    case 1:
      return launch_forward<S, V, 1>(pl, x, w, y, rstd, rows, cols, eps, one_plus);
    case 2:
      return launch_forward<S, V, 2>(pl, x, w, y, rstd, rows, cols, eps, one_plus);
    case 4:
      return launch_forward<S, V, 4>(pl, x, w, y, rstd, rows, cols, eps, one_plus);
    case 8:
      if constexpr (V == 1) return launch_forward<S, V, 8>(pl, x, w, y, rstd, rows, cols, eps, one_plus);
      [[fallthrough]];
    default:
      DISTILL_CHECK(false, "rms_norm: no kernel for ", pl.packs, " packs of ", V, " per thread");
  }
}

template <class S, int V, int P>
int64_t launch_backward(const RmsNormPlan& pl, const S* x, const S* w, const float* rstd, const S* g, S* dx,
                        float* partial, int64_t rows, int cols, bool one_plus, bool count_only) {
  const int64_t groups = (rows + pl.rows_per_block - 1) / pl.rows_per_block;
  const dim3 block(pl.row_threads, pl.rows_per_block);
  const bool dw = partial != nullptr || count_only;
  const size_t smem = (dw && pl.rows_per_block > 1) ? sizeof(float) * static_cast<size_t>(pl.rows_per_block) * cols : 0;
  auto kernel = rms_norm_backward_v2<S, V, P>;
  // dw partial rows: one per block, so the grid is one resident wave (grid-stride over the row groups).
  const int64_t grid = dw ? resident_blocks(kernel, pl.block_threads(), smem, groups) : std::min(groups, kMaxGrid);
  if (count_only) return grid;
  launch(kernel, static_cast<unsigned>(grid), block, smem, x, w, rstd, g, dx, partial, rows, cols, one_plus);
  return grid;
}

// Two calls: count_only (the number of partial rows the launch will write), then the launch itself.
template <class S, int V>
int64_t backward_vec(const RmsNormPlan& pl, const S* x, const S* w, const float* rstd, const S* g, S* dx,
                     float* partial, int64_t rows, int cols, bool one_plus, bool count_only) {
  switch (pl.packs) {
    case 0: {
      const bool dw = partial != nullptr || count_only;
      auto kernel = rms_norm_backward_long<S, V>;
      const int64_t grid =
          dw ? resident_blocks(kernel, kRmsNormMaxRowThreads, 0, rows) : std::max<int64_t>(1, std::min(rows, kMaxGrid));
      if (count_only) return grid;
      launch(kernel, static_cast<unsigned>(grid), kRmsNormMaxRowThreads, 0, x, w, rstd, g, dx, partial, rows, cols,
             one_plus);
      return grid;
    }
    case 1:
      return launch_backward<S, V, 1>(pl, x, w, rstd, g, dx, partial, rows, cols, one_plus, count_only);
    case 2:
      return launch_backward<S, V, 2>(pl, x, w, rstd, g, dx, partial, rows, cols, one_plus, count_only);
    case 4:
      return launch_backward<S, V, 4>(pl, x, w, rstd, g, dx, partial, rows, cols, one_plus, count_only);
    case 8:
      if constexpr (V == 1)
        return launch_backward<S, V, 8>(pl, x, w, rstd, g, dx, partial, rows, cols, one_plus, count_only);
      [[fallthrough]];
    default:
      DISTILL_CHECK(false, "rms_norm_backward: no kernel for ", pl.packs, " packs of ", V, " per thread");
  }
  return 0;
}

void check_args(int64_t rows, int64_t cols, const char* op) {
  DISTILL_CHECK(rows >= 0 && cols > 0 && cols < (int64_t{1} << 31), op, ": needs rows >= 0 and 0 < cols < 2^31, got [",
                rows, ", ", cols, "]");
}

}  // namespace

template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, float* rstd, int64_t rows, int64_t cols, float eps,
                      RmsNormStyle style) {
  check_args(rows, cols, "rms_norm");
  if (rows == 0) return;
  using S = typename DevType<T>::type;
  constexpr int kVec = 16 / sizeof(T);
  const RmsNormPlan pl = plan_rms_norm(cols, sizeof(T), aligned16(x) && aligned16(w) && aligned16(y));
  const bool one_plus = style == RmsNormStyle::OnePlusWeight;
  const auto* sx = reinterpret_cast<const S*>(x);
  const auto* sw = reinterpret_cast<const S*>(w);
  auto* sy = reinterpret_cast<S*>(y);
  const int c = static_cast<int>(cols);
  if (pl.vec == kVec)
    forward_vec<S, kVec>(pl, sx, sw, sy, rstd, rows, c, eps, one_plus);
  else
    forward_vec<S, 1>(pl, sx, sw, sy, rstd, rows, c, eps, one_plus);
}

template <class T>
void rms_norm_backward(const T* x, const T* w, const float* rstd, const T* g, T* dx, T* dw, int64_t rows, int64_t cols,
                       RmsNormStyle style) {
  check_args(rows, cols, "rms_norm_backward");
  if (!dx && !dw) return;
  if (rows == 0) {
    if (dw) memset_device_zero(dw, sizeof(T) * static_cast<size_t>(cols));
    return;
  }
  using S = typename DevType<T>::type;
  constexpr int kVec = 16 / sizeof(T);
  const RmsNormPlan pl =
      plan_rms_norm(cols, sizeof(T), aligned16(x) && aligned16(w) && aligned16(g) && aligned16(dx), true);
  const bool one_plus = style == RmsNormStyle::OnePlusWeight;
  const auto* sx = reinterpret_cast<const S*>(x);
  const auto* sw = reinterpret_cast<const S*>(w);
  const auto* sg = reinterpret_cast<const S*>(g);
  auto* sdx = reinterpret_cast<S*>(dx);
  const int c = static_cast<int>(cols);
  auto run = [&](float* partial, bool count_only) {
    return pl.vec == kVec ? backward_vec<S, kVec>(pl, sx, sw, rstd, sg, sdx, partial, rows, c, one_plus, count_only)
                          : backward_vec<S, 1>(pl, sx, sw, rstd, sg, sdx, partial, rows, c, one_plus, count_only);
  };
  if (!dw) {
    run(nullptr, false);
    return;
  }
  const int64_t nb = run(nullptr, true);
  DeviceBuffer<float> partial(static_cast<size_t>(nb * cols));  // [nb, cols]
  if (pl.long_rows()) memset_device_zero(partial.data(), sizeof(float) * partial.size());
  run(partial.data(), false);
  const dim3 block(32, kReduceSlices);
  const unsigned grid = static_cast<unsigned>((cols + 31) / 32);
  launch(rms_norm_dw_reduce<S>, grid, block, 0, static_cast<const float*>(partial.data()), nb, c,
         reinterpret_cast<S*>(dw));
}

#define DISTILL_INST_RMSNORM(T)                                                                             \
  template void rms_norm_forward<T>(const T*, const T*, T*, float*, int64_t, int64_t, float, RmsNormStyle); \
  template void rms_norm_backward<T>(const T*, const T*, const float*, const T*, T*, T*, int64_t, int64_t,  \
                                     RmsNormStyle);
DISTILL_INST_RMSNORM(float)
DISTILL_INST_RMSNORM(bf16)
DISTILL_INST_RMSNORM(f16)
#undef DISTILL_INST_RMSNORM

}  // namespace distill::cuda
