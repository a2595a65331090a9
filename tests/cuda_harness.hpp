// The CUDA side of the backend-consistency harness: device results are copied to the host and
// compared against ref:: (or against the CPU backend's gradients) with the same named tolerances.
// Only test_cuda_* executables include it; their main (cuda_test_main.cpp) skips without a GPU.
#pragma once
#include "distill/cuda/runtime.hpp"
#include "harness.hpp"

namespace distill::test {

template <class T, class D>
Tensor<T> to_host(const Tensor<T, D>& t) {
  return t.template to<Cpu>();
}
template <class T>
Tensor<T, Cuda> to_dev(const Tensor<T>& t) {
  return t.template to<Cuda>();
}

// Bitwise equality of device results (copied to the host).
template <class T>
bool same_bits(const Tensor<T, Cuda>& a, const Tensor<T, Cuda>& b) {
  return same_bits(to_host(a), to_host(b));
}

// GPU results against a host reference: same tolerance table as the CPU cases.
template <class T, class U>
void check_close(const Tensor<T, Cuda>& got, const Tensor<U>& ref, Tol tol, const std::string& what) {
  check_close(to_host(got), ref, tol, what + " [cuda]");
}

}  // namespace distill::test
