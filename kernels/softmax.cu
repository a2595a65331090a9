// softmax / log_softmax over the last axis, forward and backward, behind include/distill/cuda/softmax.hpp.
//
// Rows that fit one work item (one warp for K <= 32 * 16 elements, else one block of up to 1024 threads,
// 16 elements per thread in registers: K <= 16384) run fused: load once, row max and sum of exp by warp
// shuffles (+ shared memory across warps), write once. Longer rows (vocabularies) are cut into equal
// chunks of at most 16384 elements: a stats kernel writes each chunk's (max, sum exp(x - max)) pair, an
// apply kernel merges the row's pairs in chunk order and writes its chunk. The apply kernel walks the
// items in reverse, so it starts on the chunks the stats kernel read last (still in L2). The backward has
// the same two shapes with sum(g * y) (softmax) or sum(g) (log_softmax) as the row statistic.
// Everything is computed in f32; no atomics, so results are bitwise reproducible.
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "distill/core/dtype.hpp"
#include "distill/cuda/check.hpp"
#include "distill/cuda/softmax.hpp"

namespace distill::cuda {

namespace {

using namespace kern;  // common.cuh: device types, conversions, vector access, reductions

// Merges the chunk statistics (max m_c, sum s_c of exp(x - m_c)) of one row, in chunk order. A chunk of all
// -inf has s_c = 0 and is skipped; a row of all -inf gives m = -inf, s = 0 (its outputs are NaN, as on the CPU).
__device__ __forceinline__ float2 merge_row_stats(const float2* __restrict__ stats, int64_t chunks) {
  float m = -INFINITY;
  for (int64_t c = 0; c < chunks; ++c) m = fmaxf(m, stats[c].x);
  float s = 0.f;
  for (int64_t c = 0; c < chunks; ++c)
    if (stats[c].x != -INFINITY) s += stats[c].y * expf(stats[c].x - m);
  return make_float2(m, s);
}

// --- forward ------------------------------------------------------------------------------------------
// Whole rows (chunks == 1), one per warp (kWarp) or block.
template <class DT, int V, bool kWarp, bool kLog>
__global__ void __launch_bounds__(kWarp ? 32 * kWarpRowsPerBlock : kRowMaxThreads)
    softmax_fused_kernel(const DT* __restrict__ gX, DT* __restrict__ gY, int64_t R, int64_t K) {
  constexpr int VPT = kRowElemsPerThread / V;
  __shared__ float sRed[32];
  const int nv = static_cast<int>(K / V);  // a whole row is one item: <= 16384 vectors
  const int lanes = item_lanes<kWarp>(), t = item_lane<kWarp>();
  const int64_t ipb = items_per_block<kWarp>();
  for (int64_t base = blockIdx.x * ipb; base < R; base += int64_t{gridDim.x} * ipb) {
    const int64_t row = base + item_offset<kWarp>();
    if (kWarp && row >= R) break;  // warp-uniform; the warp form never synchronizes the block
    const DT* xr = gX + row * K;
    DT* yr = gY + row * K;
    float r[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        load_vec<V, true>(xr + v * V, r[i]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) r[i][j] = -INFINITY;
      }
    }
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < VPT; ++i)
#pragma unroll
      for (int j = 0; j < V; ++j) m = fmaxf(m, r[i][j]);
    m = item_allreduce<kWarp>(m, MaxOp{}, -INFINITY, sRed);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      if (t + i * lanes < nv) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          r[i][j] -= m;
          const float e = expf(r[i][j]);
          s += e;
          if constexpr (!kLog) r[i][j] = e;
        }
      }
    }
    s = item_allreduce<kWarp>(s, SumOp{}, 0.f, sRed);
    const float k = kLog ? logf(s) : 1.f / s;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
#pragma unroll
        for (int j = 0; j < V; ++j) r[i][j] = kLog ? r[i][j] - k : r[i][j] * k;
        store_vec<V>(yr + v * V, r[i]);
      }
    }
  }
}

// Long rows, pass 1: (max, sum exp(x - max)) of each (row, chunk) item, one block each.
template <class DT, int V>
__global__ void __launch_bounds__(kRowMaxThreads)
    softmax_stats_kernel(const DT* __restrict__ gX, float2* __restrict__ gStats, int64_t items, int64_t chunks,
                         int64_t chunk_vecs, int64_t K) {
  constexpr int VPT = kRowElemsPerThread / V;
  __shared__ float sRed[32];
  const int64_t nvec = K / V;
  const int lanes = blockDim.x, t = threadIdx.x;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t row = item / chunks, c = item - row * chunks;
    const int nv = static_cast<int>(min(chunk_vecs, nvec - c * chunk_vecs));  // vectors of the chunk
    const DT* xc = gX + row * K + c * chunk_vecs * V;
    float r[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        load_vec<V, true>(xc + v * V, r[i]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) r[i][j] = -INFINITY;
      }
    }
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < VPT; ++i)
#pragma unroll
      for (int j = 0; j < V; ++j) m = fmaxf(m, r[i][j]);
    m = item_allreduce<false>(m, MaxOp{}, -INFINITY, sRed);
    float s = 0.f;
    if (m != -INFINITY) {  // block-uniform (m is the block's result)
#pragma unroll
      for (int i = 0; i < VPT; ++i)
        if (t + i * lanes < nv) {
#pragma unroll
          for (int j = 0; j < V; ++j) s += expf(r[i][j] - m);
        }
    }
    s = item_allreduce<false>(s, SumOp{}, 0.f, sRed);
    if (t == 0) gStats[item] = make_float2(m, s);
  }
}

// Long rows, pass 2: merge the row's chunk statistics, write the chunk. Items run in reverse.
template <class DT, int V, bool kLog>
__global__ void __launch_bounds__(kRowMaxThreads)
    softmax_apply_kernel(const DT* __restrict__ gX, const float2* __restrict__ gStats, DT* __restrict__ gY,
                         int64_t items, int64_t chunks, int64_t chunk_vecs, int64_t K) {
  constexpr int VPT = kRowElemsPerThread / V;
  const int64_t nvec = K / V;
  const int lanes = blockDim.x, t = threadIdx.x;
  for (int64_t k = blockIdx.x; k < items; k += gridDim.x) {
    const int64_t item = items - 1 - k;
    const int64_t row = item / chunks, c = item - row * chunks;
    const int nv = static_cast<int>(min(chunk_vecs, nvec - c * chunk_vecs));  // vectors of the chunk
    const int64_t e0 = row * K + c * chunk_vecs * V;
    const DT* xc = gX + e0;
    DT* yc = gY + e0;
    float r[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) load_vec<V, true>(xc + v * V, r[i]);
    }
    const float2 ms = merge_row_stats(gStats + row * chunks, chunks);
    const float kk = kLog ? logf(ms.y) : 1.f / ms.y;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
#pragma unroll
        for (int j = 0; j < V; ++j) r[i][j] = kLog ? (r[i][j] - ms.x) - kk : expf(r[i][j] - ms.x) * kk;
        store_vec<V>(yc + v * V, r[i]);
      }
    }
  }
}

// --- backward -----------------------------------------------------------------------------------------
// The per-element gradient from y, g and the row statistic (sum(g * y) for softmax, sum(g) for log_softmax).
template <bool kLog>
__device__ __forceinline__ float softmax_grad(float y, float g, float stat) {
  return kLog ? g - expf(y) * stat : y * (g - stat);
}

template <class DT, int V, bool kWarp, bool kLog>
__global__ void __launch_bounds__(kWarp ? 32 * kWarpRowsPerBlock : kRowMaxThreads)
    softmax_backward_fused_kernel(const DT* __restrict__ gYv, const DT* __restrict__ gG, DT* __restrict__ gDx,
                                  int64_t R, int64_t K) {
  constexpr int VPT = kRowElemsPerThread / V;
  __shared__ float sRed[32];
  const int nv = static_cast<int>(K / V);  // a whole row is one item: <= 16384 vectors
  const int lanes = item_lanes<kWarp>(), t = item_lane<kWarp>();
  const int64_t ipb = items_per_block<kWarp>();
  for (int64_t base = blockIdx.x * ipb; base < R; base += int64_t{gridDim.x} * ipb) {
    const int64_t row = base + item_offset<kWarp>();
    if (kWarp && row >= R) break;
    const DT* yr = gYv + row * K;
    const DT* gr = gG + row * K;
    DT* dr = gDx + row * K;
    float ry[VPT][V], rg[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        load_vec<V, true>(yr + v * V, ry[i]);
        load_vec<V, true>(gr + v * V, rg[i]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) ry[i][j] = rg[i][j] = 0.f;
      }
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i)
#pragma unroll
      for (int j = 0; j < V; ++j) s += kLog ? rg[i][j] : rg[i][j] * ry[i][j];
    s = item_allreduce<kWarp>(s, SumOp{}, 0.f, sRed);
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        float d[V];
        load_vec<V, false>(dr + v * V, d);
#pragma unroll
        for (int j = 0; j < V; ++j) d[j] += softmax_grad<kLog>(ry[i][j], rg[i][j], s);
        store_vec<V>(dr + v * V, d);
      }
    }
  }
}

// Long rows, pass 1: each chunk's partial of the row statistic.
template <class DT, int V, bool kLog>
__global__ void __launch_bounds__(kRowMaxThreads)
    softmax_backward_stats_kernel(const DT* __restrict__ gYv, const DT* __restrict__ gG, float* __restrict__ gStats,
                                  int64_t items, int64_t chunks, int64_t chunk_vecs, int64_t K) {
  constexpr int VPT = kRowElemsPerThread / V;
  __shared__ float sRed[32];
  const int64_t nvec = K / V;
  const int lanes = blockDim.x, t = threadIdx.x;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t row = item / chunks, c = item - row * chunks;
    const int nv = static_cast<int>(min(chunk_vecs, nvec - c * chunk_vecs));  // vectors of the chunk
    const int64_t e0 = row * K + c * chunk_vecs * V;
    float ry[VPT][V], rg[VPT][V];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        if constexpr (!kLog) load_vec<V, true>(gYv + e0 + v * V, ry[i]);
        load_vec<V, true>(gG + e0 + v * V, rg[i]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) ry[i][j] = rg[i][j] = 0.f;
      }
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i)
#pragma unroll
      for (int j = 0; j < V; ++j) s += kLog ? rg[i][j] : rg[i][j] * ry[i][j];
    s = item_allreduce<false>(s, SumOp{}, 0.f, sRed);
    if (t == 0) gStats[item] = s;
  }
}

// Long rows, pass 2: add the row's partials in chunk order, accumulate the chunk's gradient. Items in reverse.
template <class DT, int V, bool kLog>
__global__ void __launch_bounds__(kRowMaxThreads)
    softmax_backward_apply_kernel(const DT* __restrict__ gYv, const DT* __restrict__ gG,
                                  const float* __restrict__ gStats, DT* __restrict__ gDx, int64_t items, int64_t chunks,
                                  int64_t chunk_vecs, int64_t K) {
  constexpr int VPT = kRowElemsPerThread / V;
  const int64_t nvec = K / V;
  const int lanes = blockDim.x, t = threadIdx.x;
  for (int64_t k = blockIdx.x; k < items; k += gridDim.x) {
    const int64_t item = items - 1 - k;
    const int64_t row = item / chunks, c = item - row * chunks;
    const int nv = static_cast<int>(min(chunk_vecs, nvec - c * chunk_vecs));  // vectors of the chunk
    const int64_t e0 = row * K + c * chunk_vecs * V;
    float s = 0.f;
    for (int64_t cc = 0; cc < chunks; ++cc) s += gStats[row * chunks + cc];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int v = t + i * lanes;
      if (v < nv) {
        const int64_t off = e0 + v * V;
        float y[V], g[V], d[V];
        load_vec<V, true>(gYv + off, y);
        load_vec<V, true>(gG + off, g);
        load_vec<V, false>(gDx + off, d);
#pragma unroll
        for (int j = 0; j < V; ++j) d[j] += softmax_grad<kLog>(y[j], g[j], s);
        store_vec<V>(gDx + off, d);
      }
    }
  }
}

// --- host side ----------------------------------------------------------------------------------------
// Calls f(integral_constant<int, V>, bool_constant<kLog>) for vector width `vec` (1 or VMax) and `log`.
template <int VMax, class F>
void with_vec_and_log(int vec, bool log, F&& f) {
  auto by_log = [&](auto vc) {
    if (log)
      f(vc, std::true_type{});
    else
      f(vc, std::false_type{});
  };
  if (vec == 1) {
    by_log(std::integral_constant<int, 1>{});
  } else {
    DISTILL_CHECK(vec == VMax, "plan_rows: unexpected vector width ", vec);
    by_log(std::integral_constant<int, VMax>{});
  }
}

// The same, adding bool_constant<kWarp> for the plan's item kind.
template <int VMax, class F>
void with_plan(const RowPlan& p, bool log, F&& f) {
  with_vec_and_log<VMax>(p.vec, log, [&](auto vc, auto lc) {
    if (p.warp_per_row)
      f(vc, std::true_type{}, lc);
    else
      f(vc, std::false_type{}, lc);
  });
}

}  // namespace

template <class T>
void softmax_rows(const T* x, T* y, int64_t R, int64_t K, bool log) {
  using DT = dev_t<T>;
  if (R <= 0 || K <= 0) return;
  const RowPlan p = plan_rows(R, K, sizeof(T), aligned16(x) && aligned16(y));
  const DT* dx = reinterpret_cast<const DT*>(x);
  DT* dy = reinterpret_cast<DT*>(y);
  const unsigned grid = static_cast<unsigned>(p.blocks);
  if (p.chunks == 1) {
    with_plan<16 / sizeof(T)>(p, log, [&](auto vc, auto wc, auto lc) {
      softmax_fused_kernel<DT, decltype(vc)::value, decltype(wc)::value, decltype(lc)::value>
          <<<grid, p.block_threads, 0, stream()>>>(dx, dy, R, K);
      DISTILL_CHECK_LAUNCH();
    });
    return;
  }
  DISTILL_CHECK(!p.warp_per_row, "softmax: a row cut into chunks is never one warp (plan_rows)");
  DeviceBuffer<float2> stats(static_cast<size_t>(p.items));
  with_vec_and_log<16 / sizeof(T)>(p.vec, log, [&](auto vc, auto lc) {
    constexpr int V = decltype(vc)::value;
    softmax_stats_kernel<DT, V>
        <<<grid, p.block_threads, 0, stream()>>>(dx, stats.data(), p.items, p.chunks, p.chunk_vecs, K);
    DISTILL_CHECK_LAUNCH();
    softmax_apply_kernel<DT, V, decltype(lc)::value>
        <<<grid, p.block_threads, 0, stream()>>>(dx, stats.data(), dy, p.items, p.chunks, p.chunk_vecs, K);
    DISTILL_CHECK_LAUNCH();
  });
}

template <class T>
void softmax_backward_rows(const T* y, const T* g, T* dx, int64_t R, int64_t K, bool log) {
  using DT = dev_t<T>;
  if (R <= 0 || K <= 0) return;
  const RowPlan p = plan_rows(R, K, sizeof(T), aligned16(y) && aligned16(g) && aligned16(dx));
  const DT* dy = reinterpret_cast<const DT*>(y);
  const DT* dg = reinterpret_cast<const DT*>(g);
  DT* ddx = reinterpret_cast<DT*>(dx);
  const unsigned grid = static_cast<unsigned>(p.blocks);
  if (p.chunks == 1) {
    with_plan<16 / sizeof(T)>(p, log, [&](auto vc, auto wc, auto lc) {
      softmax_backward_fused_kernel<DT, decltype(vc)::value, decltype(wc)::value, decltype(lc)::value>
          <<<grid, p.block_threads, 0, stream()>>>(dy, dg, ddx, R, K);
      DISTILL_CHECK_LAUNCH();
    });
    return;
  }
  DISTILL_CHECK(!p.warp_per_row, "softmax_backward: a row cut into chunks is never one warp (plan_rows)");
  DeviceBuffer<float> stats(static_cast<size_t>(p.items));
  with_vec_and_log<16 / sizeof(T)>(p.vec, log, [&](auto vc, auto lc) {
    constexpr int V = decltype(vc)::value;
    constexpr bool L = decltype(lc)::value;
    softmax_backward_stats_kernel<DT, V, L>
        <<<grid, p.block_threads, 0, stream()>>>(dy, dg, stats.data(), p.items, p.chunks, p.chunk_vecs, K);
    DISTILL_CHECK_LAUNCH();
    softmax_backward_apply_kernel<DT, V, L>
        <<<grid, p.block_threads, 0, stream()>>>(dy, dg, stats.data(), ddx, p.items, p.chunks, p.chunk_vecs, K);
    DISTILL_CHECK_LAUNCH();
  });
}

#define DISTILL_INSTANTIATE_SOFTMAX(T)                                 \
  template void softmax_rows<T>(const T*, T*, int64_t, int64_t, bool); \
  template void softmax_backward_rows<T>(const T*, const T*, T*, int64_t, int64_t, bool);

DISTILL_INSTANTIATE_SOFTMAX(float)
DISTILL_INSTANTIATE_SOFTMAX(bf16)
DISTILL_INSTANTIATE_SOFTMAX(f16)
#undef DISTILL_INSTANTIATE_SOFTMAX

}  // namespace distill::cuda
