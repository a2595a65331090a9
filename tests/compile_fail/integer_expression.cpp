// A bad expression: exp() of an integer tensor (token ids) has no meaning and no derivative.
// EXPECT: element-wise expressions need a floating-point dtype
#include "distill/autograd.hpp"
using namespace distill;
int main() {
#ifdef DISTILL_CONTROL
  auto ids = Tensor<float>::zeros({4});
#else
  auto ids = Tensor<int32_t>::zeros({4});
#endif
  auto y = eval(exp(ids));
  (void)y;
}
