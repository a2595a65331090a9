// The README's ten-line autograd example, verbatim, so the README cannot drift from the API; its
// gradients are then checked against finite differences.
#include <distill/distill.hpp>

#include "harness.hpp"

TEST_CASE("readme: the ten-line autograd example runs and its gradients are right") {
  using namespace distill;
  // --- begin README example ---
  auto x = Var<float>::param(Tensor<float>::uniform({8, 16}, /*seed=*/1));  // trainable leaves
  auto w = Var<float>::param(Tensor<float>::uniform({16, 32}, 2));
  auto v = Var<float>::param(Tensor<float>::uniform({16, 32}, 3));
  Var<float> h = silu(matmul(x, w)) * matmul(x, v);  // SwiGLU: the element-wise part is ONE fused pass
  Var<float> loss = mean_last(sum_last(square(h)));  // reductions are recorded ops
  loss.backward();                                   // the fused backward is derived at compile time
  // --- end README example ---
  CHECK(w.grad().shape() == Shape{16, 32});
  CHECK(x.grad().shape() == Shape{8, 16});
  // The same graph in f64 on smaller shapes, against central differences.
  test::check_grad(
      [](const std::vector<Var<double>>& p) {
        Var<double> hh = silu(matmul(p[0], p[1])) * matmul(p[0], p[2]);
        return mean_last(sum_last(square(hh)));
      },
      {Tensor<double>::uniform({3, 4}, 1), Tensor<double>::uniform({4, 5}, 2), Tensor<double>::uniform({4, 5}, 3)});
}
