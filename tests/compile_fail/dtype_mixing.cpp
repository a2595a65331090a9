// Adding an f32 tensor to a bf16 tensor in one expression: dtypes never mix silently.
// EXPECT: operands of an element-wise expression must have the same dtype
#include "distill/autograd.hpp"
using namespace distill;
int main() {
  auto a = Tensor<float>::zeros({4});
#ifdef DISTILL_CONTROL
  auto b = Tensor<bf16>::zeros({4}).cast<float>();
#else
  auto b = Tensor<bf16>::zeros({4});
#endif
  auto y = eval(a + b);
  (void)y;
}
