// Row-wise reductions behind include/distill/cuda/reduce.hpp: sum / mean / max over the last axis, the sum of
// all elements, and their backward passes.
//
// Layout: one (row, chunk) work item per warp (short rows) or per block (see plan_rows). Each thread loads
// its share of the chunk into registers up front (16-byte vectors when the row length and pointers allow),
// reduces it in f32, then the item reduces with warp shuffles (+ shared memory across warps). Rows cut into
// several chunks write one partial per chunk; a combine kernel adds them in chunk order. sum_all adds fixed
// per-block partials, then one block adds those in f64. No atomics anywhere: results are bitwise the same
// from run to run.
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "distill/core/dtype.hpp"
#include "distill/cuda/check.hpp"
#include "distill/cuda/reduce.hpp"

namespace distill::cuda {

namespace {

using namespace kern;  // common.cuh: device types, conversions, vector access, reductions

// --- reductions ---------------------------------------------------------------------------------------
// The running max of a row with the index where it sits. Preference is a total order (NaN first, then the
// larger value, then the smaller index), so any reduction tree gives the CPU's answer: the first NaN, else
// the first index of the maximum.
struct ArgMax {
  float v;
  int64_t i;
};
constexpr int64_t kNoIndex = INT64_MAX;

struct FirstMaxOp {
  __device__ __forceinline__ ArgMax operator()(ArgMax a, ArgMax b) const {
    const bool an = isnan(a.v), bn = isnan(b.v);
    bool take_a;
    if (an != bn)
      take_a = an;
    else if (an || a.v == b.v)
      take_a = a.i < b.i;
    else
      take_a = a.v > b.v;
    return take_a ? a : b;
  }
};

// The ArgMax overload of kern::shfl_xor (warp_allreduce finds it by argument-dependent lookup).
__device__ __forceinline__ ArgMax shfl_xor(ArgMax a, int o) {
  return {__shfl_xor_sync(kFullMask, a.v, o),
          static_cast<int64_t>(__shfl_xor_sync(kFullMask, static_cast<long long>(a.i), o))};
}

// --- kernels ------------------------------------------------------------------------------------------
// Sum of each (row, chunk) item: the row's result (chunks == 1) or the chunk's partial.
template <class DT, int V, bool kWarp>
__global__ void __launch_bounds__(kWarp ? 32 * kWarpRowsPerBlock : kRowMaxThreads)
    sum_rows_kernel(const DT* __restrict__ gX, DT* __restrict__ gY, float* __restrict__ gPartial, int64_t items,
                    int64_t chunks, int64_t chunk_vecs, int64_t K, bool mean) {
  constexpr int VPT = kRowElemsPerThread / V;
  __shared__ float sRed[32];
  const int64_t nvec = K / V;
  const int lanes = item_lanes<kWarp>(), t = item_lane<kWarp>();
  const int64_t ipb = items_per_block<kWarp>();
  for (int64_t base = blockIdx.x * ipb; base < items; base += int64_t{gridDim.x} * ipb) {
    const int64_t item = base + item_offset<kWarp>();
    if (kWarp && item >= items) break;  // warp-uniform; the warp form never synchronizes the block
    const int64_t row = item / chunks, c = item - row * chunks;
    const int64_t e0 = c * chunk_vecs * V;                                    // first element of the chunk
    const int nv = static_cast<int>(min(chunk_vecs, nvec - c * chunk_vecs));  // its vectors (<= 16384)
    const DT* xc = gX + row * K + e0;
    float r[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        load_vec<V, true>(xc + v * V, r[i]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) r[i][j] = 0.f;
      }
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i)
#pragma unroll
      for (int j = 0; j < V; ++j) s += r[i][j];
    s = item_allreduce<kWarp>(s, SumOp{}, 0.f, sRed);
    if (t == 0) {
      if (gPartial)
        gPartial[item] = s;
      else
        gY[row] = from_f32<DT>(mean ? s / static_cast<float>(K) : s);
    }
  }
}

// One warp per row: adds the row's chunk partials in a fixed order.
template <class DT>
__global__ void sum_combine_kernel(const float* __restrict__ gPartial, DT* __restrict__ gY, int64_t R, int64_t chunks,
                                   int64_t K, bool mean) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < R; row += int64_t{gridDim.x} * wpb) {
    float s = 0.f;
    for (int64_t c = lane; c < chunks; c += 32) s += gPartial[row * chunks + c];
    s = warp_allreduce(s, SumOp{});
    if (lane == 0) gY[row] = from_f32<DT>(mean ? s / static_cast<float>(K) : s);
  }
}

// First argmax of each (row, chunk) item: the row's result (chunks == 1) or the chunk's partial.
template <class DT, int V, bool kWarp>
__global__ void __launch_bounds__(kWarp ? 32 * kWarpRowsPerBlock : kRowMaxThreads)
    max_rows_kernel(const DT* __restrict__ gX, DT* __restrict__ gY, int64_t* __restrict__ gIdx,
                    ArgMax* __restrict__ gPartial, int64_t items, int64_t chunks, int64_t chunk_vecs, int64_t K) {
  constexpr int VPT = kRowElemsPerThread / V;
  __shared__ ArgMax sRed[32];
  const int64_t nvec = K / V;
  const int lanes = item_lanes<kWarp>(), t = item_lane<kWarp>();
  const int64_t ipb = items_per_block<kWarp>();
  const ArgMax none{-INFINITY, kNoIndex};
  for (int64_t base = blockIdx.x * ipb; base < items; base += int64_t{gridDim.x} * ipb) {
    const int64_t item = base + item_offset<kWarp>();
    if (kWarp && item >= items) break;
    const int64_t row = item / chunks, c = item - row * chunks;
    const int64_t e0 = c * chunk_vecs * V;                                    // first element of the chunk
    const int nv = static_cast<int>(min(chunk_vecs, nvec - c * chunk_vecs));  // its vectors (<= 16384)
    const DT* xr = gX + row * K;
    float r[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        load_vec<V, true>(xr + e0 + v * V, r[i]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) r[i][j] = -INFINITY;
      }
    }
    ArgMax best = none;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
#pragma unroll
        for (int j = 0; j < V; ++j) best = FirstMaxOp{}(best, ArgMax{r[i][j], e0 + v * V + j});
      }
    }
    best = item_allreduce<kWarp>(best, FirstMaxOp{}, none, sRed);
    if (t == 0) {
      if (gPartial) {
        gPartial[item] = best;
      } else {
        gY[row] = xr[best.i];  // the element itself, as the CPU writes it
        gIdx[row] = best.i;
      }
    }
  }
}

template <class DT>
__global__ void max_combine_kernel(const DT* __restrict__ gX, const ArgMax* __restrict__ gPartial, DT* __restrict__ gY,
                                   int64_t* __restrict__ gIdx, int64_t R, int64_t chunks, int64_t K) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < R; row += int64_t{gridDim.x} * wpb) {
    ArgMax best{-INFINITY, kNoIndex};
    for (int64_t c = lane; c < chunks; c += 32) best = FirstMaxOp{}(best, gPartial[row * chunks + c]);
    best = warp_allreduce(best, FirstMaxOp{});
    if (lane == 0) {
      gY[row] = gX[row * K + best.i];
      gIdx[row] = best.i;
    }
  }
}

// sum_all, stage 1: block b adds a fixed grid-stride share of the input (f32) into gPartial[b].
constexpr int kSumAllThreads = 256;
constexpr int kSumAllMaxBlocks = 1024;  // stage 2 is one block of this many threads

template <class DT, int V>
__global__ void __launch_bounds__(kSumAllThreads)
    sum_all_partial_kernel(const DT* __restrict__ gX, int64_t n, float* __restrict__ gPartial) {
  __shared__ float sRed[32];
  const int64_t nvec = n / V;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t gid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  float s = 0.f;
  int64_t i = gid;
  for (; i + 3 * stride < nvec; i += 4 * stride) {  // four loads in flight, added in index order
    float a[4][V];
#pragma unroll
    for (int u = 0; u < 4; ++u) load_vec<V, true>(gX + (i + u * stride) * V, a[u]);
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int j = 0; j < V; ++j) s += a[u][j];
  }
  for (; i < nvec; i += stride) {
    float a[V];
    load_vec<V, true>(gX + i * V, a);
#pragma unroll
    for (int j = 0; j < V; ++j) s += a[j];
  }
  if (gid < n - nvec * V) s += to_f32(gX[nvec * V + gid]);  // the tail (< V elements)
  s = item_allreduce<false>(s, SumOp{}, 0.f, sRed);
  if (threadIdx.x == 0) gPartial[blockIdx.x] = s;
}

// sum_all, stage 2: one block adds the partials in f64.
template <class DT>
__global__ void __launch_bounds__(kSumAllMaxBlocks)
    sum_all_final_kernel(const float* __restrict__ gPartial, int nparts, DT* __restrict__ gY) {
  __shared__ double sRed[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += static_cast<double>(gPartial[i]);
  s = item_allreduce<false>(s, SumOp{}, 0.0, sRed);
  if (threadIdx.x == 0) gY[0] = from_f32<DT>(static_cast<float>(s));
}

// dx[row, k] += g[row] * scale over each (row, chunk) item.
template <class DT, int V, bool kWarp>
__global__ void __launch_bounds__(kWarp ? 32 * kWarpRowsPerBlock : kRowMaxThreads)
    sum_rows_backward_kernel(const DT* __restrict__ gG, DT* __restrict__ gDx, int64_t items, int64_t chunks,
                             int64_t chunk_vecs, int64_t K, double scale) {
  constexpr int VPT = kRowElemsPerThread / V;
  const int64_t nvec = K / V;
  const int lanes = item_lanes<kWarp>(), t = item_lane<kWarp>();
  const int64_t ipb = items_per_block<kWarp>();
  for (int64_t base = blockIdx.x * ipb; base < items; base += int64_t{gridDim.x} * ipb) {
    const int64_t item = base + item_offset<kWarp>();
    if (item >= items) break;  // no block synchronization in this kernel
    const int64_t row = item / chunks, c = item - row * chunks;
    const int nv = static_cast<int>(min(chunk_vecs, nvec - c * chunk_vecs));  // vectors of the chunk
    const float gv = static_cast<float>(static_cast<double>(to_f32(gG[row])) * scale);
    DT* dr = gDx + row * K + c * chunk_vecs * V;
    float a[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) load_vec<V, false>(dr + v * V, a[i]);
    }
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
#pragma unroll
        for (int j = 0; j < V; ++j) a[i][j] += gv;
        store_vec<V>(dr + v * V, a[i]);
      }
    }
  }
}

template <class DT>
__global__ void max_rows_backward_kernel(const int64_t* __restrict__ gIdx, const DT* __restrict__ gG,
                                         DT* __restrict__ gDx, int64_t R, int64_t K) {
  for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < R; r += int64_t{gridDim.x} * blockDim.x) {
    DT* d = gDx + r * K + gIdx[r];
    *d = from_f32<DT>(to_f32(*d) + to_f32(gG[r]));
  }
}

template <class DT, int V>
__global__ void sum_all_backward_kernel(const DT* __restrict__ gG, DT* __restrict__ gDx, int64_t n) {
  const float gv = to_f32(gG[0]);
  const int64_t nvec = n / V;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t gid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  for (int64_t i = gid; i < nvec; i += stride) {
    float a[V];
    load_vec<V, false>(gDx + i * V, a);
#pragma unroll
    for (int j = 0; j < V; ++j) a[j] += gv;
    store_vec<V>(gDx + i * V, a);
  }
  for (int64_t i = nvec * V + gid; i < n; i += stride) gDx[i] = from_f32<DT>(to_f32(gDx[i]) + gv);
}

// --- host side ----------------------------------------------------------------------------------------
// Calls f(integral_constant<int, V>, bool_constant<kWarp>) with the plan's vector width and item kind.
template <int VMax, class F>
void with_plan(const RowPlan& p, F&& f) {
  using W = std::true_type;
  using B = std::false_type;
  if (p.vec == 1) {
    if (p.warp_per_row)
      f(std::integral_constant<int, 1>{}, W{});
    else
      f(std::integral_constant<int, 1>{}, B{});
  } else {
    DISTILL_CHECK(p.vec == VMax, "plan_rows: unexpected vector width ", p.vec);
    if (p.warp_per_row)
      f(std::integral_constant<int, VMax>{}, W{});
    else
      f(std::integral_constant<int, VMax>{}, B{});
  }
}

constexpr int kCombineThreads = 256;  // 8 rows (warps) per block

}  // namespace

template <class T>
void sum_last_rows(const T* x, T* y, int64_t R, int64_t K, bool mean) {
  using DT = dev_t<T>;
  if (R <= 0 || K <= 0) return;
  const RowPlan p = plan_rows(R, K, sizeof(T), aligned16(x));
  const DT* dx = reinterpret_cast<const DT*>(x);
  DT* dy = reinterpret_cast<DT*>(y);
  DeviceBuffer<float> partial(p.chunks > 1 ? static_cast<size_t>(p.items) : 0);
  with_plan<16 / sizeof(T)>(p, [&](auto vc, auto wc) {
    sum_rows_kernel<DT, decltype(vc)::value, decltype(wc)::value>
        <<<static_cast<unsigned>(p.blocks), p.block_threads, 0, stream()>>>(dx, dy, partial.data(), p.items, p.chunks,
                                                                            p.chunk_vecs, K, mean);
    DISTILL_CHECK_LAUNCH();
  });
  if (p.chunks > 1) {
    sum_combine_kernel<DT>
        <<<grid_for(R, kCombineThreads / 32), kCombineThreads, 0, stream()>>>(partial.data(), dy, R, p.chunks, K, mean);
    DISTILL_CHECK_LAUNCH();
  }
}

template <class T>
void max_last_rows(const T* x, T* y, int64_t* idx, int64_t R, int64_t K) {
  using DT = dev_t<T>;
  if (R <= 0 || K <= 0) return;
  const RowPlan p = plan_rows(R, K, sizeof(T), aligned16(x));
  const DT* dx = reinterpret_cast<const DT*>(x);
  DT* dy = reinterpret_cast<DT*>(y);
  DeviceBuffer<ArgMax> partial(p.chunks > 1 ? static_cast<size_t>(p.items) : 0);
  with_plan<16 / sizeof(T)>(p, [&](auto vc, auto wc) {
    max_rows_kernel<DT, decltype(vc)::value, decltype(wc)::value>
        <<<static_cast<unsigned>(p.blocks), p.block_threads, 0, stream()>>>(dx, dy, idx, partial.data(), p.items,
                                                                            p.chunks, p.chunk_vecs, K);
    DISTILL_CHECK_LAUNCH();
  });
  if (p.chunks > 1) {
    max_combine_kernel<DT><<<grid_for(R, kCombineThreads / 32), kCombineThreads, 0, stream()>>>(dx, partial.data(), dy,
                                                                                                idx, R, p.chunks, K);
    DISTILL_CHECK_LAUNCH();
  }
}

template <class T>
void sum_all_flat(const T* x, T* y, int64_t n) {
  using DT = dev_t<T>;
  const DT* dx = reinterpret_cast<const DT*>(x);
  DT* dy = reinterpret_cast<DT*>(y);
  // The grid depends on n only (not on the GPU), so the summation order is fixed.
  const int blocks = static_cast<int>(std::clamp<int64_t>(
      (n + kSumAllThreads * kRowElemsPerThread - 1) / (kSumAllThreads * kRowElemsPerThread), 1, kSumAllMaxBlocks));
  DeviceBuffer<float> partial(static_cast<size_t>(blocks));
  if (aligned16(x) && sizeof(T) < 16)
    sum_all_partial_kernel<DT, 16 / sizeof(T)><<<blocks, kSumAllThreads, 0, stream()>>>(dx, n, partial.data());
  else
    sum_all_partial_kernel<DT, 1><<<blocks, kSumAllThreads, 0, stream()>>>(dx, n, partial.data());
  DISTILL_CHECK_LAUNCH();
  sum_all_final_kernel<DT><<<1, kSumAllMaxBlocks, 0, stream()>>>(partial.data(), blocks, dy);
  DISTILL_CHECK_LAUNCH();
}

template <class T>
void sum_last_backward_rows(const T* g, T* dx, int64_t R, int64_t K, double scale) {
  using DT = dev_t<T>;
  if (R <= 0 || K <= 0) return;
  const RowPlan p = plan_rows(R, K, sizeof(T), aligned16(dx));
  const DT* dg = reinterpret_cast<const DT*>(g);
  DT* ddx = reinterpret_cast<DT*>(dx);
  with_plan<16 / sizeof(T)>(p, [&](auto vc, auto wc) {
    sum_rows_backward_kernel<DT, decltype(vc)::value, decltype(wc)::value>
        <<<static_cast<unsigned>(p.blocks), p.block_threads, 0, stream()>>>(dg, ddx, p.items, p.chunks, p.chunk_vecs, K,
                                                                            scale);
    DISTILL_CHECK_LAUNCH();
  });
}

template <class T>
void max_last_backward_rows(const int64_t* idx, const T* g, T* dx, int64_t R, int64_t K) {
  using DT = dev_t<T>;
  if (R <= 0 || K <= 0) return;
  max_rows_backward_kernel<DT>
      <<<grid_for(R, 256), 256, 0, stream()>>>(idx, reinterpret_cast<const DT*>(g), reinterpret_cast<DT*>(dx), R, K);
  DISTILL_CHECK_LAUNCH();
}

template <class T>
void sum_all_backward_flat(const T* g, T* dx, int64_t n) {
  using DT = dev_t<T>;
  if (n <= 0) return;
  constexpr int V = 16 / sizeof(T);
  const DT* dg = reinterpret_cast<const DT*>(g);
  DT* ddx = reinterpret_cast<DT*>(dx);
  if (aligned16(dx))
    sum_all_backward_kernel<DT, V><<<grid_for((n + V - 1) / V, 256, 65536), 256, 0, stream()>>>(dg, ddx, n);
  else
    sum_all_backward_kernel<DT, 1><<<grid_for(n, 256, 65536), 256, 0, stream()>>>(dg, ddx, n);
  DISTILL_CHECK_LAUNCH();
}

#define DISTILL_INSTANTIATE_REDUCE(T)                                                      \
  template void sum_last_rows<T>(const T*, T*, int64_t, int64_t, bool);                    \
  template void max_last_rows<T>(const T*, T*, int64_t*, int64_t, int64_t);                \
  template void sum_all_flat<T>(const T*, T*, int64_t);                                    \
  template void sum_last_backward_rows<T>(const T*, T*, int64_t, int64_t, double);         \
  template void max_last_backward_rows<T>(const int64_t*, const T*, T*, int64_t, int64_t); \
  template void sum_all_backward_flat<T>(const T*, T*, int64_t);

DISTILL_INSTANTIATE_REDUCE(float)
DISTILL_INSTANTIATE_REDUCE(bf16)
DISTILL_INSTANTIATE_REDUCE(f16)
#undef DISTILL_INSTANTIATE_REDUCE

}  // namespace distill::cuda
