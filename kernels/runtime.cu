// CUDA runtime glue behind include/distill/tensor/storage.hpp and include/distill/cuda/runtime.hpp:
// device allocation, copies, and a GPU probe that treats any runtime error as "no GPU".
// (The caching allocator of the CUDA backend replaces the plain cudaMalloc here.)
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "distill/cuda/runtime.hpp"

namespace distill::cuda {

namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error ("driver version is insufficient", no device, ...)
    return 0;
  }
  return n;
}

std::string probe_message() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable GPU: ") + cudaGetErrorString(e);
  }
  if (n == 0) return "no usable GPU: no CUDA devices";
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  return std::to_string(n) + " GPU(s); device 0: " + p.name + " (sm_" + std::to_string(p.major) +
         std::to_string(p.minor) + ")";
}

void* device_malloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}
void device_free(void* p) noexcept {
  if (cudaFree(p) != cudaSuccess) std::fprintf(stderr, "distill: cudaFree failed\n");
}
void memcpy_host_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
void memcpy_device_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
void memcpy_device_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy D2D");
}
void memset_device_zero(void* dst, size_t bytes) { check(cudaMemset(dst, 0, bytes), "cudaMemset"); }

}  // namespace distill::cuda
