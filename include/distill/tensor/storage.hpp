// Owning storage: 64-byte aligned host memory, or device memory from the CUDA backend's caching
// allocator (declared here, defined in kernels/ so this header never needs the CUDA runtime).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

#include "distill/core/device.hpp"
#include "distill/core/error.hpp"
#include "distill/cuda/runtime.hpp"  // device memory entry points (defined in kernels/)

namespace distill {

inline constexpr size_t kHostAlignment = 64;

template <class T, class D>
class Storage {
 public:
  explicit Storage(size_t n) : n_(n) {
    const size_t bytes = n * sizeof(T);
    if (bytes == 0) return;
    if constexpr (std::is_same_v<D, Cpu>) {
      const size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
      p_ = static_cast<T*>(std::aligned_alloc(kHostAlignment, rounded));
      if (!p_) throw std::bad_alloc();
    } else {
      p_ = static_cast<T*>(cuda::device_malloc(bytes));
    }
  }
  ~Storage() {
    if (!p_) return;
    if constexpr (std::is_same_v<D, Cpu>)
      std::free(p_);
    else
      cuda::device_free(p_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace distill
