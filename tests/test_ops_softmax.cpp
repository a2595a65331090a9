// softmax / log_softmax over the last axis: cpu:: against ref:: loops at f32 (and bf16), gradients against f64
// finite differences, stability on huge logits, hand-checkable values, shape errors.
#include "distill/ops/softmax.hpp"

#include <limits>

#include "harness.hpp"

using namespace distill;
using namespace distill::test;

namespace {

const std::vector<Shape> kShapes = {{1}, {7}, {3, 5}, {4, 33}, {2, 3, 17}, {2, 1, 1}, {3, 1031}};

Tensor<float> rnd(const Shape& s, uint64_t seed, double scale = 3.0) {
  return Tensor<float>::uniform(s, seed, -scale, scale);
}

std::string at(const char* what, const Shape& s) { return std::string(what) + " " + s.str(); }

// A Var-level composition the gradient check can differentiate through more than one op:
// weights the outputs by the input itself so the upstream gradient is not constant.
template <class F>
auto through(F op) {
  return [op](auto& v) { return op(v[0]); };
}

}  // namespace

TEST_CASE("op:softmax") {
  for (size_t i = 0; i < kShapes.size(); ++i) {
    const Shape& s = kShapes[i];
    const auto x = rnd(s, 10 + i);
    const auto y = cpu::softmax(x);
    const auto yr = ref::softmax(x);
    check_close(y, yr, kTolF32, at("softmax forward", s));

    const auto g = rnd(s, 100 + i, 1.0);
    const auto dx0 = rnd(s, 200 + i, 1.0);
    const auto dx = dx0.clone();
    cpu::softmax_backward(yr, g, dx);  // accumulates
    check_close(dx, plus(dx0, ref::softmax_backward(yr, g)), kTolF32, at("softmax backward (accumulating)", s));
    check_close(cpu::softmax_backward(yr, g), ref::softmax_backward(yr, g), kTolF32, at("softmax backward", s));
  }
  SUBCASE("hand values: uniform rows, rows sum to 1") {
    const auto y = cpu::softmax(Tensor<float>::zeros({2, 4}));
    for (int64_t i = 0; i < 8; ++i) CHECK(y.flat(i) == doctest::Approx(0.25).epsilon(1e-7));
    const auto z = cpu::softmax(Tensor<float>::from_vector({2}, {0.0f, std::log(3.0f)}));
    CHECK(z.flat(0) == doctest::Approx(0.25).epsilon(1e-6));
    CHECK(z.flat(1) == doctest::Approx(0.75).epsilon(1e-6));
  }
  SUBCASE("stable for huge logits; -inf entries get 0; an all -inf row is NaN (as torch)") {
    const float inf = std::numeric_limits<float>::infinity();
    const auto x = Tensor<float>::from_vector({3, 3}, {1000, 1000, -inf, 88, 89, 90, -inf, -inf, -inf});
    const auto y = cpu::softmax(x);
    CHECK(y.flat(0) == doctest::Approx(0.5));
    CHECK(y.flat(1) == doctest::Approx(0.5));
    CHECK(y.flat(2) == 0.0f);
    check_close(y.slice(0, 0, 2), ref::softmax(x.slice(0, 0, 2)), kTolF32, "softmax huge logits vs ref");
    CHECK(std::isnan(y.flat(6)));
  }
  SUBCASE("bf16 computes in f32") {
    const auto x = rnd({5, 300}, 3).cast<bf16>();
    check_close(cpu::softmax(x), ref::softmax(x), kTolBf16, "softmax bf16");
  }
  SUBCASE("strided views are read correctly") {
    const auto x = rnd({6, 9}, 4).transpose(0, 1);
    check_close(cpu::softmax(x), ref::softmax(x.clone()), kTolF32, "softmax on a transposed view");
  }
  SUBCASE("Var op: gradient equals ref backward; frozen input records nothing") {
    const auto x = rnd({3, 4, 5}, 5);
    Var<float> v = Var<float>::param(x);
    Var<float> y = softmax(v);
    check_close(y.value(), ref::softmax(x), kTolF32, "Var softmax value");
    const auto g = rnd({3, 4, 5}, 6, 1.0);
    y.backward(g);
    check_close(v.grad(), ref::softmax_backward(ref::softmax(x), g), kTolF32, "Var softmax grad");
    CHECK_FALSE(softmax(Var<float>(x)).requires_grad());
  }
  SUBCASE("gradcheck f64") {
    for (const Shape& s : {Shape{5}, Shape{3, 4}, Shape{2, 3, 5}})
      check_grad(through([](const auto& x) { return softmax(x); }), {Tensor<double>::uniform(s, 7, -2, 2)}, {},
                 at("softmax", s));
    // Two ops deep: sum_last(softmax(x) * x) so the upstream gradient of softmax is not a constant.
    check_grad([](auto& v) { return sum_last(Var<double>(softmax(v[0]) * v[0])); },
               {Tensor<double>::uniform({3, 6}, 8, -2, 2)}, {}, "sum_last(softmax(x) * x)");
  }
  SUBCASE("errors") {
    const std::string m = shape_error_of([] { cpu::softmax(Tensor<float>::full(Shape(), 1.0f)); });
    CHECK(contains(m, "softmax"));
    const std::string b = shape_error_of([] {
      cpu::softmax_backward(Tensor<float>::zeros({3, 4}), Tensor<float>::zeros({4, 3}));
    });
    CHECK(contains(b, "[3, 4]"));
    CHECK(contains(b, "[4, 3]"));
  }
}

TEST_CASE("op:log_softmax") {
  for (size_t i = 0; i < kShapes.size(); ++i) {
    const Shape& s = kShapes[i];
    const auto x = rnd(s, 20 + i);
    const auto yr = ref::log_softmax(x);
    check_close(cpu::log_softmax(x), yr, kTolF32, at("log_softmax forward", s));

    const auto g = rnd(s, 120 + i, 1.0);
    const auto dx0 = rnd(s, 220 + i, 1.0);
    const auto dx = dx0.clone();
    cpu::log_softmax_backward(yr, g, dx);
    check_close(dx, plus(dx0, ref::log_softmax_backward(yr, g)), kTolF32, at("log_softmax backward (accumulating)", s));
    check_close(cpu::log_softmax_backward(yr, g), ref::log_softmax_backward(yr, g), kTolF32,
                at("log_softmax backward", s));
  }
  SUBCASE("hand values: zeros over K classes give -log(K); huge logits stay finite") {
    const auto y = cpu::log_softmax(Tensor<float>::zeros({3, 8}));
    for (int64_t i = 0; i < y.numel(); ++i) CHECK(y.flat(i) == doctest::Approx(-std::log(8.0)).epsilon(1e-7));
    const auto z = cpu::log_softmax(Tensor<float>::from_vector({3}, {1e4f, 1e4f, 0.0f}));
    CHECK(z.flat(0) == doctest::Approx(-std::log(2.0)).epsilon(1e-6));
    CHECK(z.flat(2) == doctest::Approx(-1e4 - std::log(2.0)).epsilon(1e-6));
    const float inf = std::numeric_limits<float>::infinity();
    const auto w = cpu::log_softmax(Tensor<float>::from_vector({2}, {-inf, 0.0f}));
    CHECK(w.flat(0) == -inf);
    CHECK(w.flat(1) == 0.0f);
  }
  SUBCASE("bf16 computes in f32") {
    const auto x = rnd({5, 300}, 3).cast<bf16>();
    check_close(cpu::log_softmax(x), ref::log_softmax(x), kTolBf16, "log_softmax bf16");
  }
  SUBCASE("Var op: gradient equals ref backward") {
    const auto x = rnd({2, 3, 7}, 5);
    Var<float> v = Var<float>::param(x);
    Var<float> y = log_softmax(v);
    const auto g = rnd({2, 3, 7}, 6, 1.0);
    y.backward(g);
    check_close(v.grad(), ref::log_softmax_backward(ref::log_softmax(x), g), kTolF32, "Var log_softmax grad");
  }
  SUBCASE("gradcheck f64") {
    for (const Shape& s : {Shape{5}, Shape{3, 4}, Shape{2, 3, 5}})
      check_grad(through([](const auto& x) { return log_softmax(x); }), {Tensor<double>::uniform(s, 9, -2, 2)}, {},
                 at("log_softmax", s));
  }
  SUBCASE("errors") {
    const std::string m = shape_error_of([] { cpu::log_softmax(Tensor<float>::full(Shape(), 1.0f)); });
    CHECK(contains(m, "log_softmax"));
    const std::string b = shape_error_of([] {
      auto dx = Tensor<float>::zeros({2, 5});
      cpu::log_softmax_backward(Tensor<float>::zeros({2, 5}), Tensor<float>::zeros({2, 5}),
                                Tensor<float>::zeros({5, 2}));
    });
    CHECK(contains(b, "[2, 5]"));
    CHECK(contains(b, "[5, 2]"));
  }
}
