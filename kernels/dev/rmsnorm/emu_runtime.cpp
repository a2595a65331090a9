// The runtime behind include/distill/cuda/runtime.hpp and elementwise.hpp, emulated on host memory, so that
// host code written against Tensor<T, Cuda> (the ops' Cuda branches, the test_cuda_* cases) runs on the CPU
// with the emulated kernels (emu.hpp). "Device" memory is plain heap memory (filled with 0xFF on
// allocation, like uninitialized device memory); copies are memcpy; one device, one stream.
// Link it with emu_rmsnorm_kernels.cpp / emu_rope_kernels.cpp (see README.md in this folder).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "distill/core/dtype.hpp"
#include "distill/cuda/elementwise.hpp"
#include "distill/cuda/runtime.hpp"

namespace distill::cuda {

namespace {
MemoryStats g_stats;
}

int device_count() noexcept { return 1; }
std::string probe_message() { return "1 GPU(s); device 0: CPU emulator (distill kernels/dev/rmsnorm/emu.hpp)"; }
int compute_capability() { return 90; }
void set_device(int) {}
int current_device() { return 0; }
void* current_stream() { return nullptr; }
void set_current_stream(void*) {}
void synchronize() {}

void* device_malloc(size_t bytes) {
  void* p = std::malloc(bytes ? bytes : 1);
  std::memset(p, 0xFF, bytes ? bytes : 1);
  ++g_stats.num_alloc;
  return p;
}
void device_free(void* p) noexcept { std::free(p); }
MemoryStats memory_stats(int) { return g_stats; }
void reset_peak_memory(int) {}
void empty_cache() {}

void memcpy_host_to_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void memcpy_device_to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void memcpy_device_to_device(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }
void memset_device_zero(void* dst, size_t bytes) { std::memset(dst, 0, bytes); }

EventTimer::EventTimer() = default;
EventTimer::~EventTimer() = default;
void EventTimer::start() {}
float EventTimer::stop_ms() { return 0.f; }

template <class T>
void add_into(T* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = from_compute<T>(to_compute<T>(dst[i]) + to_compute<T>(src[i]));
}

template <class T>
void strided_copy(T* dst, const Shape& dst_strides, const T* src, const Shape& src_strides, const Shape& shape) {
  const int64_t n = shape.numel();
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, doff = 0, soff = 0;
    for (int d = shape.rank() - 1; d >= 0; --d) {
      const int64_t c = rem % shape[d];
      rem /= shape[d];
      doff += c * dst_strides[d];
      soff += c * src_strides[d];
    }
    dst[doff] = src[soff];
  }
}

template <class T, class U>
void cast(U* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (is_floating_dtype_v<T> && is_floating_dtype_v<U>)
      dst[i] = from_compute<U>(static_cast<compute_t<U>>(to_compute<T>(src[i])));
    else
      dst[i] = static_cast<U>(src[i]);
  }
}

template <class T>
void fill(T* dst, T v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = v;
}

#define EMU_FLOATING(X) X(float) X(double) X(bf16) X(f16)
#define EMU_STORABLE(X) EMU_FLOATING(X) X(int32_t) X(int64_t) X(uint8_t)
#define EMU_ADD(T) template void add_into<T>(T*, const T*, int64_t);
EMU_FLOATING(EMU_ADD)
#define EMU_COPY(T)                                                                      \
  template void strided_copy<T>(T*, const Shape&, const T*, const Shape&, const Shape&); \
  template void fill<T>(T*, T, int64_t);
EMU_STORABLE(EMU_COPY)
#define EMU_CAST_TO(U, T) template void cast<T, U>(U*, const T*, int64_t);
#define EMU_CAST_FROM(T) EMU_CAST_TO(float, T) EMU_CAST_TO(double, T) EMU_CAST_TO(bf16, T) EMU_CAST_TO(f16, T)
EMU_FLOATING(EMU_CAST_FROM)

}  // namespace distill::cuda
