// Precompiled element-wise kernels behind include/distill/cuda/elementwise.hpp: accumulation (autograd's
// dst += src), strided copies between views, dtype casts and fills. Contiguous kernels read 16 bytes per
// thread when both pointers are 16-byte aligned (a scalar tail handles the rest); grid-stride loops.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "distill/core/dtype.hpp"
#include "distill/cuda/check.hpp"
#include "distill/cuda/elementwise.hpp"

namespace distill::cuda {

namespace {

constexpr int kThreads = 256;

template <class T, int N>
struct alignas(16) Vec {
  T v[N];
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class T>
__global__ void add_into_vec_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t nvec) {
  constexpr int N = 16 / sizeof(T);
  using V = Vec<T, N>;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < nvec; i += int64_t{gridDim.x} * blockDim.x) {
    V a = reinterpret_cast<const V*>(dst)[i];
    const V b = reinterpret_cast<const V*>(src)[i];
#pragma unroll
    for (int k = 0; k < N; ++k) a.v[k] = from_compute<T>(to_compute<T>(a.v[k]) + to_compute<T>(b.v[k]));
    reinterpret_cast<V*>(dst)[i] = a;
  }
}

template <class T>
__global__ void add_into_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = from_compute<T>(to_compute<T>(dst[i]) + to_compute<T>(src[i]));
}

// Strided copy: each thread decomposes a flat (row-major) index into the view's coordinates.
struct StridedArgs {
  int64_t shape[kMaxRank];
  int64_t dst_strides[kMaxRank];
  int64_t src_strides[kMaxRank];
  int rank;
};

template <class T>
__global__ void strided_copy_kernel(T* __restrict__ dst, const T* __restrict__ src, StridedArgs a, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    int64_t rem = i, doff = 0, soff = 0;
    for (int d = a.rank - 1; d >= 0; --d) {
      const int64_t c = rem % a.shape[d];
      rem /= a.shape[d];
      doff += c * a.dst_strides[d];
      soff += c * a.src_strides[d];
    }
    dst[doff] = src[soff];
  }
}

template <class T, class U>
__device__ __forceinline__ U convert(T x) {
  if constexpr (std::is_same_v<T, double> && (std::is_same_v<U, bf16> || std::is_same_v<U, f16>)) {
    // double -> 16 bit rounds once, as on the host: truncate to float, make it sticky (round to odd),
    // then round to nearest even.
    float f = __double2float_rz(x);
    if (static_cast<double>(f) != x && isfinite(x)) f = __uint_as_float(__float_as_uint(f) | 1u);
    return from_compute<U>(f);
  } else if constexpr (is_floating_dtype_v<T> && is_floating_dtype_v<U>) {
    // Through the compute types: 16-bit targets round to nearest even from f32 (as the host does).
    using CT = compute_t<T>;
    using CU = compute_t<U>;
    return from_compute<U>(static_cast<CU>(static_cast<CT>(to_compute<T>(x))));
  } else if constexpr (is_floating_dtype_v<T>) {
    return static_cast<U>(to_compute<T>(x));
  } else if constexpr (is_floating_dtype_v<U>) {
    return from_compute<U>(static_cast<compute_t<U>>(x));
  } else {
    return static_cast<U>(x);
  }
}

template <class T, class U>
__global__ void cast_kernel(U* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = convert<T, U>(src[i]);
}

template <class T>
__global__ void fill_kernel(T* __restrict__ dst, T v, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = v;
}

}  // namespace

template <class T>
void add_into(T* dst, const T* src, int64_t n) {
  if (n <= 0) return;
  constexpr int N = 16 / sizeof(T);
  int64_t done = 0;
  if (aligned16(dst) && aligned16(src) && n >= N) {
    const int64_t nvec = n / N;
    add_into_vec_kernel<T><<<grid_for(nvec, kThreads), kThreads, 0, stream()>>>(dst, src, nvec);
    DISTILL_CHECK_LAUNCH();
    done = nvec * N;
  }
  if (done < n) {
    add_into_kernel<T><<<grid_for(n - done, kThreads), kThreads, 0, stream()>>>(dst + done, src + done, n - done);
    DISTILL_CHECK_LAUNCH();
  }
}

template <class T>
void strided_copy(T* dst, const Shape& dst_strides, const T* src, const Shape& src_strides, const Shape& shape) {
  const int64_t n = shape.numel();
  if (n == 0) return;
  StridedArgs a{};
  // Drop size-1 dimensions (their strides never matter) to shorten the index arithmetic.
  int r = 0;
  for (int d = 0; d < shape.rank(); ++d) {
    if (shape[d] == 1) continue;
    a.shape[r] = shape[d];
    a.dst_strides[r] = dst_strides[d];
    a.src_strides[r] = src_strides[d];
    ++r;
  }
  a.rank = r;
  strided_copy_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, src, a, n);
  DISTILL_CHECK_LAUNCH();
}

template <class T, class U>
void cast(U* dst, const T* src, int64_t n) {
  if (n <= 0) return;
  cast_kernel<T, U><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, src, n);
  DISTILL_CHECK_LAUNCH();
}

template <class T>
void fill(T* dst, T v, int64_t n) {
  if (n <= 0) return;
  fill_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(dst, v, n);
  DISTILL_CHECK_LAUNCH();
}

#define DISTILL_FLOATING(X) X(float) X(double) X(bf16) X(f16)
#define DISTILL_STORABLE(X) DISTILL_FLOATING(X) X(int32_t) X(int64_t) X(uint8_t)

#define DISTILL_INST_ADD(T) template void add_into<T>(T*, const T*, int64_t);
DISTILL_FLOATING(DISTILL_INST_ADD)
#define DISTILL_INST_COPY(T)                                                             \
  template void strided_copy<T>(T*, const Shape&, const T*, const Shape&, const Shape&); \
  template void fill<T>(T*, T, int64_t);
DISTILL_STORABLE(DISTILL_INST_COPY)
#define DISTILL_INST_CAST_TO(U, T) template void cast<T, U>(U*, const T*, int64_t);
#define DISTILL_INST_CAST_FROM(T) \
  DISTILL_INST_CAST_TO(float, T)  \
  DISTILL_INST_CAST_TO(double, T) \
  DISTILL_INST_CAST_TO(bf16, T)   \
  DISTILL_INST_CAST_TO(f16, T)    \
  DISTILL_INST_CAST_TO(int32_t, T) DISTILL_INST_CAST_TO(int64_t, T) DISTILL_INST_CAST_TO(uint8_t, T)
DISTILL_STORABLE(DISTILL_INST_CAST_FROM)

}  // namespace distill::cuda
