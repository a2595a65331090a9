// autograd_demo: a tiny SwiGLU network learns y = sin(3 x0) * x1 with plain SGD, using nothing but
// Distill's tensors, fused expressions and tape. Prints the loss as it falls; exits 1 if it did not
// fall at least 20x (so it doubles as an end-to-end test of forward, backward and the update).
#include <cmath>
#include <cstdio>
#include <distill/distill.hpp>

using namespace distill;

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 3000;
  const int64_t n = 256, hidden = 32;
  // Data: x = (x0, x1, 1) with x0, x1 ~ U(-1, 1) (the constant column plays the biases), y = sin(3 x0) * x1.
  auto x = Tensor<float>::uniform({n, 3}, 1);
  for (int64_t i = 0; i < n; ++i) x(i, 2) = 1.0f;
  auto y = Tensor<float>::empty({n, 1});
  for (int64_t i = 0; i < n; ++i) y(i, 0) = std::sin(3 * x(i, 0)) * x(i, 1);

  auto w_gate = Var<float>::param(Tensor<float>::uniform({3, hidden}, 2, -1, 1));
  auto w_up = Var<float>::param(Tensor<float>::uniform({3, hidden}, 3, -1, 1));
  auto w_down = Var<float>::param(Tensor<float>::uniform({hidden, 1}, 4, -0.3, 0.3));
  const Var<float> xs(x), ys(y);
  const float lr = 0.2f;

  float first = 0, last = 0;
  for (int step = 0; step <= steps; ++step) {
    Var<float> h = silu(matmul(xs, w_gate)) * matmul(xs, w_up);  // [n, hidden], one fused pass
    Var<float> pred = matmul(h, w_down);                         // [n, 1]
    Var<float> err = square(pred - ys);
    Var<float> loss = sum_all(err) * (1.0f / n);  // mean squared error
    loss.backward();
    for (const auto& p : {w_gate, w_up, w_down}) {  // SGD: p -= lr * grad, one fused pass each
      expr::assign(p.value(), p.value() - lr * p.grad());
      p.zero_grad();
    }
    last = loss.value().data()[0];
    if (step == 0) first = last;
    if (step % 200 == 0) std::printf("step %4d  loss %.5f\n", step, last);
  }
  std::printf("loss %.5f -> %.5f (%.1fx lower)\n", first, last, first / last);
  return last * 20 < first ? 0 : 1;
}
