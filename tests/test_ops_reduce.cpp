// Last-axis reductions and sum_all: cpu:: against ref:: loops at f32 (and bf16), gradients against f64
// finite differences, hand-checkable values, shape errors.
#include "distill/ops/reduce.hpp"

#include <limits>

#include "harness.hpp"

using namespace distill;
using namespace distill::test;

namespace {

// Shapes covering rank 1..3, odd extents, a last axis of 1 and one longer than a vector register.
const std::vector<Shape> kShapes = {{1}, {7}, {3, 5}, {4, 33}, {2, 3, 17}, {2, 1, 1}, {3, 1031}};

Tensor<float> rnd(const Shape& s, uint64_t seed) { return Tensor<float>::uniform(s, seed, -2.0, 2.0); }

std::string at(const char* what, const Shape& s) { return std::string(what) + " " + s.str(); }

}  // namespace

TEST_CASE("op:sum_last") {
  for (size_t i = 0; i < kShapes.size(); ++i) {
    const Shape& s = kShapes[i];
    const auto x = rnd(s, 10 + i);
    const auto y = cpu::sum_last(x);
    CHECK(y.shape() == s.without(-1));
    check_close(y, ref::sum_last(x), kTolF32, at("sum_last forward", s));

    const auto g = rnd(s.without(-1), 100 + i);
    const auto dx0 = rnd(s, 200 + i);
    const auto dx = dx0.clone();
    cpu::sum_last_backward(g, dx);  // accumulates
    check_close(dx, plus(dx0, ref::sum_last_backward(g, s)), kTolF32, at("sum_last backward (accumulating)", s));
    check_close(cpu::sum_last_backward(g, s), ref::sum_last_backward(g, s), kTolF32, at("sum_last backward", s));
  }
  SUBCASE("bf16 computes in f32") {
    const auto x = rnd({5, 300}, 3).cast<bf16>();
    check_close(cpu::sum_last(x), ref::sum_last(x), kTolBf16, "sum_last bf16");
  }
  SUBCASE("hand values; rank 1 gives a rank-0 one-element tensor") {
    const auto y = cpu::sum_last(Tensor<float>::from_vector({4}, {1, 2, 3, 4}));
    CHECK(y.rank() == 0);
    CHECK(y.numel() == 1);
    CHECK(y.flat(0) == 10.0f);
    const auto z = cpu::sum_last(Tensor<float>::from_vector({2, 3}, {1, 2, 3, -1, -2, -3.5f}));
    CHECK(z.flat(0) == 6.0f);
    CHECK(z.flat(1) == -6.5f);
  }
  SUBCASE("strided views are read correctly") {
    const auto x = rnd({6, 9}, 4).transpose(0, 1);  // [9, 6] view
    check_close(cpu::sum_last(x), ref::sum_last(x.clone()), kTolF32, "sum_last on a transposed view");
  }
  SUBCASE("empty last axis sums to 0") {
    const auto y = cpu::sum_last(Tensor<float>::zeros({3, 0}));
    REQUIRE(y.shape() == Shape{3});
    CHECK(y.flat(2) == 0.0f);
  }
  SUBCASE("Var op: value, gradient, frozen input") {
    const auto x = rnd({3, 4, 5}, 5);
    Var<float> v = Var<float>::param(x);
    Var<float> y = sum_last(v);
    check_close(y.value(), ref::sum_last(x), kTolF32, "Var sum_last value");
    const auto g = rnd({3, 4}, 6);
    y.backward(g);
    check_close(v.grad(), ref::sum_last_backward(g, x.shape()), kTolF32, "Var sum_last grad");
    CHECK_FALSE(sum_last(Var<float>(x)).requires_grad());
  }
  SUBCASE("gradcheck f64") {
    for (const Shape& s : {Shape{5}, Shape{3, 4}, Shape{2, 3, 5}})
      check_grad([](auto& v) { return sum_last(v[0]); }, {Tensor<double>::uniform(s, 7)}, {}, at("sum_last", s));
  }
  SUBCASE("errors") {
    const std::string m = shape_error_of([] { cpu::sum_last(Tensor<float>::full(Shape(), 1.0f)); });
    CHECK(m.find("sum_last") != std::string::npos);
    const std::string b = shape_error_of([] {
      auto dx = Tensor<float>::zeros({3, 4});
      cpu::sum_last_backward(Tensor<float>::zeros({4}), dx);
    });
    CHECK(b.find("[4]") != std::string::npos);
    CHECK(b.find("[3]") != std::string::npos);
  }
}

TEST_CASE("op:mean_last") {
  for (size_t i = 0; i < kShapes.size(); ++i) {
    const Shape& s = kShapes[i];
    const auto x = rnd(s, 20 + i);
    check_close(cpu::mean_last(x), ref::mean_last(x), kTolF32, at("mean_last forward", s));
    const auto g = rnd(s.without(-1), 120 + i);
    const auto dx0 = rnd(s, 220 + i);
    const auto dx = dx0.clone();
    cpu::mean_last_backward(g, dx);
    check_close(dx, plus(dx0, ref::mean_last_backward(g, s)), kTolF32, at("mean_last backward (accumulating)", s));
    check_close(cpu::mean_last_backward(g, s), ref::mean_last_backward(g, s), kTolF32, at("mean_last backward", s));
  }
  SUBCASE("hand values") {
    const auto y = cpu::mean_last(Tensor<float>::from_vector({2, 4}, {1, 2, 3, 4, -4, 0, 0, 0}));
    CHECK(y.flat(0) == 2.5f);
    CHECK(y.flat(1) == -1.0f);
    CHECK(std::isnan(cpu::mean_last(Tensor<float>::zeros({2, 0})).flat(0)));  // 0/0, as torch
  }
  SUBCASE("bf16") {
    const auto x = rnd({4, 129}, 8).cast<bf16>();
    check_close(cpu::mean_last(x), ref::mean_last(x), kTolBf16, "mean_last bf16");
  }
  SUBCASE("gradcheck f64") {
    for (const Shape& s : {Shape{6}, Shape{3, 4}, Shape{2, 3, 5}})
      check_grad([](auto& v) { return mean_last(v[0]); }, {Tensor<double>::uniform(s, 9)}, {}, at("mean_last", s));
  }
  SUBCASE("errors") {
    const std::string m = shape_error_of([] { cpu::mean_last(Tensor<float>::full(Shape(), 1.0f)); });
    CHECK(m.find("mean_last") != std::string::npos);
  }
}

TEST_CASE("op:max_last") {
  for (size_t i = 0; i < kShapes.size(); ++i) {
    const Shape& s = kShapes[i];
    const auto x = rnd(s, 30 + i);
    const auto m = cpu::max_last_with_indices(x);
    check_close(m.values, ref::max_last(x), kTolF32, at("max_last forward", s));
    const auto g = rnd(s.without(-1), 130 + i);
    const auto dx0 = rnd(s, 230 + i);
    const auto dx = dx0.clone();
    cpu::max_last_backward(m.indices, g, dx);
    check_close(dx, plus(dx0, ref::max_last_backward(x, g)), kTolF32, at("max_last backward (accumulating)", s));
  }
  SUBCASE("ties: the gradient goes to the first argmax only") {
    const auto x = Tensor<float>::from_vector({2, 4}, {1, 3, 3, 2, 5, 5, 5, 5});
    Var<float> v = Var<float>::param(x);
    Var<float> y = max_last(v);
    CHECK(y.value().flat(0) == 3.0f);
    CHECK(y.value().flat(1) == 5.0f);
    y.backward(Tensor<float>::from_vector({2}, {10, 20}));
    const std::vector<float> want = {0, 10, 0, 0, 20, 0, 0, 0};
    CHECK(v.grad().to_vector() == want);
  }
  SUBCASE("NaN propagates; -inf is an ordinary value") {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const auto x = Tensor<float>::from_vector({3, 3}, {1, nan, 2, -inf, -inf, -5, -inf, -inf, -inf});
    const auto m = cpu::max_last_with_indices(x);
    CHECK(std::isnan(m.values.flat(0)));
    CHECK(m.indices.flat(0) == 1);
    CHECK(m.values.flat(1) == -5.0f);
    CHECK(m.values.flat(2) == -inf);
    CHECK(m.indices.flat(2) == 0);
    check_close(m.values, ref::max_last(x), kTolF32, "max_last with NaN/-inf vs ref");
  }
  SUBCASE("bf16") {
    const auto x = rnd({4, 77}, 10).cast<bf16>();
    check_close(cpu::max_last(x), ref::max_last(x), kTolBf16, "max_last bf16");
  }
  SUBCASE("gradcheck f64") {
    for (const Shape& s : {Shape{6}, Shape{3, 4}, Shape{2, 3, 5}})
      check_grad([](auto& v) { return max_last(v[0]); }, {Tensor<double>::uniform(s, 11)}, {}, at("max_last", s));
  }
  SUBCASE("errors") {
    const std::string m = shape_error_of([] { cpu::max_last(Tensor<float>::full(Shape(), 1.0f)); });
    CHECK(m.find("max_last") != std::string::npos);
    CHECK_THROWS_AS(cpu::max_last(Tensor<float>::zeros({2, 0})), Error);
    CHECK_NOTHROW(cpu::max_last(Tensor<float>::zeros({0, 3})));
  }
}

TEST_CASE("op:sum_all") {
  for (const Shape& s : {Shape{1}, Shape{7}, Shape{3, 5}, Shape{2, 3, 17}, Shape{5, 4099}}) {
    const auto x = rnd(s, 40);
    const auto y = cpu::sum_all(x);
    CHECK(y.rank() == 0);
    check_close(y, ref::sum_all(x), kTolF32, at("sum_all forward", s));
    const auto g = Tensor<float>::full(Shape(), 0.75f);
    const auto dx0 = rnd(s, 41);
    const auto dx = dx0.clone();
    cpu::sum_all_backward(g, dx);
    auto want = Tensor<float>::full(s, 0.75f);
    check_close(dx, plus(dx0, want), kTolF32, at("sum_all backward (accumulating)", s));
  }
  SUBCASE("hand value and empty input") {
    CHECK(cpu::sum_all(Tensor<float>::from_vector({2, 2}, {1, 2, 3, 4.5f})).flat(0) == 10.5f);
    CHECK(cpu::sum_all(Tensor<float>::zeros({0, 3})).flat(0) == 0.0f);
  }
  SUBCASE("Var op composes into a scalar loss") {
    const auto x = rnd({3, 4}, 42);
    Var<float> v = Var<float>::param(x);
    Var<float> loss = sum_all(sum_last(v));
    loss.backward();
    check_close(v.grad(), Tensor<float>::full({3, 4}, 1.0f), kTolF32, "d sum_all(sum_last(x)) / dx = 1");
  }
  SUBCASE("gradcheck f64") {
    check_grad([](auto& v) { return sum_all(v[0]); }, {Tensor<double>::uniform({2, 3, 4}, 12)}, {}, "sum_all");
  }
}
