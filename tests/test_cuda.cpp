// The CUDA probe: with the kernels built, report the GPU or skip, saying why. Without a usable GPU
// (CI: "driver version is insufficient") every CUDA case is skipped, never failed.
#include <doctest/doctest.h>

#include <cstdio>

#ifdef DISTILL_WITH_CUDA
#include "distill/cuda/runtime.hpp"
#include "distill/tensor/tensor.hpp"
#endif

TEST_CASE("cuda: probe, and a host<->device round trip when a GPU is present") {
#ifndef DISTILL_WITH_CUDA
  MESSAGE("CUDA cases skipped: built without DISTILL_WITH_CUDA (no nvcc)");
#else
  using namespace distill;
  const int n = cuda::device_count();
  MESSAGE("CUDA: " << cuda::probe_message());
  if (n == 0) {
    MESSAGE("CUDA cases skipped: no usable GPU");
    return;
  }
  auto h = Tensor<float>::uniform({1000}, 1);
  auto d = h.to<Cuda>();
  auto z = Tensor<float, Cuda>::zeros({1000});
  z.copy_from(d);
  auto back = z.to<Cpu>();
  CHECK(back.to_vector() == h.to_vector());
#endif
}

#ifdef DISTILL_WITH_CUDA
#include "distill/cuda/check.hpp"
#include "harness.hpp"

// These need no GPU: the macros format the runtime's and cuBLAS's errors; without a device, allocating
// device memory is a clear distill::Error rather than a crash.
TEST_CASE("cuda: error macros name the statement, the error and file:line") {
  using distill::test::check_throws_naming;
  check_throws_naming<distill::Error>([] { DISTILL_CHECK_CUDA(cudaErrorInvalidValue); },
                                      {"cudaErrorInvalidValue", "test_cuda.cpp:", "failed"}, "DISTILL_CHECK_CUDA");
  check_throws_naming<distill::Error>([] { DISTILL_CHECK_CUBLAS(CUBLAS_STATUS_INVALID_VALUE); },
                                      {"CUBLAS_STATUS_INVALID_VALUE", "test_cuda.cpp:"}, "DISTILL_CHECK_CUBLAS");
  if (distill::cuda::device_count() == 0) {
    check_throws_naming<distill::Error>([] { (void)distill::Tensor<float, distill::Cuda>::empty({16}); },
                                        {"failed", "cuda"}, "device allocation without a GPU");
  }
}
#endif
