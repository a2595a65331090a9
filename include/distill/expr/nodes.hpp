// Expression nodes. `silu(gate) * up` builds a type, not a temporary: leaves (tensors, autograd
// variables, scalars) and generic Unary<Op, E> / Binary<Op, L, R> nodes over the op tags of ops.hpp.
//
// Evaluation protocol (used by eval.hpp for the fused forward and backward passes):
//   bind(out) / bind_flat()  fix how each leaf broadcasts into the output shape
//   seek(idx)                point every leaf at the row with outer multi-index idx
//   value<Unit>(j)           the node's value at column j (Unit: every leaf has stride 1 there)
//   fwd<Unit>(j) -> Cache    the value plus every intermediate value, for the backward pass
//   bwd<Unit, S>(j, cache, g) push the upstream gradient g down to the leaves (accumulate); S: some
//                            leaf is broadcast and sums into a scratch buffer (the serial pass)
// Binary nodes broadcast with NumPy rules; a shape mismatch throws ShapeError naming both shapes.
#pragma once
#include <concepts>
#include <memory>
#include <type_traits>
#include <vector>

#include "distill/core/config.hpp"
#include "distill/expr/ops.hpp"
#include "distill/tensor/tensor.hpp"

namespace distill {

namespace autograd {
struct Node;
}

namespace expr {

template <class E>
concept Expression = requires {
  typename std::remove_cvref_t<E>::is_expression;
};

// Leaf over a strided tensor's values, broadcast into an output shape.
template <class T, class D>
struct StridedLeaf {
  static_assert(FloatingDtype<T>, "element-wise expressions need a floating-point dtype (f32, f64, bf16 or f16)");
  using is_expression = void;
  using value_type = T;
  using device_type = D;
  using C = compute_t<T>;
  using Cache = C;

  const T* base = nullptr;
  Shape shape, strides;
  // Bound state.
  Shape bstride;
  bool bcast = false;
  const T* row = nullptr;
  int64_t step = 1;

  StridedLeaf() = default;
  explicit StridedLeaf(const Tensor<T, D>& t) : base(t.data()), shape(t.shape()), strides(t.strides()) {
    DISTILL_CHECK(t.defined(),
                  "an element-wise expression operand is an undefined Tensor (for example the grad() of a Var that "
                  "received no gradient)");
  }

  Shape out_shape() const { return shape; }
  bool flat_ok(const Shape& out) const {
    if (shape != out) return false;
    int64_t acc = 1;
    for (int i = shape.rank() - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != acc) return false;
      acc *= shape[i];
    }
    return true;
  }
  void bind_flat() {
    row = base;
    step = 1;
    bcast = false;
  }
  void bind(const Shape& out) {
    const int R = out.rank(), r = shape.rank();
    bstride = Shape();
    bcast = false;
    for (int i = 0; i < R; ++i) {
      const int li = i - (R - r);
      int64_t s = 0;
      if (li >= 0 && !(shape[li] == 1 && out[i] != 1)) s = strides[li];
      if (s == 0 && out[i] > 1 && (li < 0 || shape[li] == 1)) bcast = true;
      bstride.push_back(0);
      bstride[i] = s;
    }
    row = base;
    step = R ? bstride[R - 1] : 1;
  }
  void seek(const int64_t* idx, int R) {
    int64_t off = 0;
    for (int i = 0; i + 1 < R; ++i) off += idx[i] * bstride[i];
    row = base + off;
  }
  bool all_unit() const { return step == 1; }
  bool grad_broadcast() const { return false; }
  // True when this operand shares memory with `out` as a different view (a shifted slice, a transpose,
  // a broadcast row): writing out while reading it would read already-written values.
  template <class Out>
  bool overlaps_other_view(const Out& out) const {
    if constexpr (!std::is_same_v<typename Out::value_type, T>) {
      return false;
    } else {
      if (shape.numel() == 0 || out.numel() == 0) return false;
      auto last = [](const Shape& sh, const Shape& st) {
        int64_t off = 0;
        for (int i = 0; i < sh.rank(); ++i) off += (sh[i] - 1) * st[i];
        return off;
      };
      const T *lo = base, *hi = base + last(shape, strides);
      const T *olo = out.data(), *ohi = olo + last(out.shape(), out.strides());
      if (hi < olo || ohi < lo) return false;
      return !(base == olo && shape == out.shape() && strides == out.strides());
    }
  }
  template <bool U>
  DISTILL_FORCEINLINE C value(int64_t j) const {
    return to_compute<T>(U ? row[j] : row[j * step]);
  }
  template <bool U>
  DISTILL_FORCEINLINE Cache fwd(int64_t j) const {
    return value<U>(j);
  }
  DISTILL_FORCEINLINE static C out(Cache c) { return c; }
  template <bool U, bool S = false>
  DISTILL_FORCEINLINE void bwd(int64_t, Cache, C) const {}
  bool any_requires_grad() const { return false; }
  void collect_nodes(std::vector<std::shared_ptr<autograd::Node>>&) const {}
  void prepare_grads(const Shape&) {}
  void finish_grads() {}
  void fork_scratch() {}
  template <class Other>
  void merge_scratch(const Other&) {}
};

// A constant tensor (no gradient).
template <class T, class D>
struct TensorLeaf : StridedLeaf<T, D> {
  using StridedLeaf<T, D>::StridedLeaf;
  Tensor<T, D> keep;  // keeps the storage alive while the expression (or a tape node) holds it
  explicit TensorLeaf(const Tensor<T, D>& t) : StridedLeaf<T, D>(t), keep(t) {}
};

// A scalar constant in the compute type of the expression it joins.
template <class T, class D>
struct Scalar {
  using is_expression = void;
  using value_type = T;
  using device_type = D;
  using C = compute_t<T>;
  using Cache = C;
  C v;
  explicit Scalar(C x) : v(x) {}
  Shape out_shape() const { return Shape(); }
  bool flat_ok(const Shape&) const { return true; }
  void bind_flat() {}
  void bind(const Shape&) {}
  void seek(const int64_t*, int) {}
  bool all_unit() const { return true; }
  bool grad_broadcast() const { return false; }
  template <class Out>
  bool overlaps_other_view(const Out&) const {
    return false;
  }
  template <bool U>
  DISTILL_FORCEINLINE C value(int64_t) const {
    return v;
  }
  template <bool U>
  DISTILL_FORCEINLINE Cache fwd(int64_t) const {
    return v;
  }
  DISTILL_FORCEINLINE static C out(Cache c) { return c; }
  template <bool U, bool S = false>
  DISTILL_FORCEINLINE void bwd(int64_t, Cache, C) const {}
  bool any_requires_grad() const { return false; }
  void collect_nodes(std::vector<std::shared_ptr<autograd::Node>>&) const {}
  void prepare_grads(const Shape&) {}
  void finish_grads() {}
  void fork_scratch() {}
  template <class Other>
  void merge_scratch(const Other&) {}
};

template <class Op, class E>
struct Unary {
  using is_expression = void;
  using value_type = typename E::value_type;
  using device_type = typename E::device_type;
  using C = compute_t<value_type>;
  struct Cache {
    typename E::Cache c;
    C y;
  };
  E e;
  Shape shape;
  explicit Unary(E x) : e(std::move(x)), shape(e.out_shape()) {}

  Shape out_shape() const { return shape; }
  bool flat_ok(const Shape& out) const { return e.flat_ok(out); }
  void bind_flat() { e.bind_flat(); }
  void bind(const Shape& out) { e.bind(out); }
  void seek(const int64_t* idx, int R) { e.seek(idx, R); }
  bool all_unit() const { return e.all_unit(); }
  template <class Out>
  bool overlaps_other_view(const Out& out) const {
    return e.overlaps_other_view(out);
  }
  bool grad_broadcast() const { return e.grad_broadcast(); }
  template <bool U>
  DISTILL_FORCEINLINE C value(int64_t j) const {
    return Op::f(e.template value<U>(j));
  }
  template <bool U>
  DISTILL_FORCEINLINE Cache fwd(int64_t j) const {
    auto c = e.template fwd<U>(j);
    return Cache{c, Op::f(E::out(c))};
  }
  DISTILL_FORCEINLINE static C out(const Cache& c) { return c.y; }
  template <bool U, bool S = false>
  DISTILL_FORCEINLINE void bwd(int64_t j, const Cache& c, C g) const {
    e.template bwd<U, S>(j, c.c, g * Op::df(E::out(c.c), c.y));
  }
  bool any_requires_grad() const { return e.any_requires_grad(); }
  void collect_nodes(std::vector<std::shared_ptr<autograd::Node>>& v) const { e.collect_nodes(v); }
  void prepare_grads(const Shape& out) { e.prepare_grads(out); }
  void finish_grads() { e.finish_grads(); }
  void fork_scratch() { e.fork_scratch(); }
  void merge_scratch(const Unary& o) { e.merge_scratch(o.e); }
};

template <class Op, class L, class R>
struct Binary {
  static_assert(std::is_same_v<typename L::value_type, typename R::value_type>,
                "operands of an element-wise expression must have the same dtype; convert one with .cast<T>() first");
  static_assert(std::is_same_v<typename L::device_type, typename R::device_type>,
                "operands of an element-wise expression must live on the same device; copy one with .to<Device>() "
                "first");
  using is_expression = void;
  using value_type = typename L::value_type;
  using device_type = typename L::device_type;
  using C = compute_t<value_type>;
  struct Cache {
    typename L::Cache a;
    typename R::Cache b;
    C y;
  };
  L l;
  R r;
  Shape shape;
  Binary(L a, R b)
      : l(std::move(a)), r(std::move(b)), shape(broadcast_shapes(l.out_shape(), r.out_shape(), Op::name)) {}

  Shape out_shape() const { return shape; }
  bool flat_ok(const Shape& out) const { return l.flat_ok(out) && r.flat_ok(out); }
  void bind_flat() {
    l.bind_flat();
    r.bind_flat();
  }
  void bind(const Shape& out) {
    l.bind(out);
    r.bind(out);
  }
  void seek(const int64_t* idx, int Rk) {
    l.seek(idx, Rk);
    r.seek(idx, Rk);
  }
  bool all_unit() const { return l.all_unit() && r.all_unit(); }
  template <class Out>
  bool overlaps_other_view(const Out& out) const {
    return l.overlaps_other_view(out) || r.overlaps_other_view(out);
  }
  bool grad_broadcast() const { return l.grad_broadcast() || r.grad_broadcast(); }
  template <bool U>
  DISTILL_FORCEINLINE C value(int64_t j) const {
    return Op::f(l.template value<U>(j), r.template value<U>(j));
  }
  template <bool U>
  DISTILL_FORCEINLINE Cache fwd(int64_t j) const {
    auto a = l.template fwd<U>(j);
    auto b = r.template fwd<U>(j);
    return Cache{a, b, Op::f(L::out(a), R::out(b))};
  }
  DISTILL_FORCEINLINE static C out(const Cache& c) { return c.y; }
  template <bool U, bool S = false>
  DISTILL_FORCEINLINE void bwd(int64_t j, const Cache& c, C g) const {
    const C a = L::out(c.a), b = R::out(c.b);
    l.template bwd<U, S>(j, c.a, g * Op::da(a, b, c.y));
    r.template bwd<U, S>(j, c.b, g * Op::db(a, b, c.y));
  }
  bool any_requires_grad() const { return l.any_requires_grad() || r.any_requires_grad(); }
  void collect_nodes(std::vector<std::shared_ptr<autograd::Node>>& v) const {
    l.collect_nodes(v);
    r.collect_nodes(v);
  }
  void prepare_grads(const Shape& out) {
    l.prepare_grads(out);
    r.prepare_grads(out);
  }
  void finish_grads() {
    l.finish_grads();
    r.finish_grads();
  }
  void fork_scratch() {
    l.fork_scratch();
    r.fork_scratch();
  }
  void merge_scratch(const Binary& o) {
    l.merge_scratch(o.l);
    r.merge_scratch(o.r);
  }
};

// --- turning operands into nodes ------------------------------------------------------------------
// leaf_of<X>::make(x) gives the node for an operand. Tensors are constant leaves; autograd::Var adds
// its own specialization; expression nodes are themselves.
template <class X>
struct leaf_of;

template <Expression E>
struct leaf_of<E> {
  static E make(const E& e) { return e; }
};
template <class T, class D>
struct leaf_of<Tensor<T, D>> {
  static TensorLeaf<T, D> make(const Tensor<T, D>& t) { return TensorLeaf<T, D>(t); }
};

template <class X>
concept Operand = requires(const std::remove_cvref_t<X>& x) {
  leaf_of<std::remove_cvref_t<X>>::make(x);
};

template <class X>
using node_t = decltype(leaf_of<std::remove_cvref_t<X>>::make(std::declval<const std::remove_cvref_t<X>&>()));

template <class X>
auto make_node(const X& x) {
  return leaf_of<std::remove_cvref_t<X>>::make(x);
}

template <class S>
concept ScalarOperand = std::is_arithmetic_v<std::remove_cvref_t<S>>;

}  // namespace expr

// --- the user-facing builders ---------------------------------------------------------------------
#define DISTILL_EXPR_UNARY(fn, Tag)                                   \
  template <expr::Operand X>                                          \
  auto fn(const X& x) {                                               \
    return expr::Unary<op::Tag, expr::node_t<X>>(expr::make_node(x)); \
  }
DISTILL_EXPR_UNARY(exp, Exp)
DISTILL_EXPR_UNARY(log, Log)
DISTILL_EXPR_UNARY(tanh, Tanh)
DISTILL_EXPR_UNARY(sigmoid, Sigmoid)
DISTILL_EXPR_UNARY(silu, Silu)
DISTILL_EXPR_UNARY(gelu_tanh, GeluTanh)
DISTILL_EXPR_UNARY(rsqrt, Rsqrt)
DISTILL_EXPR_UNARY(square, Square)
DISTILL_EXPR_UNARY(operator-, Neg)
#undef DISTILL_EXPR_UNARY

#define DISTILL_EXPR_BINARY(fn, Tag)                                                                        \
  template <expr::Operand A, expr::Operand B>                                                               \
  auto fn(const A& a, const B& b) {                                                                         \
    return expr::Binary<op::Tag, expr::node_t<A>, expr::node_t<B>>(expr::make_node(a), expr::make_node(b)); \
  }                                                                                                         \
  template <expr::Operand A, expr::ScalarOperand S>                                                         \
  auto fn(const A& a, S s) {                                                                                \
    using N = expr::node_t<A>;                                                                              \
    using Sc = expr::Scalar<typename N::value_type, typename N::device_type>;                               \
    return expr::Binary<op::Tag, N, Sc>(expr::make_node(a), Sc(static_cast<typename Sc::C>(s)));            \
  }                                                                                                         \
  template <expr::ScalarOperand S, expr::Operand B>                                                         \
  auto fn(S s, const B& b) {                                                                                \
    using N = expr::node_t<B>;                                                                              \
    using Sc = expr::Scalar<typename N::value_type, typename N::device_type>;                               \
    return expr::Binary<op::Tag, Sc, N>(Sc(static_cast<typename Sc::C>(s)), expr::make_node(b));            \
  }
DISTILL_EXPR_BINARY(operator+, Add)
DISTILL_EXPR_BINARY(operator-, Sub)
DISTILL_EXPR_BINARY(operator*, Mul)
DISTILL_EXPR_BINARY(operator/, Div)
#undef DISTILL_EXPR_BINARY

}  // namespace distill
