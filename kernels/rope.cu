// RoPE rotation (launcher declared in include/distill/cuda/rope.hpp): forward and backward are the same
// kernel with the sign of sin flipped. One thread rotates `V` pairs (i, i + D/2) of one [D] row: two 16-byte
// loads of x, the matching f32 cos/sin values (read through L1; every head of a position reuses them), two
// 16-byte stores. Grid-stride over the pairs, 32-bit index arithmetic when every offset fits.
// Rounding points are cpu::'s (distill/ops/rope.hpp); f32 products use __fmul_rn so nothing is fused.
// kernels/dev/rmsnorm/emulate_rope.cpp compiles this file on the CPU (DISTILL_KERNEL_EMULATION) to check it
// without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/core/error.hpp"
#ifndef DISTILL_KERNEL_EMULATION
#include "distill/cuda/check.hpp"
#endif
#include "distill/cuda/rope.hpp"

namespace distill::cuda {

namespace {

#ifndef DISTILL_KERNEL_EMULATION
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  kernel<<<grid, block, smem, stream()>>>(args...);
  DISTILL_CHECK_LAUNCH();
}
#endif

constexpr int kThreads = 256;

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

// V consecutive f32 table values (16-byte loads when V is a multiple of 4; the caller guarantees alignment).
template <int V>
__device__ __forceinline__ void load_table(const float* __restrict__ p, float (&out)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int k = 0; k < V / 4; ++k) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(p) + k);
      out[4 * k] = q.x;
      out[4 * k + 1] = q.y;
      out[4 * k + 2] = q.z;
      out[4 * k + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = __ldg(p + k);
  }
}

// Item `it` = (row, iv): row = (b * Tn + t) * H + h of x viewed as [rows, D]; pairs [iv * V, iv * V + V).
template <class S, int V, class I>
__global__ void __launch_bounds__(kThreads)
    rope_rotate_v1(const S* __restrict__ x, S* __restrict__ y, const float* __restrict__ cos,
                   const float* __restrict__ sin, I items, I nv, I H, I Tn, I half, bool per_batch, float sign) {
  using Pk = Pack<S, V>;
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  for (I it = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; it < items; it += stride) {
    const I row = it / nv, i0 = (it - row * nv) * V;
    const I bt = row / H;
    const I trow = per_batch ? bt : bt % Tn;
    const S* xr = x + row * (2 * half);  // [D]
    S* yr = y + row * (2 * half);
    const Pk a = *reinterpret_cast<const Pk*>(xr + i0);         // x1
    const Pk b = *reinterpret_cast<const Pk*>(xr + half + i0);  // x2
    float c[V], s[V];
    load_table<V>(cos + trow * half + i0, c);
    load_table<V>(sin + trow * half + i0, s);
    Pk o1, o2;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float ci = round_to<S>(c[e]), si = sign * round_to<S>(s[e]);
      const float x1 = to_f(a.v[e]), x2 = to_f(b.v[e]);
      if constexpr (std::is_same_v<S, float>) {
        o1.v[e] = from_f<S>(__fsub_rn(__fmul_rn(x1, ci), __fmul_rn(x2, si)));
        o2.v[e] = from_f<S>(__fadd_rn(__fmul_rn(x2, ci), __fmul_rn(x1, si)));
      } else {  // every product rounded to T, then the sum
        o1.v[e] = from_f<S>(round_to<S>(x1 * ci) - round_to<S>(x2 * si));
        o2.v[e] = from_f<S>(round_to<S>(x2 * ci) + round_to<S>(x1 * si));
      }
    }
    *reinterpret_cast<Pk*>(yr + i0) = o1;
    *reinterpret_cast<Pk*>(yr + half + i0) = o2;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class S, int V, class I>
void launch_rotate(const RopePlan& pl, const S* x, S* y, const float* cos, const float* sin, int64_t Tn, int64_t H,
                   int64_t half, bool per_batch, float sign) {
  const unsigned grid = grid_for(pl.items, kThreads);
  launch(rope_rotate_v1<S, V, I>, grid, kThreads, 0, x, y, cos, sin, static_cast<I>(pl.items), static_cast<I>(half / V),
         static_cast<I>(H), static_cast<I>(Tn), static_cast<I>(half), per_batch, sign);
}

template <class S, int V>
void launch_index(const RopePlan& pl, const S* x, S* y, const float* cos, const float* sin, int64_t Tn, int64_t H,
                  int64_t half, bool per_batch, float sign) {
  if (pl.index32)
    launch_rotate<S, V, uint32_t>(pl, x, y, cos, sin, Tn, H, half, per_batch, sign);
  else
    launch_rotate<S, V, int64_t>(pl, x, y, cos, sin, Tn, H, half, per_batch, sign);
}

}  // namespace

template <class T>
void rope_rotate(const T* x, T* y, const float* cos, const float* sin, int64_t B, int64_t Tn, int64_t H, int64_t D,
                 bool per_batch_tables, bool inverse) {
  DISTILL_CHECK(B >= 0 && Tn >= 0 && H >= 0 && D > 0 && D % 2 == 0, "rope: needs x [B, T, H, D] with D even, got [", B,
                ", ", Tn, ", ", H, ", ", D, "]");
  if (B * Tn * H == 0) return;
  using S = typename DevType<T>::type;
  constexpr int kVec = 16 / sizeof(T);
  const RopePlan pl =
      plan_rope(B, Tn, H, D, sizeof(T), aligned16(x) && aligned16(y) && aligned16(cos) && aligned16(sin));
  const auto* sx = reinterpret_cast<const S*>(x);
  auto* sy = reinterpret_cast<S*>(y);
  const float sign = inverse ? -1.f : 1.f;
  if (pl.vec == kVec)
    launch_index<S, kVec>(pl, sx, sy, cos, sin, Tn, H, D / 2, per_batch_tables, sign);
  else
    launch_index<S, 1>(pl, sx, sy, cos, sin, Tn, H, D / 2, per_batch_tables, sign);
}

#define DISTILL_INST_ROPE(T)                                                                                       \
  template void rope_rotate<T>(const T*, T*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, bool, \
                               bool);
DISTILL_INST_ROPE(float)
DISTILL_INST_ROPE(bf16)
DISTILL_INST_ROPE(f16)
#undef DISTILL_INST_ROPE

}  // namespace distill::cuda
