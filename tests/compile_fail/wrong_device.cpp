// Multiplying a host tensor by a device tensor: operands must live on one device.
// EXPECT: operands of an element-wise expression must live on the same device
#include "distill/autograd.hpp"
using namespace distill;
template <class D>
void f(const Tensor<float, Cpu>& a, const Tensor<float, D>& b) {
  auto e = a * b;  // builds the expression type; evaluation is not needed to reject it
  (void)e;
}
int main() {
#ifdef DISTILL_CONTROL
  f(Tensor<float, Cpu>(), Tensor<float, Cpu>());
#else
  f(Tensor<float, Cpu>(), Tensor<float, Cuda>());
#endif
}
