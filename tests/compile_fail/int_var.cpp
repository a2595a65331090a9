// A Var (a differentiable value) of integers: gradients need a floating-point dtype.
// EXPECT: Var holds a floating-point dtype
#include "distill/autograd.hpp"
using namespace distill;
int main() {
#ifdef DISTILL_CONTROL
  Var<float> v(Tensor<float>::zeros({2}), true);
#else
  Var<int32_t> v(Tensor<int32_t>::zeros({2}), true);
#endif
  (void)v;
}
