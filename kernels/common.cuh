// Device helpers shared by the kernel files (kernels/*.cu include it as "common.cuh"; nothing else should):
//  - DevType<T> / dev_t<T>: the CUDA storage type of a Distill dtype (bf16 -> __nv_bfloat16, f16 -> __half;
//    Eigen's types have the same bits), and to_f32 / from_f32 between it and f32 (round-to-nearest-even,
//    as the CPU rounds);
//  - aligned16(p) (host) and load_vec / store_vec: V consecutive elements as floats, one 16-byte access
//    when V > 1 (load_vec's kReadOnly picks __ldg or a plain load);
//  - warp_allreduce / item_allreduce: butterfly reductions over a warp, or over a work item that is a warp
//    or a whole block (+ shared memory across warps), with SumOp / MaxOp; and the item geometry helpers of
//    the row kernels (item_lanes, item_lane, items_per_block, item_offset).
// Everything is inline: a kernel file gets exactly the code it had when it carried its own copy.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "distill/core/dtype.hpp"

namespace distill::cuda::kern {

inline constexpr unsigned kFullMask = 0xffffffffu;

// --- device types and conversions -------------------------------------------------------------------------
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
template <class T>
using dev_t = typename DevType<T>::type;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <class DT>
__device__ __forceinline__ DT from_f32(float x) {
  if constexpr (std::is_same_v<DT, float>) {
    return x;
  } else if constexpr (std::is_same_v<DT, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    static_assert(std::is_same_v<DT, __half>, "from_f32: float, __nv_bfloat16 or __half");
    return __float2half_rn(x);
  }
}

// --- 16-byte vector access --------------------------------------------------------------------------------
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// V consecutive elements at p (16-byte aligned when V > 1) as floats. kReadOnly: through the read-only path.
template <int V, bool kReadOnly, class DT>
__device__ __forceinline__ void load_vec(const DT* p, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = to_f32(p[0]);
  } else {
    static_assert(V * sizeof(DT) == 16, "a vector load is 16 bytes");
    uint4 raw;
    if constexpr (kReadOnly)
      raw = __ldg(reinterpret_cast<const uint4*>(p));
    else
      raw = *reinterpret_cast<const uint4*>(p);
    const DT* e = reinterpret_cast<const DT*>(&raw);
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = to_f32(e[j]);
  }
}

template <int V, class DT>
__device__ __forceinline__ void store_vec(DT* p, const float (&in)[V]) {
  if constexpr (V == 1) {
    p[0] = from_f32<DT>(in[0]);
  } else {
    uint4 raw;
    DT* e = reinterpret_cast<DT*>(&raw);
#pragma unroll
    for (int j = 0; j < V; ++j) e[j] = from_f32<DT>(in[j]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
}

// --- warp / work-item reductions --------------------------------------------------------------------------
struct SumOp {
  template <class V>
  __device__ __forceinline__ V operator()(V a, V b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Full-warp shuffles. A kernel file reducing its own type V adds a shfl_xor(V, int) overload next to V
// (found by argument-dependent lookup).
__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor_sync(kFullMask, v, o); }
__device__ __forceinline__ double shfl_xor(double v, int o) { return __shfl_xor_sync(kFullMask, v, o); }

// Butterfly over the full warp (offsets 16, 8, 4, 2, 1): every lane ends with the same (bitwise) result.
template <class V, class Op>
__device__ __forceinline__ V warp_allreduce(V v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  return v;
}

// The reduction over one work item: its warp (kWarp) or its whole block (blockDim.x a multiple of 32). Every
// thread of the item gets the result. Block form: called by every thread of the block (uniform control flow);
// s_red holds 32 values.
template <bool kWarp, class V, class Op>
__device__ __forceinline__ V item_allreduce(V v, Op op, V identity, V* s_red) {
  v = warp_allreduce(v, op);
  if constexpr (!kWarp) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads();  // s_red may still be read by the previous call
    if (lane == 0) s_red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? s_red[lane] : identity;
    v = warp_allreduce(v, op);
  }
  return v;
}

// --- work items of the row kernels ------------------------------------------------------------------------
// A work item is one warp (kWarp) or one block: lanes per item, this thread's lane, items per block, this
// thread's item within its block.
template <bool kWarp>
__device__ __forceinline__ int item_lanes() {
  return kWarp ? 32 : static_cast<int>(blockDim.x);
}
template <bool kWarp>
__device__ __forceinline__ int item_lane() {
  return kWarp ? static_cast<int>(threadIdx.x & 31) : static_cast<int>(threadIdx.x);
}
template <bool kWarp>
__device__ __forceinline__ int64_t items_per_block() {
  return kWarp ? static_cast<int64_t>(blockDim.x >> 5) : 1;
}
template <bool kWarp>
__device__ __forceinline__ int64_t item_offset() {
  return kWarp ? static_cast<int64_t>(threadIdx.x >> 5) : 0;
}

}  // namespace distill::cuda::kern
