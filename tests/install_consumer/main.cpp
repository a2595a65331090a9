// Uses the installed headers: one fused expression with its derived gradient.
#include <distill/distill.hpp>

#include <cmath>
#include <cstdio>

int main() {
  using namespace distill;
  auto x = Var<float>::param(Tensor<float>::from_vector({3}, {-1.f, 0.f, 2.f}));
  Var<float> y = silu(x) * x;
  y.backward(Tensor<float>::full({3}, 1.f));
  // d/dx (x * silu(x)) = silu(x) + x * silu'(x); at x = 0 it is 0.
  const float g0 = x.grad().data()[1];
  std::printf("consumer: grad at 0 = %g\n", g0);
  return std::abs(g0) < 1e-6f ? 0 : 1;
}
