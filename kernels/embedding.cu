// Embedding gather and deterministic scatter-add behind include/distill/cuda/embedding.hpp.
// Gather: one warp per output row, 16-byte copies when C and both row strides are multiples of 16 bytes and
// the pointers are 16-byte aligned. Scatter-add: CUB's stable radix sort of (id, position), then one thread
// per (sorted occurrence, 16-byte column group); only the thread at the first occurrence of an id works: it
// walks that id's run in order of appearance, sums in f32 and adds to the gradient row once. No atomics.
#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <string>

#include "common.cuh"
#include "distill/core/dtype.hpp"
#include "distill/cuda/check.hpp"
#include "distill/cuda/embedding.hpp"

namespace distill::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

using namespace kern;  // common.cuh: device types, conversions, vector access, reductions

// One warp per output row k (grid-stride over rows). VEC elements per lane access: 16 bytes, or 1.
template <class S, int VEC>
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(const S* __restrict__ gW, int64_t ldw, const int32_t* __restrict__ gIds, int64_t n, int64_t C,
                       S* __restrict__ gOut, int64_t ldo) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = blockIdx.x * int64_t{kWarpsPerBlock} + (threadIdx.x >> 5);
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t k = warp; k < n; k += warps) {
    const S* src = gW + static_cast<int64_t>(gIds[k]) * ldw;
    S* dst = gOut + k * ldo;
    if constexpr (VEC > 1) {
      const int64_t nv = C / VEC;
      for (int64_t q = lane; q < nv; q += 32) reinterpret_cast<uint4*>(dst)[q] = reinterpret_cast<const uint4*>(src)[q];
    } else {
      for (int64_t c = lane; c < C; c += 32) dst[c] = src[c];
    }
  }
}

__global__ void iota_kernel(int32_t* __restrict__ p, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = static_cast<int32_t>(i);
}

// Item = (sorted occurrence k, column group q of VEC elements). The owner of an id is the item at its first
// occurrence; it sums g over the id's run in order of appearance (the sort is stable) and adds once.
template <class S, int VEC>
__global__ void __launch_bounds__(kThreads)
    scatter_add_sorted_kernel(S* __restrict__ gDw, const uint32_t* __restrict__ gKeys, const int32_t* __restrict__ gPos,
                              int64_t n, int64_t C, const S* __restrict__ gG) {
  const int64_t nv = C / VEC, total = n * nv;
  for (int64_t item = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; item < total;
       item += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = item / nv, c0 = (item - k * nv) * VEC;
    const uint32_t key = gKeys[k];
    if (k > 0 && gKeys[k - 1] == key) continue;  // not the first occurrence: someone else owns this row
    float rAcc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) rAcc[e] = 0.f;
    for (int64_t j = k; j < n && gKeys[j] == key; ++j) {
      const S* src = gG + static_cast<int64_t>(gPos[j]) * C + c0;
      if constexpr (VEC > 1) {
        const uint4 raw = *reinterpret_cast<const uint4*>(src);
        const S* e = reinterpret_cast<const S*>(&raw);
#pragma unroll
        for (int t = 0; t < VEC; ++t) rAcc[t] += to_f32(e[t]);
      } else {
        rAcc[0] += to_f32(src[0]);
      }
    }
    S* dst = gDw + static_cast<int64_t>(key) * C + c0;
    if constexpr (VEC > 1) {
      uint4 raw = *reinterpret_cast<const uint4*>(dst);
      S* e = reinterpret_cast<S*>(&raw);
#pragma unroll
      for (int t = 0; t < VEC; ++t) e[t] = from_f32<S>(to_f32(e[t]) + rAcc[t]);
      *reinterpret_cast<uint4*>(dst) = raw;
    } else {
      dst[0] = from_f32<S>(to_f32(dst[0]) + rAcc[0]);
    }
  }
}

int key_bits(int64_t V) {
  int bits = 1;
  while (bits < 32 && (int64_t{1} << bits) < V) ++bits;
  return bits;
}

}  // namespace

template <class T>
void embedding_forward(const T* weight, int64_t ldw, const int32_t* ids, int64_t n, int64_t C, T* out, int64_t ldo) {
  if (n <= 0 || C <= 0) return;
  using S = typename DevType<T>::type;
  constexpr int VEC = 16 / sizeof(T);
  const S* w = reinterpret_cast<const S*>(weight);
  S* o = reinterpret_cast<S*>(out);
  const unsigned grid = grid_for(n, kWarpsPerBlock, int64_t{1} << 16);
  if (C % VEC == 0 && ldw % VEC == 0 && ldo % VEC == 0 && aligned16(weight) && aligned16(out))
    gather_rows_kernel<S, VEC><<<grid, kThreads, 0, stream()>>>(w, ldw, ids, n, C, o, ldo);
  else
    gather_rows_kernel<S, 1><<<grid, kThreads, 0, stream()>>>(w, ldw, ids, n, C, o, ldo);
  DISTILL_CHECK_LAUNCH();
}

template <class T>
void embedding_backward_accumulate(T* dw, int64_t V, int64_t C, const int32_t* ids, int64_t n, const T* g) {
  if (n <= 0 || C <= 0) return;
  DISTILL_CHECK(n <= INT_MAX, "embedding_backward: ", n, " ids exceed the sort's limit of 2^31 - 1 per call");
  using S = typename DevType<T>::type;
  constexpr int VEC = 16 / sizeof(T);
  const int num = static_cast<int>(n);

  // Stable sort of (id, position) by id: the ids are in [0, V), so only the low key_bits(V) bits matter.
  DeviceBuffer<uint32_t> keys_in(static_cast<size_t>(n)), keys_out(static_cast<size_t>(n));
  DeviceBuffer<int32_t> pos_in(static_cast<size_t>(n)), pos_out(static_cast<size_t>(n));
  memcpy_device_to_device(keys_in.data(), ids, sizeof(int32_t) * static_cast<size_t>(n));
  iota_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(pos_in.data(), n);
  DISTILL_CHECK_LAUNCH();
  const int end_bit = key_bits(V);
  size_t temp_bytes = 0;
  DISTILL_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in.data(), keys_out.data(),
                                                     pos_in.data(), pos_out.data(), num, 0, end_bit, stream()));
  DeviceBuffer<unsigned char> temp(temp_bytes ? temp_bytes : 1);
  DISTILL_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys_in.data(), keys_out.data(),
                                                     pos_in.data(), pos_out.data(), num, 0, end_bit, stream()));

  S* d = reinterpret_cast<S*>(dw);
  const S* gg = reinterpret_cast<const S*>(g);
  if (C % VEC == 0 && aligned16(dw) && aligned16(g)) {
    scatter_add_sorted_kernel<S, VEC>
        <<<grid_for(n * (C / VEC), kThreads), kThreads, 0, stream()>>>(d, keys_out.data(), pos_out.data(), n, C, gg);
  } else {
    scatter_add_sorted_kernel<S, 1>
        <<<grid_for(n * C, kThreads), kThreads, 0, stream()>>>(d, keys_out.data(), pos_out.data(), n, C, gg);
  }
  DISTILL_CHECK_LAUNCH();
}

#define DISTILL_INST_EMBEDDING(T)                                                                       \
  template void embedding_forward<T>(const T*, int64_t, const int32_t*, int64_t, int64_t, T*, int64_t); \
  template void embedding_backward_accumulate<T>(T*, int64_t, int64_t, const int32_t*, int64_t, const T*);
DISTILL_INST_EMBEDDING(float)
DISTILL_INST_EMBEDDING(bf16)
DISTILL_INST_EMBEDDING(f16)

}  // namespace distill::cuda
