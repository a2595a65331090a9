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
