// CUDA-side helpers for translation units that include the CUDA runtime (kernels/*.cu, CUDA tests):
// DISTILL_CHECK_CUDA / DISTILL_CHECK_CUBLAS (throw distill::Error naming file:line, the statement and
// the runtime's error), the current stream as a cudaStream_t, the per-device cuBLASLt handle and its
// workspace, and a RAII device buffer from the caching allocator.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "distill/core/error.hpp"
#include "distill/cuda/runtime.hpp"

namespace distill::cuda {

namespace detail {
[[noreturn]] inline void throw_cuda(cudaError_t e, const char* stmt, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + stmt + " failed: " + cudaGetErrorName(e) + " (" +
              cudaGetErrorString(e) + ")");
}
inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE (a shape, stride or alignment it rejects)";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED (no algorithm for this layout/dtype)";
    default:
      return "CUBLAS_STATUS_?";
  }
}
[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* stmt, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + stmt + " failed: " + cublas_status_name(s));
}
}  // namespace detail

inline cudaStream_t stream() { return static_cast<cudaStream_t>(current_stream()); }

// The cuBLASLt handle of the current device (created on first use) and a 32 MiB workspace for it
// (from the caching allocator, kept for the life of the process).
cublasLtHandle_t cublaslt_handle();
void* cublaslt_workspace(size_t* bytes);

// Grid size for n items at `per_block` items per block, capped (grid-stride loops cover the rest).
inline unsigned grid_for(int64_t n, int per_block, int64_t cap = int64_t{1} << 20) {
  int64_t g = (n + per_block - 1) / per_block;
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g);
}

// Scratch device memory for one op, returned to the caching allocator when it goes out of scope.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n), p_(n ? static_cast<T*>(device_malloc(n * sizeof(T))) : nullptr) {}
  ~DeviceBuffer() {
    if (p_) device_free(p_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : n_(o.n_), p_(o.p_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) device_free(p_);
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace distill::cuda

#define DISTILL_CHECK_CUDA(stmt)                                                                               \
  do {                                                                                                         \
    cudaError_t distill_e_ = (stmt);                                                                           \
    if (distill_e_ != cudaSuccess) ::distill::cuda::detail::throw_cuda(distill_e_, #stmt, __FILE__, __LINE__); \
  } while (0)

#define DISTILL_CHECK_CUBLAS(stmt)                                                  \
  do {                                                                              \
    cublasStatus_t distill_s_ = (stmt);                                             \
    if (distill_s_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::distill::cuda::detail::throw_cublas(distill_s_, #stmt, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad configuration shows up here, named after the launch site.
#define DISTILL_CHECK_LAUNCH() DISTILL_CHECK_CUDA(cudaGetLastError())
