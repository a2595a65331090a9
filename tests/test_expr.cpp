// Element-wise expressions: one case per op (fused evaluation vs ref:: loops, the op's forward rule vs
// the C++ standard library's math, gradients vs finite differences), broadcasting, fusion and bf16.
#include <cmath>

#include "distill/expr/ref.hpp"
#include "harness.hpp"

using namespace distill;
using namespace distill::test;

namespace {
template <class Op, class Build>
void unary_case(Build build, double lo, double hi, double (*oracle)(double)) {
  // The op's f32 forward rule (math::exp / math::tanh inside) against an independent double formula.
  for (double x = lo; x <= hi; x += (hi - lo) / 97) {
    INFO(Op::name << "(" << x << ")");
    const float xf = static_cast<float>(x);
    CHECK(Op::f(xf) == doctest::Approx(oracle(xf)).epsilon(2e-6).scale(0.05));  // rel 2e-6, abs 1e-7
  }
  // Fused evaluation (f32, contiguous and strided views) vs ref:: loops.
  auto x = Tensor<float>::uniform({3, 37}, 11, lo, hi);
  check_close(eval(build(x)), ref::unary<Op>(x), kTolF32, std::string(Op::name) + " f32");
  auto xt = x.transpose(0, 1);  // non-contiguous input -> row-wise path
  check_close(eval(build(xt)), ref::unary<Op>(xt), kTolF32, std::string(Op::name) + " f32 strided");
  auto xb = x.cast<bf16>();
  check_close(eval(build(xb)), ref::unary<Op>(xb), kTolBf16, std::string(Op::name) + " bf16");
  // Derivative rule vs central differences.
  check_grad([&](const std::vector<Var<double>>& v) { return Var<double>(build(v[0])); },
             {Tensor<double>::uniform({2, 5}, 5, lo, hi)}, {}, Op::name);
}
}  // namespace

TEST_CASE("op:exp") {
  unary_case<op::Exp>([](const auto& x) { return exp(x); }, -3, 3, [](double x) { return std::exp(x); });
}
TEST_CASE("op:log") {
  unary_case<op::Log>([](const auto& x) { return log(x); }, 0.1, 4, [](double x) { return std::log(x); });
}
TEST_CASE("op:tanh") {
  unary_case<op::Tanh>([](const auto& x) { return tanh(x); }, -3, 3, [](double x) { return std::tanh(x); });
}
TEST_CASE("op:sigmoid") {
  unary_case<op::Sigmoid>([](const auto& x) { return sigmoid(x); }, -6, 6,
                          [](double x) { return 1 / (1 + std::exp(-x)); });
}
TEST_CASE("op:silu") {
  unary_case<op::Silu>([](const auto& x) { return silu(x); }, -6, 6, [](double x) { return x / (1 + std::exp(-x)); });
}
TEST_CASE("op:gelu_tanh") {
  // PyTorch gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  unary_case<op::GeluTanh>(
      [](const auto& x) { return gelu_tanh(x); }, -5, 5,
      [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); });
}
TEST_CASE("op:rsqrt") {
  unary_case<op::Rsqrt>([](const auto& x) { return rsqrt(x); }, 0.2, 5, [](double x) { return 1 / std::sqrt(x); });
}
TEST_CASE("op:square") {
  unary_case<op::Square>([](const auto& x) { return square(x); }, -3, 3, [](double x) { return x * x; });
}
TEST_CASE("op:neg") {
  unary_case<op::Neg>([](const auto& x) { return -x; }, -3, 3, [](double x) { return -x; });
}

namespace {
template <class Op, class Build>
void binary_case(Build build, double lo, double hi) {
  // Same shape, broadcast of a row, of a column, and of a lower-rank operand; both directions.
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{4, 33}, {4, 33}}, {{4, 33}, {33}}, {{4, 1}, {4, 33}}, {{2, 3, 5}, {3, 1}}, {{5}, {2, 1, 5}}};
  int seed = 1;
  for (const auto& [sa, sb] : shapes) {
    auto a = Tensor<float>::uniform(sa, seed++, lo, hi), b = Tensor<float>::uniform(sb, seed++, lo, hi);
    check_close(eval(build(a, b)), ref::binary<Op>(a, b), kTolF32, std::string(Op::name) + " " + sa.str() + sb.str());
    check_grad([&](const std::vector<Var<double>>& v) { return Var<double>(build(v[0], v[1])); },
               {Tensor<double>::uniform(sa, seed, lo, hi), Tensor<double>::uniform(sb, seed + 1, lo, hi)}, {},
               std::string(Op::name) + " grad " + sa.str() + sb.str());
  }
  auto a = Tensor<float>::zeros({2, 3}), b = Tensor<float>::zeros({4, 3});
  CHECK_THROWS_AS(eval(build(a, b)), ShapeError);
}
}  // namespace

TEST_CASE("op:add") {
  binary_case<op::Add>([](const auto& a, const auto& b) { return a + b; }, -2, 2);
}
TEST_CASE("op:sub") {
  binary_case<op::Sub>([](const auto& a, const auto& b) { return a - b; }, -2, 2);
}
TEST_CASE("op:mul") {
  binary_case<op::Mul>([](const auto& a, const auto& b) { return a * b; }, -2, 2);
}
TEST_CASE("op:div") {
  binary_case<op::Div>([](const auto& a, const auto& b) { return a / b; }, 0.5, 2);
}

TEST_CASE("expr: a fused chain equals the op-by-op reference") {
  auto a = Tensor<float>::uniform({1000}, 1), b = Tensor<float>::uniform({1000}, 2);
  // silu(a) * b + 0.5 * tanh(a) - b / (1 + square(a))
  auto fused = eval(silu(a) * b + 0.5f * tanh(a) - b / (1.0f + square(a)));
  auto t1 = ref::binary<op::Mul>(ref::unary<op::Silu>(a), b);
  auto half = Tensor<float>::full({1}, 0.5f), one = Tensor<float>::full({1}, 1.0f);
  auto t2 = ref::binary<op::Mul>(half, ref::unary<op::Tanh>(a));
  auto t3 = ref::binary<op::Div>(b, ref::binary<op::Add>(one, ref::unary<op::Square>(a)));
  check_close(fused, ref::binary<op::Sub>(ref::binary<op::Add>(t1, t2), t3), kTolF32, "5-op chain");
}

TEST_CASE("expr: the fused backward of a chain with a leaf used three times") {
  check_grad(
      [](const std::vector<Var<double>>& v) {
        return Var<double>(silu(v[0]) * v[1] + 0.5 * tanh(v[0]) - v[1] / (1.0 + square(v[0])));
      },
      {Tensor<double>::uniform({3, 4}, 1), Tensor<double>::uniform({4}, 2)}, {}, "chain with broadcast leaf");
}

TEST_CASE("expr: large broadcast evaluation runs in parallel and matches the reference") {
  auto a = Tensor<float>::uniform({64, 4096}, 3), bias = Tensor<float>::uniform({4096}, 4);
  check_close(eval(gelu_tanh(a + bias)), ref::unary<op::GeluTanh>(ref::binary<op::Add>(a, bias)), kTolF32,
              "gelu(a + bias)");
}

TEST_CASE("math: the vectorizable exp and tanh against the standard library") {
  double worst_exp = 0, worst_tanh = 0;
  for (float x = -103.0f; x < 88.72f; x += 0.01173f) {  // down into the subnormal results
    const double e = std::exp(static_cast<double>(x));
    // Relative for normal results; absolute (one subnormal step) below FLT_MIN.
    worst_exp = std::max(worst_exp, std::abs(math::exp(x) - e) / std::max(e, 1.1754943508222875e-38 * 1e6));
  }
  for (float x = -12.0f; x < 12.0f; x += 0.000731f) {
    const double t = std::tanh(static_cast<double>(x));
    worst_tanh = std::max(worst_tanh, std::abs(math::tanh(x) - t) / std::max(std::abs(t), 1e-30));
  }
  INFO("max relative error: exp " << worst_exp << ", tanh " << worst_tanh);
  CHECK(worst_exp < 4e-7);  // a few float ulp
  CHECK(worst_tanh < 2e-6);
  CHECK(std::isinf(math::exp(100.0f)));
  CHECK(std::isinf(math::exp(88.73f)));  // exp(88.7228) is FLT_MAX
  CHECK(std::isfinite(math::exp(88.72f)));
  CHECK(math::exp(-200.0f) == 0.0f);
  CHECK(std::isnan(math::exp(NAN)));
  CHECK(math::exp(0.0f) == 1.0f);
  CHECK(math::tanh(30.0f) == 1.0f);
  CHECK(math::tanh(-30.0f) == -1.0f);
}

TEST_CASE("expr: assign rejects a destination that overlaps an operand as another view") {
  auto x = Tensor<float>::full({4, 3}, 1.0f);
  CHECK_THROWS_AS(expr::assign(x, x + x.slice(0, 0, 1)), Error);  // x -= x[0] style
  CHECK_THROWS_AS(expr::assign(x.slice(0, 1, 3), x.slice(0, 0, 2) * 2.0f), Error);
  expr::assign(x, x * 2.0f + 1.0f);  // the destination itself as an operand is fine
  CHECK(x.to_vector() == std::vector<float>(12, 3.0f));
  auto y = Tensor<float>::full({4, 3}, 1.0f);
  expr::assign(y, y + x.slice(0, 0, 1));  // another tensor's rows: fine
  CHECK(y.to_vector() == std::vector<float>(12, 4.0f));
}
