// Evaluating an element-wise expression on Cuda in a host-compiled (g++) translation unit: the kernel is
// generated from the expression type, so it needs nvcc.
// EXPECT: compiles it into its own CUDA kernel
#include "distill/autograd.hpp"
using namespace distill;
template <class D>
void f(const Tensor<float, D>& a) {
  auto y = eval(silu(a) * a);
  (void)y;
}
int main() {
#ifdef DISTILL_CONTROL
  f(Tensor<float, Cpu>());
#else
  f(Tensor<float, Cuda>());
#endif
}
