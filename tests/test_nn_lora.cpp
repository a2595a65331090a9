// nn/: the layers QLoRA is built from, each against ref:: loops and f64 finite differences.
//   cast        value rounding and the gradient passing through
//   dropout     p = 0 is the identity, masks are reproducible per seed, keep rate ~ 1 - p, gradient = mask
//   nf4_linear  fast path == ref:: (dequantize + ref::matmul); backward to x == dy · W; gradcheck in f64
//   LoRA        delta == x Aᵀ Bᵀ · scaling; gradients of A, B and x against explicit f64 products;
//               targets matched as PEFT matches (suffix after a dot, exact, all-linear)
//   Linear      4-bit base + adapter == nf4_linear + delta
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "distill/nn/linear.hpp"
#include "harness.hpp"

using namespace distill;

namespace {

Tensor<float> rand_f32(const Shape& s, uint64_t seed, double scale = 1.0) {
  return Tensor<float>::uniform(s, seed, -scale, scale);
}

double max_rel(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0, big = 1e-30;
  for (int64_t i = 0; i < a.numel(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(a.data()[i]) - b.data()[i]));
    big = std::max(big, std::abs(static_cast<double>(b.data()[i])));
  }
  return m / big;
}

std::shared_ptr<const quant::Quant4> make_q4(int64_t out, int64_t in, uint64_t seed, bool dq = true,
                                             quant::QuantType t = quant::QuantType::Nf4) {
  const Tensor<float> w = rand_f32({out, in}, seed, 0.5);
  return std::make_shared<const quant::Quant4>(quant::quantize_4bit(w.data(), {out, in}, t, 64, dq, io::StDtype::F32));
}

}  // namespace

TEST_CASE("op:cast rounds the value and passes the gradient back") {
  const auto x = Tensor<float>::from_vector({3}, {1.0f, 1.00390625f, -3.3f});
  Var<float> v = Var<float>::param(x);
  Var<bf16> y = nn::cast<bf16>(v);
  CHECK(static_cast<float>(y.value().data()[1]) == 1.0f);  // 1 + 2^-8 rounds to even
  y.backward(Tensor<bf16>::full({3}, bf16(2.0f)));
  for (int i = 0; i < 3; ++i) CHECK(v.grad().data()[i] == 2.0f);
  // Through f32 and back to f64: the gradient of 3·x is 3 (finite differences cannot see through f32 rounding).
  Var<double> d = Var<double>::param(Tensor<double>::uniform({5}, 3));
  Var<float> mid = nn::cast<float>(d) * 3.0f;
  nn::cast<double>(mid).backward(Tensor<double>::full({5}, 1.0));
  for (int i = 0; i < 5; ++i) CHECK(d.grad().data()[i] == 3.0);
}

TEST_CASE("op:dropout identity at p=0, reproducible masks, keep rate, gradient = mask") {
  const auto x = Tensor<float>::full({200, 50}, 1.0f);
  Var<float> v = Var<float>::param(x);
  CHECK(nn::dropout(v, 0.0, 7).node() == v.node());
  Var<float> a = nn::dropout(v, 0.25, 7), b = nn::dropout(v, 0.25, 7), c = nn::dropout(v, 0.25, 8);
  int64_t kept = 0, same_c = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float ai = a.value().data()[i];
    CHECK((ai == 0.0f || std::abs(ai - 1.0f / 0.75f) < 1e-6f));
    CHECK(ai == b.value().data()[i]);
    kept += ai != 0.0f;
    same_c += ai == c.value().data()[i];
  }
  const double rate = static_cast<double>(kept) / static_cast<double>(x.numel());
  CHECK(rate == doctest::Approx(0.75).epsilon(0.03));
  CHECK(same_c < x.numel());  // another seed, another mask
  a.backward(Tensor<float>::full(x.shape(), 1.0f));
  for (int64_t i = 0; i < x.numel(); ++i) CHECK(v.grad().data()[i] == a.value().data()[i]);
  CHECK_THROWS_WITH_AS(nn::dropout(v, 1.0, 1), doctest::Contains("[0, 1)"), Error);
}

TEST_CASE("op:nf4_linear fast path == ref::, backward to x == dy · W, gradcheck") {
  for (bool dq : {true, false})
    for (auto qt : {quant::QuantType::Nf4, quant::QuantType::Fp4}) {
      const auto q = make_q4(37, 70, 11, dq, qt);  // 2590 elements: a partial last block
      const Tensor<float> x = rand_f32({2, 3, 70}, 12);
      const Tensor<float> want = nn::ref::nf4_linear(x, *q);
      Var<float> xv = Var<float>::param(x);
      Var<float> y = nn::nf4_linear(xv, q);
      CHECK(max_rel(y.value(), want) < test::kTolF32.rtol);
      const Tensor<float> dy = rand_f32(y.shape(), 13);
      y.backward(dy);
      Tensor<float> w = Tensor<float>::empty({37, 70});
      quant::ref::dequantize_4bit(*q, w.data());
      const Tensor<float> dx = distill::ref::matmul(dy.reshape({6, 37}), w, false, false).reshape(x.shape());
      CHECK(max_rel(xv.grad(), dx) < test::kTolF32.rtol);
    }
  const auto q = make_q4(5, 64, 21);
  const auto rep = autograd::gradcheck([&](const std::vector<Var<double>>& in) { return nn::nf4_linear(in[0], q); },
                                       {Tensor<double>::uniform({3, 64}, 22)});
  CHECK_MESSAGE(rep.ok, rep.first_failure);
  CHECK_THROWS_WITH_AS(nn::nf4_linear(Var<float>(rand_f32({2, 63}, 1)), q), doctest::Contains("in_features 64"),
                       ShapeError);
}

TEST_CASE("op:nf4_linear rounds the dequantized weight through the checkpoint's bf16 as bitsandbytes does") {
  const Tensor<float> w = rand_f32({8, 64}, 31, 0.5);
  auto q = std::make_shared<quant::Quant4>(
      quant::quantize_4bit(w.data(), {8, 64}, quant::QuantType::Nf4, 64, true, io::StDtype::BF16));
  Tensor<float> deq = Tensor<float>::empty({8, 64});
  quant::dequantize_4bit(*q, deq.data());
  const Tensor<float> as_bf16 = deq.cast<bf16>().cast<float>();
  const Tensor<float> eye = [] {
    auto e = Tensor<float>::zeros({64, 64});
    for (int i = 0; i < 64; ++i) e(i, i) = 1.0f;
    return e;
  }();
  // x = I: y = Wᵀ exactly.
  const Tensor<float> y = nn::nf4_linear(Var<float>(eye), std::shared_ptr<const quant::Quant4>(q)).value();
  for (int64_t o = 0; o < 8; ++o)
    for (int64_t i = 0; i < 64; ++i) CHECK(y(i, o) == as_bf16(o, i));
}

TEST_CASE("op:lora delta == x Aᵀ Bᵀ scaling, gradients against f64 products") {
  nn::LoraConfig c;
  c.r = 3;
  c.alpha = 6;
  auto ad = nn::LoraAdapter<Cpu>::make(10, 7, c, 5);
  CHECK(ad.scaling == 2.0);
  // PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
  for (int64_t i = 0; i < ad.A.numel(); ++i) CHECK(std::abs(ad.A.value().data()[i]) <= 1.0 / std::sqrt(10.0));
  for (int64_t i = 0; i < ad.B.numel(); ++i) CHECK(ad.B.value().data()[i] == 0.0f);
  ad.B = Var<float>::param(rand_f32({7, 3}, 6));
  const Tensor<float> x = rand_f32({4, 10}, 7);
  Var<float> xv = Var<float>::param(x);
  Var<float> y = ad.delta(xv, false, 0);
  const Tensor<double> X = x.cast<double>(), A = ad.A.value().cast<double>(), B = ad.B.value().cast<double>();
  const Tensor<double> H = distill::ref::matmul(X, A, false, true);
  const Tensor<double> Y = distill::ref::matmul(H, B, false, true);
  for (int64_t i = 0; i < Y.numel(); ++i)
    CHECK(y.value().data()[i] == doctest::Approx(2.0 * Y.data()[i]).epsilon(1e-5));
  const Tensor<float> dy = rand_f32(y.shape(), 8);
  y.backward(dy);
  const Tensor<double> G = dy.cast<double>();
  // dB = s·Gᵀ H, dA = s·(G B)ᵀ X, dX = s·G B A
  const Tensor<double> dB = distill::ref::matmul(G, H, true, false), GB = distill::ref::matmul(G, B, false, false);
  const Tensor<double> dA = distill::ref::matmul(GB, X, true, false), dX = distill::ref::matmul(GB, A, false, false);
  auto close = [](const Tensor<float>& got, const Tensor<double>& want) {
    for (int64_t i = 0; i < want.numel(); ++i)
      CHECK(got.data()[i] == doctest::Approx(2.0 * want.data()[i]).epsilon(1e-5).scale(1e-6));
  };
  close(ad.B.grad(), dB);
  close(ad.A.grad(), dA);
  close(xv.grad(), dX);
  // rsLoRA and gaussian init
  c.rslora = true;
  c.init = "gaussian";
  auto g = nn::LoraAdapter<Cpu>::make(10, 7, c, 5);
  CHECK(g.scaling == doctest::Approx(6.0 / std::sqrt(3.0)));
  c.r = 0;
  CHECK_THROWS_WITH_AS(nn::LoraAdapter<Cpu>::make(10, 7, c, 5), doctest::Contains("rank r must be >= 1"), Error);
}

TEST_CASE("LoraConfig matches target modules as PEFT does") {
  nn::LoraConfig c;
  CHECK(c.targets_module("model.layers.0.self_attn.q_proj"));
  CHECK(c.targets_module("model.language_model.layers.11.mlp.down_proj"));
  CHECK(!c.targets_module("model.layers.0.self_attn.q_proj_extra"));
  CHECK(!c.targets_module("lm_head"));
  c.targets = {"q_proj"};
  CHECK(c.targets_module("q_proj"));
  CHECK(!c.targets_module("model.layers.0.self_attn.k_proj"));
  c.targets = {"all-linear"};
  CHECK(c.targets_module("model.layers.0.mlp.up_proj"));
}

TEST_CASE("Linear: 4-bit base + adapter == nf4_linear + delta; dense base == matmul") {
  nn::LoraConfig c;
  c.r = 2;
  c.alpha = 4;
  const auto q = make_q4(9, 64, 41);
  nn::Linear<float> l(q);
  l.lora = std::make_shared<nn::LoraAdapter<Cpu>>(nn::LoraAdapter<Cpu>::make(64, 9, c, 3));
  l.lora->B = Var<float>::param(rand_f32({9, 2}, 4));
  const Tensor<float> x = rand_f32({2, 5, 64}, 42);
  const Tensor<float> y = nn::linear(Var<float>(x), l).value();
  const Tensor<float> base = nn::ref::nf4_linear(x, *q);
  const Tensor<float> d = l.lora->delta(Var<float>(x), false, 0).value();
  for (int64_t i = 0; i < y.numel(); ++i)
    CHECK(y.data()[i] == doctest::Approx(base.data()[i] + d.data()[i]).epsilon(1e-5));
  CHECK(l.quantized());
  CHECK(l.shape() == Shape{9, 64});
  const Tensor<float> w = rand_f32({9, 64}, 43);
  nn::Linear<float> dense(Var<float>(w, false));
  const Tensor<float> yd = nn::linear(Var<float>(x), dense).value();
  const Tensor<float> want = distill::ref::matmul(x.reshape({10, 64}), w, false, true);
  CHECK(max_rel(yd.reshape({10, 9}), want) < test::kTolF32.rtol);
}

TEST_CASE("op:lora_linear fused base + adapter == the composed graph (values and gradients, dropout, NF4, bf16)") {
  for (bool quantized : {false, true})
    for (double p : {0.0, 0.3}) {
      CAPTURE(quantized);
      CAPTURE(p);
      nn::LoraConfig c;
      c.r = 3;
      c.alpha = 6;
      c.dropout = p;
      const auto q = make_q4(9, 64, 51);
      const Tensor<float> w = rand_f32({9, 64}, 52, 0.5);
      nn::Linear<float> l = quantized ? nn::Linear<float>(q) : nn::Linear<float>(Var<float>(w, false));
      l.lora = std::make_shared<nn::LoraAdapter<Cpu>>(nn::LoraAdapter<Cpu>::make(64, 9, c, 3));
      l.lora->B = Var<float>::param(rand_f32({9, 3}, 4));
      const Tensor<float> x = rand_f32({2, 5, 64}, 53), g = rand_f32({2, 5, 9}, 54);
      const nn::LinearRun run{true, 77};
      // fused (nn::linear on the CPU)
      Var<float> xf = Var<float>::param(x);
      Var<float> yf = nn::linear(xf, l, run);
      yf.backward(g);
      const Tensor<float> dA = l.lora->A.grad().clone(), dB = l.lora->B.grad().clone();
      l.lora->A.zero_grad();
      l.lora->B.zero_grad();
      // composed
      Var<float> xc = Var<float>::param(x);
      Var<float> base = quantized
                            ? nn::nf4_linear(xc, q)
                            : reshape(matmul(reshape(xc, {10, 64}), Var<float>(w, false), false, true), {2, 5, 9});
      Var<float> yc = base + l.lora->delta(xc, run.train, run.seed);
      yc.backward(g);
      CHECK(max_rel(yf.value(), yc.value()) < 1e-6);
      CHECK(max_rel(xf.grad(), xc.grad()) < 1e-6);
      CHECK(max_rel(dA, l.lora->A.grad()) < 1e-6);
      CHECK(max_rel(dB, l.lora->B.grad()) < 1e-6);
    }
  // bf16 activations: one rounding of base + adapter, gradients within bf16 tolerance of the composed graph.
  nn::LoraConfig c;
  c.r = 2;
  c.alpha = 4;
  const auto q = make_q4(16, 64, 61);
  nn::Linear<bf16> l(q);
  l.lora = std::make_shared<nn::LoraAdapter<Cpu>>(nn::LoraAdapter<Cpu>::make(64, 16, c, 5));
  l.lora->B = Var<float>::param(rand_f32({16, 2}, 6));
  const Tensor<bf16> x = rand_f32({7, 64}, 62).cast<bf16>();
  Var<bf16> xf = Var<bf16>::param(x), xc = Var<bf16>::param(x);
  Var<bf16> yf = nn::linear(xf, l);
  Var<bf16> yc = nn::nf4_linear(xc, q) + l.lora->delta(xc, false, 0);
  CHECK(max_rel(yf.value().cast<float>(), yc.value().cast<float>()) < test::kTolBf16.rtol);
  const Tensor<bf16> g = rand_f32({7, 16}, 63).cast<bf16>();
  yf.backward(g);
  const Tensor<float> dA = l.lora->A.grad().clone();
  l.lora->A.zero_grad();
  l.lora->B.zero_grad();
  yc.backward(g);
  CHECK(max_rel(xf.grad().cast<float>(), xc.grad().cast<float>()) < test::kTolBf16.rtol);
  CHECK(max_rel(dA, l.lora->A.grad()) < 1e-5);
}
