// Shape ops (concat, split, reshape, transpose): cpu:: against ref:: index loops, hand-made cases,
// f64 gradcheck through the Var ops, gradient accumulation, errors.
#include "distill/ops/shape_ops.hpp"

#include <string>
#include <vector>

#include "harness.hpp"

using namespace distill;
using distill::test::check_close;
using distill::test::check_grad;
using distill::test::check_throws_naming;
using distill::test::kTolF32;

namespace {

template <class T>
bool bit_equal(const Tensor<T>& a, const Tensor<T>& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (!(a.flat(i) == b.flat(i))) return false;
  return true;
}

}  // namespace

TEST_CASE("op:concat") {
  struct Case {
    std::vector<Shape> xs;
    int axis;
  };
  const std::vector<Case> cases{{{{2, 3, 4}, {2, 1, 4}, {2, 5, 4}}, 1},
                                {{{2, 3, 4}, {2, 1, 4}, {2, 5, 4}}, -2},
                                {{{1, 3}, {4, 3}}, 0},
                                {{{3, 2}, {3, 1}, {3, 7}}, -1},
                                {{{2, 0, 4}, {2, 3, 4}}, 1},  // an empty piece
                                {{{5, 7}}, 1},                // a single input
                                {{{64, 130}, {64, 70}}, 1}};  // large enough to run on several threads
  uint64_t seed = 500;
  for (const Case& c : cases) {
    std::string tag = "axis " + std::to_string(c.axis) + " of";
    std::vector<Tensor<float>> vals;
    std::vector<Var<float>> vars;
    for (const Shape& s : c.xs) {
      tag += ' ';
      tag += s.str();
      vals.push_back(Tensor<float>::uniform(s, ++seed));
      vars.push_back(Var<float>::param(vals.back()));
    }
    const auto want = ref::concat(vals, c.axis);
    check_close(cpu::concat(vals, c.axis), want, kTolF32, "forward " + tag);

    auto y = concat(vars, c.axis);
    check_close(y.value(), want, kTolF32, "Var forward " + tag);
    const auto g = Tensor<float>::uniform(y.shape(), ++seed);
    y.backward(g);
    const int a = c.axis < 0 ? c.axis + c.xs[0].rank() : c.axis;
    int64_t off = 0;
    for (size_t i = 0; i < vars.size(); ++i) {
      REQUIRE(vars[i].grad().defined());
      check_close(vars[i].grad(), ref::narrow(g, a, off, c.xs[i][a]), kTolF32,
                  "grad of input " + std::to_string(i) + ", " + tag);
      off += c.xs[i][a];
    }
  }

  // Hand-made: [[1, 2], [3, 4]] ++ [[5], [6]] along axis 1.
  check_close(cpu::concat<float>(
                  {Tensor<float>::from_vector({2, 2}, {1, 2, 3, 4}), Tensor<float>::from_vector({2, 1}, {5, 6})}, 1),
              Tensor<double>::from_vector({2, 3}, {1, 2, 5, 3, 4, 6}), kTolF32, "hand-made concat");

  // The same Var twice gets both gradient slices; a frozen input gets nothing.
  {
    const auto av = Tensor<float>::uniform({2, 3}, 520);
    auto a = Var<float>::param(av);
    Var<float> frozen(Tensor<float>::uniform({1, 3}, 521), false);
    auto y = concat({a, frozen, a}, 0);  // [5, 3]; braced list deduces T
    const auto g = Tensor<float>::uniform({5, 3}, 522);
    y.backward(g);
    auto want = Tensor<double>::empty({2, 3});
    for (int64_t i = 0; i < 6; ++i) want.flat(i) = double(g.flat(i)) + double(g.flat(9 + i));
    check_close(a.grad(), want, kTolF32, "input used twice");
    CHECK(!frozen.grad().defined());
  }

  check_grad([](const std::vector<Var<double>>& v) { return concat(v, 1); },
             {Tensor<double>::uniform({2, 1, 3}, 530), Tensor<double>::uniform({2, 2, 3}, 531),
              Tensor<double>::uniform({2, 3, 3}, 532)},
             {true, false, true}, "gradcheck concat axis 1");
  check_grad([](const std::vector<Var<double>>& v) { return concat(v, -1); },
             {Tensor<double>::uniform({3, 2}, 533), Tensor<double>::uniform({3, 1}, 534)}, {},
             "gradcheck concat axis -1");

  Var<float> a(Tensor<float>::zeros({2, 3})), b(Tensor<float>::zeros({3, 3})), c(Tensor<float>::zeros({2, 3, 1}));
  check_throws_naming<ShapeError>([&] { concat<float>({a, b}, 1); }, {"[2, 3]", "[3, 3]"}, "non-axis extent differs");
  check_throws_naming<ShapeError>([&] { concat<float>({a, c}, 0); }, {"[2, 3]", "[2, 3, 1]"}, "rank differs");
  check_throws_naming<ShapeError>([&] { concat<float>({a, a}, 2); }, {"axis 2", "[2, 3]"}, "axis out of range");
  check_throws_naming<Error>([&] { concat<float>({}, 0); }, {"at least one"}, "no inputs");
}

TEST_CASE("op:split") {
  struct Case {
    Shape x;
    std::vector<int64_t> sizes;
    int axis;
  };
  const std::vector<Case> cases{{{4, 9}, {2, 3, 4}, 1},
                                {{5, 2, 3}, {1, 4}, 0},
                                {{3, 4, 5}, {0, 2, 3}, -1},  // an empty piece
                                {{2, 7, 3}, {7}, -2},        // one piece
                                {{80, 300}, {100, 150, 50}, 1}};
  uint64_t seed = 600;
  for (const Case& c : cases) {
    const std::string tag =
        "sizes " + std::to_string(c.sizes.size()) + " along axis " + std::to_string(c.axis) + " of " + c.x.str();
    const auto xv = Tensor<float>::uniform(c.x, ++seed);
    auto x = Var<float>::param(xv);
    const auto parts = split(x, c.sizes, c.axis);
    REQUIRE(parts.size() == c.sizes.size());
    const int a = c.axis < 0 ? c.axis + c.x.rank() : c.axis;
    auto want_grad = Tensor<float>::zeros(c.x);
    int64_t off = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const std::string pt = "piece " + std::to_string(i) + ", " + tag;
      check_close(cpu::narrow(xv, a, off, c.sizes[i]), ref::narrow(xv, a, off, c.sizes[i]), kTolF32, "cpu " + pt);
      check_close(parts[i].value(), ref::narrow(xv, a, off, c.sizes[i]), kTolF32, "Var " + pt);
      // One backward per piece: x's gradient collects every slice.
      const auto g = Tensor<float>::uniform(parts[i].shape(), ++seed);
      if (parts[i].numel() > 0) parts[i].backward(g);
      ref::narrow_backward_accumulate(want_grad, a, off, g);
      off += c.sizes[i];
    }
    check_close(x.grad().defined() ? x.grad() : Tensor<float>::zeros(c.x), want_grad, kTolF32, "grad " + tag);

    // cpu narrow_backward adds into an existing gradient.
    const auto dx0 = Tensor<float>::uniform(c.x, ++seed);
    const auto g = Tensor<float>::uniform(c.x.with(a, c.sizes.back()), ++seed);
    auto got = dx0.clone(), want = dx0.clone();
    cpu::narrow_backward_accumulate(got, a, c.x[a] - c.sizes.back(), g);
    ref::narrow_backward_accumulate(want, a, c.x[a] - c.sizes.back(), g);
    check_close(got, want, kTolF32, "narrow_backward accumulates " + tag);
  }

  // Hand-made: [[1, 2, 3], [4, 5, 6]] -> [[1], [4]] and [[2, 3], [5, 6]].
  {
    const auto parts = split(Var<float>(Tensor<float>::from_vector({2, 3}, {1, 2, 3, 4, 5, 6})), {1, 2}, 1);
    check_close(parts[0].value(), Tensor<double>::from_vector({2, 1}, {1, 4}), kTolF32, "hand-made piece 0");
    check_close(parts[1].value(), Tensor<double>::from_vector({2, 2}, {2, 3, 5, 6}), kTolF32, "hand-made piece 1");
    CHECK(!parts[0].requires_grad());
  }

  check_grad(
      [](const std::vector<Var<double>>& v) {
        return split(v[0], {1, 2}, 1)[1];
      },
      {Tensor<double>::uniform({2, 3, 2}, 610)}, {}, "gradcheck one piece");
  check_grad(
      [](const std::vector<Var<double>>& v) {
        return concat(split(v[0], {2, 1, 1}, 0), 0);
      },
      {Tensor<double>::uniform({4, 3}, 611)}, {}, "gradcheck concat(split(x))");
  // Two pieces meet again in one expression: both backward paths accumulate into x.
  check_grad(
      [](const std::vector<Var<double>>& v) {
        auto p = split(v[0], {2, 2}, -1);
        return Var<double>(p[0] * p[1] + p[0]);
      },
      {Tensor<double>::uniform({3, 4}, 612)}, {}, "gradcheck pieces combined");

  Var<float> x(Tensor<float>::zeros({4, 6}));
  check_throws_naming<ShapeError>([&] { split(x, {2, 3}, 1); }, {"[2, 3]", "[4, 6]"}, "sizes do not sum");
  check_throws_naming<ShapeError>([&] { split(x, {5, -1}, 0); }, {"[5, -1]", "[4, 6]"}, "negative size");
  check_throws_naming<ShapeError>([&] { split(x, {4}, -3); }, {"axis -3", "[4, 6]"}, "axis out of range");
}

TEST_CASE("op:reshape") {
  const auto xv = Tensor<float>::uniform({2, 3, 4}, 700);
  auto x = Var<float>::param(xv);
  auto y = reshape(x, Shape{6, 4});
  CHECK(y.shape() == Shape{6, 4});
  // Row-major order is kept: element k of the flattened data stays element k.
  for (int64_t k = 0; k < xv.numel(); ++k) CHECK(y.value().flat(k) == xv.flat(k));
  CHECK(y.value().data() == x.value().data());  // a view: no copy

  auto z = reshape(x, {-1, 3, 2});
  CHECK(z.shape() == Shape{4, 3, 2});
  CHECK(reshape(x, {24}).shape() == Shape{24});
  CHECK(reshape(x, {4, -1}).shape() == Shape{4, 6});

  // Gradients flow back reshaped, and both uses accumulate.
  const auto gy = Tensor<float>::uniform({6, 4}, 701), gz = Tensor<float>::uniform({4, 3, 2}, 702);
  y.backward(gy);
  z.backward(gz);
  auto want = Tensor<double>::empty({2, 3, 4});
  for (int64_t k = 0; k < want.numel(); ++k) want.flat(k) = double(gy.flat(k)) + double(gz.flat(k));
  check_close(x.grad(), want, kTolF32, "reshape gradients accumulate");

  check_grad(
      [](const std::vector<Var<double>>& v) {
        return reshape(v[0], {3, -1});
      },
      {Tensor<double>::uniform({2, 3, 2}, 710)}, {}, "gradcheck reshape");
  // A reshape inside an expression: the gradient reaches x through both paths.
  check_grad(
      [](const std::vector<Var<double>>& v) {
        return Var<double>(reshape(v[0], Shape{2, 6}) * reshape(v[1], {2, 6}));
      },
      {Tensor<double>::uniform({3, 4}, 711), Tensor<double>::uniform({12}, 712)}, {}, "gradcheck reshape product");

  Var<float> w(Tensor<float>::zeros({2, 3}));
  check_throws_naming<ShapeError>([&] { reshape(w, Shape{4}); }, {"[2, 3]", "[4]"}, "element count differs");
  check_throws_naming<ShapeError>([&] { reshape(w, {4, -1}); }, {"[2, 3]", "[4, -1]"}, "-1 cannot be inferred");
  check_throws_naming<ShapeError>([&] { reshape(w, {-1, -1}); }, {"[2, 3]", "[-1, -1]"}, "two -1 extents");
  check_throws_naming<ShapeError>([&] { reshape(w, {3, -2}); }, {"[2, 3]", "[3, -2]"}, "negative extent");
}

TEST_CASE("op:transpose") {
  struct Case {
    Shape x;
    int a, b;
  };
  const std::vector<Case> cases{{{3, 5}, 0, 1}, {{2, 3, 4}, 0, 2}, {{2, 3, 4}, -1, -2}, {{2, 3, 4, 5}, 1, 3},
                                {{1, 7}, 0, 1}, {{3, 4}, 1, 1},    {{2, 0, 3}, 0, 1},   {{96, 130}, 0, 1}};
  uint64_t seed = 800;
  for (const Case& c : cases) {
    const std::string tag = c.x.str() + " axes " + std::to_string(c.a) + ", " + std::to_string(c.b);
    const auto xv = Tensor<float>::uniform(c.x, ++seed);
    const auto want = ref::transpose(xv, c.a, c.b);
    const auto got = cpu::transpose(xv, c.a, c.b);
    check_close(got, want, kTolF32, "forward " + tag);
    CHECK(got.is_contiguous());
    CHECK(bit_equal(got, want));  // a copy is exact

    auto x = Var<float>::param(xv);
    auto y = transpose(x, c.a, c.b);
    if (y.numel() > 0) CHECK(y.value().data() != x.value().data());  // a copy
    check_close(y.value(), want, kTolF32, "Var forward " + tag);
    if (y.numel() > 0) {
      const auto g = Tensor<float>::uniform(y.shape(), ++seed);
      y.backward(g);
      check_close(x.grad(), ref::transpose(g, c.a, c.b), kTolF32, "grad " + tag);
    }
  }

  check_close(cpu::transpose(Tensor<float>::from_vector({2, 3}, {1, 2, 3, 4, 5, 6}), 0, 1),
              Tensor<double>::from_vector({3, 2}, {1, 4, 2, 5, 3, 6}), kTolF32, "hand-made transpose");
  // A non-contiguous input view is read through its strides.
  const auto base = Tensor<float>::uniform({4, 6}, 820);
  const auto view = base.slice(1, 1, 5);  // [4, 4], strided
  check_close(cpu::transpose(view, 0, 1), ref::transpose(view, 0, 1), kTolF32, "strided input");

  check_grad([](const std::vector<Var<double>>& v) { return transpose(v[0], 0, 2); },
             {Tensor<double>::uniform({2, 3, 2}, 830)}, {}, "gradcheck transpose");
  check_grad([](const std::vector<Var<double>>& v) { return Var<double>(transpose(v[0], -1, -2) * v[0]); },
             {Tensor<double>::uniform({3, 3}, 831)}, {}, "gradcheck x^T * x (element-wise)");

  Var<float> x(Tensor<float>::zeros({2, 3}));
  check_throws_naming<ShapeError>([&] { transpose(x, 0, 2); }, {"axis 2", "[2, 3]"}, "axis out of range");
  check_throws_naming<ShapeError>([&] { transpose(x, -3, 0); }, {"axis -3", "[2, 3]"}, "negative axis out of range");
}
