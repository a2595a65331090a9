// ref:: for element-wise ops: plain loops in double with explicit broadcasting index arithmetic,
// one op at a time (no fusion). The fused evaluator of eval.hpp is tested against these.
#pragma once
#include "distill/expr/nodes.hpp"

namespace distill::ref {

template <class Op, FloatingDtype T>
Tensor<T> unary(const Tensor<T>& x) {
  auto y = Tensor<T>::empty(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i)
    y.data()[i] = static_cast<T>(Op::f(static_cast<double>(to_compute<T>(x.flat(i)))));
  return y;
}

template <class Op, FloatingDtype T>
Tensor<T> binary(const Tensor<T>& a, const Tensor<T>& b) {
  const Shape out = broadcast_shapes(a.shape(), b.shape(), Op::name);
  auto y = Tensor<T>::empty(out);
  const int R = out.rank();
  for (int64_t i = 0; i < out.numel(); ++i) {
    // Unravel i, then clamp broadcast dims to 0 for each operand.
    int64_t rem = i, ia = 0, ib = 0, sa = 1, sb = 1;
    for (int d = R - 1; d >= 0; --d) {
      const int64_t k = rem % out[d];
      rem /= out[d];
      const int da = d - (R - a.rank()), db = d - (R - b.rank());
      if (da >= 0) {
        ia += (a.shape()[da] == 1 ? 0 : k) * sa;
        sa *= a.shape()[da];
      }
      if (db >= 0) {
        ib += (b.shape()[db] == 1 ? 0 : k) * sb;
        sb *= b.shape()[db];
      }
    }
    y.data()[i] = static_cast<T>(
        Op::f(static_cast<double>(to_compute<T>(a.flat(ia))), static_cast<double>(to_compute<T>(b.flat(ib)))));
  }
  return y;
}

}  // namespace distill::ref
