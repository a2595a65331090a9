// Autograd semantics: a value used twice, accumulation, no-grad, frozen inputs, checkpointing
// equivalence, the opt-in non-finite check, and tape bookkeeping.
#include <cmath>

#include "distill/ops/matmul.hpp"
#include "harness.hpp"

using namespace distill;
using namespace distill::test;
using autograd::checkpoint;
using autograd::NoGradGuard;

namespace {
Tensor<double> ones(const Shape& s) { return Tensor<double>::full(s, 1.0); }
}  // namespace

TEST_CASE("autograd: a value used twice gets the sum of both gradients") {
  auto x = Var<double>::param(Tensor<double>::from_vector({3}, {1, 2, 3}));
  // Two separate recorded ops both reading x, then combined: y = x*x + 3x  -> dy/dx = 2x + 3
  Var<double> a = x * x;
  Var<double> b = 3.0 * x;
  Var<double> y = a + b;
  y.backward(ones({3}));
  CHECK(x.grad().to_vector() == std::vector<double>{5, 7, 9});
  // Inside one fused expression too: d/dx (x * x * x) = 3x^2
  auto z = Var<double>::param(Tensor<double>::from_vector({2}, {2, -1}));
  Var<double> w = z * z * z;
  w.backward(ones({2}));
  CHECK(z.grad().to_vector() == std::vector<double>{12, 3});
}

TEST_CASE("autograd: gradients accumulate across backward calls until zero_grad") {
  auto x = Var<double>::param(Tensor<double>::from_vector({2}, {1, 2}));
  for (int i = 0; i < 3; ++i) {
    Var<double> y = square(x);
    y.backward(ones({2}));
  }
  CHECK(x.grad().to_vector() == std::vector<double>{6, 12});  // 3 * 2x
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  Var<double> y = square(x);
  y.backward(ones({2}));
  CHECK(x.grad().to_vector() == std::vector<double>{2, 4});
}

TEST_CASE("autograd: no-grad scope records nothing") {
  auto x = Var<double>::param(Tensor<double>::from_vector({2}, {1, 2}));
  Var<double> y;
  {
    NoGradGuard ng;
    CHECK_FALSE(autograd::grad_enabled());
    y = silu(x) * x;
    auto m = matmul(Var<double>(Tensor<double>::zeros({2, 2}), true), Var<double>(Tensor<double>::zeros({2, 2}), true));
    CHECK_FALSE(m.requires_grad());
  }
  CHECK(autograd::grad_enabled());
  CHECK_FALSE(y.requires_grad());
  CHECK(y.is_leaf());
  CHECK_THROWS_AS(y.backward(ones({2})), Error);
}

TEST_CASE("autograd: frozen inputs get no gradient, but gradients flow through them") {
  auto w = Var<double>::param(Tensor<double>::uniform({3, 4}, 1));
  auto x = Var<double>::param(Tensor<double>::uniform({2, 3}, 2));
  w.freeze();
  Var<double> h = matmul(x, w);   // frozen weight
  Var<double> y = tanh(h) * 2.0;  // element-wise over it
  y.backward(ones({2, 4}));
  CHECK_FALSE(w.grad().defined());
  REQUIRE(x.grad().defined());
  // The same gradient as when w is trainable.
  auto x2 = Var<double>::param(x.value().clone());
  auto w2 = Var<double>::param(w.value().clone());
  Var<double> y2 = tanh(matmul(x2, w2)) * 2.0;
  y2.backward(ones({2, 4}));
  check_close(x.grad(), x2.grad(), kTolF64, "dx with frozen vs trainable w");
  CHECK(w2.grad().defined());
  CHECK_THROWS_AS(h.freeze(), Error);  // only leaves freeze
}

TEST_CASE("autograd: intermediate gradients are released, retained ones kept") {
  auto x = Var<double>::param(Tensor<double>::from_vector({2}, {1, 2}));
  Var<double> a = square(x);
  Var<double> b = exp(x);
  b.retain_grad();
  Var<double> y = a + b;
  y.backward(ones({2}));
  CHECK_FALSE(a.grad().defined());
  CHECK(b.grad().defined());
  CHECK(b.grad().to_vector() == std::vector<double>{1, 1});
}

TEST_CASE("autograd: backward() without a seed needs a one-element Var") {
  auto x = Var<double>::param(Tensor<double>::from_vector({3}, {1, 2, 3}));
  Var<double> y = square(x);
  CHECK_THROWS_AS(y.backward(), Error);
  auto s = Var<double>::param(Tensor<double>::from_vector({1}, {3}));
  Var<double> t = square(s);
  t.backward();
  CHECK(s.grad().data()[0] == 6);
}

TEST_CASE("autograd: activation checkpointing gives the same gradients as running without it") {
  auto w1 = Tensor<double>::uniform({4, 6}, 1), w2 = Tensor<double>::uniform({6, 4}, 2);
  auto x0 = Tensor<double>::uniform({3, 4}, 3);
  auto block = [](const Var<double>& h, const Var<double>& a, const Var<double>& b) {
    Var<double> u = matmul(h, a);
    Var<double> g = silu(u) * u;
    Var<double> d = matmul(g, b);
    return Var<double>(h + d);  // residual
  };
  auto run = [&](bool ckpt) {
    auto x = Var<double>::param(x0.clone());
    auto a = Var<double>::param(w1.clone()), b = Var<double>::param(w2.clone());
    Var<double> h = x;
    h = Var<double>(tanh(h));  // a non-leaf input to the checkpointed block
    for (int layer = 0; layer < 3; ++layer)
      h = ckpt ? checkpoint([&](const Var<double>& in) { return block(in, a, b); }, h) : block(h, a, b);
    Var<double> y = square(h);
    y.backward(Tensor<double>::uniform(y.shape(), 9));
    return std::vector<Tensor<double>>{x.grad(), a.grad(), b.grad(), h.value()};
  };
  auto plain = run(false), ck = run(true);
  check_close(ck[3], plain[3], kTolF64, "forward output");
  check_close(ck[0], plain[0], kTolF64, "dx");
  check_close(ck[1], plain[1], kTolF64, "dW1 (captured weight)");
  check_close(ck[2], plain[2], kTolF64, "dW2 (captured weight)");
}

TEST_CASE("autograd: the opt-in non-finite check names the op") {
  auto x = Var<double>::param(Tensor<double>::from_vector({2}, {0.0, 1.0}));
  auto run = [&] {
    Var<double> y = log(x);  // d/dx log(x) at 0 is inf
    y.backward(ones({2}));
  };
  run();  // off by default: no throw
  CHECK(std::isinf(x.grad().data()[0]));
  x.zero_grad();
  autograd::set_detect_nonfinite(true);
  try {
    run();
    FAIL("expected the non-finite check to throw");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK(m.find("elementwise") != std::string::npos);
    CHECK(m.find("f64[2]") != std::string::npos);
  }
  x.zero_grad();
  auto w = Var<double>::param(Tensor<double>::from_vector({2, 1}, {1, 1}));
  auto bad = Var<double>(Tensor<double>::from_vector({1, 2}, {INFINITY, 1.0}));
  try {
    Var<double> y = matmul(bad, w);
    y.backward(ones({1, 1}));
    FAIL("expected the non-finite check to throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("'matmul'") != std::string::npos);
  }
  autograd::set_detect_nonfinite(false);
}

TEST_CASE("autograd: backward twice, and backward through a retained node, never send a gradient twice") {
  auto x = Var<double>::param(Tensor<double>::from_vector({1}, {3}));
  Var<double> y = x * 2.0;
  y.backward(ones({1}));
  y.backward(ones({1}));
  CHECK(x.grad().data()[0] == 4);  // 2 + 2
  x.zero_grad();
  Var<double> z = y * 5.0;  // reaches y, which still exists
  y.backward(ones({1}));
  z.backward(ones({1}));
  CHECK(x.grad().data()[0] == 12);  // 2 + 10
  // A retained intermediate reached by two passes: its own .grad accumulates, nothing is re-sent.
  auto w = Var<double>::param(Tensor<double>::from_vector({1}, {0.5}));
  Var<double> b = exp(w);
  b.retain_grad();
  Var<double> y1 = b * 2.0;
  Var<double> y2 = b * 3.0;
  y1.backward(ones({1}));
  y2.backward(ones({1}));
  CHECK(b.grad().data()[0] == 5);
  CHECK(w.grad().data()[0] == doctest::Approx(5 * std::exp(0.5)));
}

TEST_CASE("autograd: a pass that throws leaves no half-propagated gradients behind") {
  auto x = Var<double>::param(Tensor<double>::from_vector({2}, {0.0, 1.0}));
  Var<double> l = log(x);
  Var<double> y = l * 2.0;
  autograd::set_detect_nonfinite(true);
  CHECK_THROWS_AS(y.backward(ones({2})), Error);
  autograd::set_detect_nonfinite(false);
  CHECK_FALSE(l.grad().defined());  // the intermediate's gradient was released
  x.zero_grad();
  y.backward(ones({2}));
  CHECK(x.grad().data()[1] == 2);  // d/dx 2 log x at 1, counted once
}

TEST_CASE("autograd: undefined tensors and Vars are errors, not crashes") {
  auto p = Var<float>::param(Tensor<float>::zeros({4}));
  CHECK_FALSE(p.grad().defined());
  CHECK_THROWS_AS(eval(p.value() - 0.1f * p.grad()), Error);  // an SGD step on a parameter without gradient
  Var<double> u;
  CHECK_THROWS_AS(u.backward(), Error);
  CHECK_THROWS_AS((void)u.shape(), Error);
  CHECK_THROWS_AS(Var<float>(Tensor<float>()), Error);
}

TEST_CASE("autograd: freeing a very long chain does not recurse once per node") {
  auto x = Var<float>::param(Tensor<float>::from_vector({1}, {1.0f}));
  {
    Var<float> y = x;
    for (int i = 0; i < 1000000; ++i) y = Var<float>(y * 1.0f);
    CHECK(y.value().data()[0] == 1.0f);
  }  // the 10^6-node tape is freed here (a recursive release overflowed an 8 MB stack)
  CHECK(x.is_leaf());
}

TEST_CASE("autograd: the fused backward on large f32 inputs (parallel and broadcast paths) vs the formula") {
  const int64_t R = 300, C = 257;
  auto a = Var<float>::param(Tensor<float>::uniform({R, C}, 1, -3, 3));
  auto b = Var<float>::param(Tensor<float>::uniform({R, C}, 2));
  auto bias = Var<float>::param(Tensor<float>::uniform({C}, 3));
  auto g = Tensor<float>::uniform({R, C}, 4);
  Var<float> y = silu(a) * b + tanh(a);  // same shapes: flat, parallel path
  y.backward(g);
  Var<float> z = silu(a) * bias;  // broadcast leaf: serial path with a double accumulator
  z.backward(g);
  auto da = Tensor<double>::zeros({R, C}), db = Tensor<double>::zeros({R, C}), dbias = Tensor<double>::zeros({C});
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < C; ++j) {
      const double av = a.value()(i, j), s = 1 / (1 + std::exp(-av)), silu_v = av * s, dsilu = s * (1 + av * (1 - s));
      const double gv = g(i, j), t = std::tanh(av);
      da(i, j) = gv * (dsilu * b.value()(i, j) + 1 - t * t) + gv * dsilu * bias.value()(j);
      db(i, j) = gv * silu_v;
      dbias(j) += gv * silu_v;
    }
  check_close(a.grad(), da, kTolF32, "da");
  check_close(b.grad(), db, kTolF32, "db");
  check_close(bias.grad(), dbias, kTolF32, "dbias (sum over 300 rows)");
  // The broadcast pass splits rows into chunks merged in order: the same bits on every run.
  const auto first = bias.grad().clone();
  bias.zero_grad();
  Var<float> z2 = silu(a) * bias;
  z2.backward(g);
  CHECK(bias.grad().to_vector() == first.to_vector());
}

TEST_CASE("autograd: broadcast gradients sum without stalling in bf16, f16 and f32") {
  {
    auto bias = Var<bf16>::param(Tensor<bf16>::zeros({4}));
    auto x = Var<bf16>(Tensor<bf16>::zeros({4096, 4}));
    Var<bf16> y = x + bias;
    y.backward(Tensor<bf16>::full({4096, 4}, bf16(1.0f)));
    CHECK(static_cast<float>(bias.grad().data()[0]) == 4096.0f);  // a bf16 running sum stalls at 256
  }
  {
    auto scale = Var<f16>::param(Tensor<f16>::full({4}, f16(1.0f)));
    auto x = Var<f16>(Tensor<f16>::full({4096, 4}, f16(1.0f)));
    Var<f16> y = x * scale;
    y.backward(Tensor<f16>::full({4096, 4}, f16(1.0f)));
    CHECK(static_cast<float>(scale.grad().data()[3]) == 4096.0f);  // an f16 running sum stalls at 2048
  }
  {
    const int64_t n = (int64_t{1} << 24) + (int64_t{1} << 22);
    auto s = Var<float>::param(Tensor<float>::zeros({1}));
    auto x = Var<float>(Tensor<float>::zeros({n}));
    Var<float> y = x + s;
    y.backward(Tensor<float>::full({n}, 1.0f));
    CHECK(s.grad().data()[0] == static_cast<float>(n));  // an f32 running sum stalls at 2^24
  }
}
