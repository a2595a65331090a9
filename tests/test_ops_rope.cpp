// RoPE (rotate-half): inv_freq against SPEC's torch-derived numbers, cpu:: against ref::, rotation
// identities, f64 gradcheck, bf16 rounding points, errors.
#include "distill/ops/rope.hpp"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"

using namespace distill;
using namespace distill::test;

namespace {

// Float32 values that must agree with torch's to about 2 ulp (pow and 1/x each round once).
constexpr Tol kTolF32Ulp{0.0, 2.4e-7, "f32 (2 ulp)"};

Tensor<float> pick(const std::vector<float>& v, const std::vector<size_t>& idx) {
  std::vector<float> out;
  for (size_t i : idx) out.push_back(v[i]);
  return Tensor<float>::from_vector({static_cast<int64_t>(out.size())}, out);
}

Tensor<int32_t> random_positions(const Shape& s, uint64_t seed, int32_t hi) {
  auto u = Tensor<double>::uniform(s, seed, 0.0, static_cast<double>(hi));
  auto p = Tensor<int32_t>::empty(s);
  for (int64_t i = 0; i < p.numel(); ++i) p.flat(i) = static_cast<int32_t>(u.flat(i));
  return p;
}

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

TEST_CASE("op:rope") {
  // --- inv_freq: SPEC §1.4 (Qwen3-4B, theta 5e6, D 128) and §2.5 (Gemma3 local, theta 1e4, D 256) --------
  {
    const auto q = rope_inv_freq(128, {5e6});
    REQUIRE(q.size() == 64);
    check_close(pick(q, {0, 1, 2, 3, 63}),
                Tensor<double>::from_vector(
                    {5}, {1.0, 0.785830020904541, 0.6175287365913391, 0.485272616147995, 2.5450796670156706e-07}),
                kTolF32Ulp, "inv_freq theta 5e6, D 128");
    const auto gl = rope_inv_freq(256, {1e4});
    REQUIRE(gl.size() == 128);
    check_close(pick(gl, {0, 1, 2, 127}),
                Tensor<double>::from_vector({4}, {1.0, 0.9305720329284668, 0.8659643530845642, 1.0746077896328643e-04}),
                kTolF32Ulp, "inv_freq theta 1e4, D 256");
    // Linear scaling divides by the factor; 8 is a power of two, so the division is exact.
    const auto g8 = rope_inv_freq(256, {1e4, 8.0});
    check_close(pick(g8, {0, 1, 2, 127}),
                Tensor<double>::from_vector(
                    {4}, {1.0 / 8, 0.9305720329284668 / 8, 0.8659643530845642 / 8, 1.0746077896328643e-04 / 8}),
                kTolF32Ulp, "inv_freq theta 1e4, D 256, linear factor 8");
    // A non-power-of-two factor: float32(inv) / float32(3).
    const auto g3 = rope_inv_freq(256, {1e4, 3.0});
    check_close(pick(g3, {1}), Tensor<double>::from_vector({1}, {0.9305720329284668 / 3}), kTolF32Ulp,
                "inv_freq, linear factor 3");
  }

  // --- cos/sin tables: shapes, position 0, and cos(float32 angle) per element --------------------------
  {
    const RopeConfig cfg{1e4};
    const auto pos = Tensor<int32_t>::from_vector({2, 3}, {0, 1, 7, 4095, 32000, 0});
    const auto tab = rope_cos_sin(pos, 10, cfg);
    CHECK(tab.cos.shape() == Shape{2, 3, 5});
    CHECK(tab.sin.shape() == Shape{2, 3, 5});
    const auto inv = rope_inv_freq(10, cfg);
    auto ec = Tensor<double>::empty(tab.cos.shape()), es = Tensor<double>::empty(tab.sin.shape());
    for (int64_t k = 0; k < pos.numel(); ++k)
      for (int64_t i = 0; i < 5; ++i) {
        const float a = static_cast<float>(pos.flat(k)) * inv[static_cast<size_t>(i)];
        ec.flat(k * 5 + i) = std::cos(static_cast<double>(a));
        es.flat(k * 5 + i) = std::sin(static_cast<double>(a));
      }
    check_close(tab.cos, ec, kTolF32, "cos table");
    check_close(tab.sin, es, kTolF32, "sin table");
    for (int64_t i = 0; i < 5; ++i) {
      CHECK(tab.cos(0, 0, i) == 1.0f);
      CHECK(tab.sin(0, 0, i) == 0.0f);
    }
  }

  // --- f32: cpu vs ref, forward and backward, positions [T] and [B, T], with and without scaling ------
  struct Case {
    Shape x;
    bool per_batch;
    RopeConfig cfg;
  };
  const std::vector<Case> cases{{{2, 5, 3, 8}, false, {1e4}},
                                {{2, 4, 2, 6}, true, {5e6}},  // D/2 = 3, odd
                                {{1, 7, 1, 256}, false, {1e6, 8.0}},
                                {{3, 1, 4, 2}, true, {1e4, 3.0}},
                                {{2, 33, 5, 128}, true, {5e6}}};
  uint64_t seed = 200;
  for (const Case& c : cases) {
    const std::string tag = c.x.str() + (c.per_batch ? " positions [B, T]" : " positions [T]") + " theta " +
                            num(c.cfg.theta) + " factor " + num(c.cfg.linear_factor);
    const Shape ps = c.per_batch ? Shape{c.x[0], c.x[1]} : Shape{c.x[1]};
    const auto pos = random_positions(ps, ++seed, 4096);
    const auto x = Tensor<float>::uniform(c.x, ++seed), g = Tensor<float>::uniform(c.x, ++seed);
    const auto tab = rope_cos_sin(pos, c.x[3], c.cfg);
    const auto y = cpu::rope_forward(x, tab);
    check_close(y, ref::rope(x, pos, c.cfg), kTolF32, "forward " + tag);
    check_close(cpu::rope_backward(g, tab), ref::rope_backward(g, pos, c.cfg), kTolF32, "backward " + tag);

    // Rotation identities (math): pair norms are kept, and the backward (inverse rotation) undoes it.
    auto n_in = Tensor<double>::empty(c.x.with(3, c.x[3] / 2)), n_out = n_in.clone();
    const int64_t half = c.x[3] / 2;
    for (int64_t r = 0; r < x.numel() / c.x[3]; ++r)
      for (int64_t i = 0; i < half; ++i) {
        const double a = x.flat(r * 2 * half + i), b = x.flat(r * 2 * half + half + i);
        const double ya = y.flat(r * 2 * half + i), yb = y.flat(r * 2 * half + half + i);
        n_in.flat(r * half + i) = a * a + b * b;
        n_out.flat(r * half + i) = ya * ya + yb * yb;
      }
    check_close(n_out, n_in, kTolF32, "pair norms kept " + tag);
    check_close(cpu::rope_backward(y, tab), x, kTolF32, "inverse rotation " + tag);
  }

  // --- math: position 0 is the identity; <rope(q, m), rope(k, n)> depends on m - n only ---------------
  {
    const auto x = Tensor<float>::uniform({1, 2, 3, 16}, 300);
    const auto y = cpu::rope_forward(x, rope_cos_sin(Tensor<int32_t>::zeros({2}), 16, {1e4}));
    for (int64_t i = 0; i < x.numel(); ++i) CHECK(y.flat(i) == x.flat(i));

    const auto q = Tensor<double>::uniform({1, 1, 1, 16}, 301), k = Tensor<double>::uniform({1, 1, 1, 16}, 302);
    auto dot_at = [&](int32_t m, int32_t n) {
      const RopeConfig cfg{1e4};
      const auto rq = cpu::rope_forward(q, rope_cos_sin(Tensor<int32_t>::from_vector({1}, {m}), 16, cfg));
      const auto rk = cpu::rope_forward(k, rope_cos_sin(Tensor<int32_t>::from_vector({1}, {n}), 16, cfg));
      double s = 0;
      for (int64_t i = 0; i < 16; ++i) s += rq.flat(i) * rk.flat(i);
      return s;
    };
    const double d0 = dot_at(3, 1);
    check_close(Tensor<double>::from_vector({3}, {dot_at(10, 8), dot_at(2, 0), dot_at(50, 48)}),
                Tensor<double>::from_vector({3}, {d0, d0, d0}), kTolF32, "relative-position dot products");
    // ... and it does depend on m - n.
    CHECK(std::abs(dot_at(3, 1) - dot_at(3, 2)) > 1e-3);
  }

  // --- bf16 forward: HF rounding points (cos/sin cast, products and sum rounded) ----------------------
  {
    const RopeConfig cfg{1e4};
    const auto x = Tensor<bf16>::uniform({2, 6, 2, 32}, 310, -3.0, 3.0);
    const auto pos = random_positions({2, 6}, 311, 2048);
    const auto y = cpu::rope_forward(x, rope_cos_sin(pos, 32, cfg));
    check_close(y, ref::rope(x.cast<double>(), pos, cfg), kTolBf16, "bf16 vs ref in double");
    const auto y16 = ref::rope(x, pos, cfg);
    check_close(y, y16, kTolBf16, "bf16 vs ref bf16");
    const int64_t mism = bit_mismatches(y, y16);
    INFO(mism << " of " << y.numel() << " bf16 outputs differ in bits from ref");
    CHECK(mism * 100 <= y.numel());
  }

  // --- gradcheck in f64 through the Var op -------------------------------------------------------------
  {
    const auto p1 = Tensor<int32_t>::from_vector({3}, {0, 5, 17});
    check_grad([&](const std::vector<Var<double>>& v) { return rope(v[0], p1, RopeConfig{1e4}); },
               {Tensor<double>::uniform({1, 3, 2, 4}, 320)}, {}, "gradcheck positions [T]");
    const auto p2 = Tensor<int32_t>::from_vector({2, 2}, {3, 4, 100, 7});
    check_grad(
        [&](const std::vector<Var<double>>& v) {
          return rope(v[0], p2, RopeConfig{1e6, 8.0});
        },
        {Tensor<double>::uniform({2, 2, 1, 6}, 321)}, {}, "gradcheck positions [B, T], factor 8");
    const auto tab = rope_cos_sin(p1, 2, RopeConfig{5e6});
    check_grad([&](const std::vector<Var<double>>& v) { return rope(v[0], tab); },
               {Tensor<double>::uniform({2, 3, 3, 2}, 322)}, {}, "gradcheck with tables");

    Var<double> frozen(Tensor<double>::uniform({1, 3, 2, 4}, 323), false);
    CHECK(!rope(frozen, p1, RopeConfig{1e4}).requires_grad());
  }

  // --- errors --------------------------------------------------------------------------------------------
  {
    const auto pos2 = Tensor<int32_t>::from_vector({2}, {0, 1});
    Var<float> x(Tensor<float>::uniform({1, 2, 1, 4}, 330));
    check_throws_naming<Error>(
        [&] {
          rope(Var<float>(Tensor<float>::zeros({1, 2, 1, 5})), pos2, {1e4});
        },
        {"even", "5"}, "odd head dim");
    check_throws_naming<ShapeError>(
        [&] {
          rope(Var<float>(Tensor<float>::zeros({2, 1, 4})), pos2, {1e4});
        },
        {"[2, 1, 4]"}, "x of rank 3");
    check_throws_naming<ShapeError>([&] { rope(x, Tensor<int32_t>::zeros({3}), {1e4}); }, {"[3]", "[1, 2, 1, 4]"},
                                    "positions [T] of the wrong length");
    check_throws_naming<ShapeError>(
        [&] {
          rope(x, Tensor<int32_t>::zeros({2, 2}), {1e4});
        },
        {"[2, 2]", "[1, 2, 1, 4]"}, "positions [B, T] with the wrong B");
    check_throws_naming<Error>([&] { rope(x, pos2, {0.0}); }, {"theta"}, "theta 0");
    check_throws_naming<Error>([&] { rope(x, pos2, {1e4, -2.0}); }, {"factor"}, "negative factor");
    check_throws_naming<ShapeError>([&] { rope(x, rope_cos_sin(pos2, 6, {1e4})); }, {"[2, 3]", "[1, 2, 1, 4]"},
                                    "tables for another head dim");
  }
}
