// RMSNorm (Qwen3 "w * x̂" and Gemma3 "(1 + w) * x̂"): cpu:: against ref::, f64 gradcheck, bf16 rounding points.
#include "distill/ops/rmsnorm.hpp"

#include <string>
#include <vector>

#include "harness.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace distill;
using namespace distill::test;

namespace {

constexpr double kEps = 1e-6;

const char* style_name(RmsNormStyle s) { return s == RmsNormStyle::Weight ? "Weight" : "OnePlusWeight"; }

}  // namespace

TEST_CASE("op:rms_norm") {
  const RmsNormStyle styles[] = {RmsNormStyle::Weight, RmsNormStyle::OnePlusWeight};
  // Odd sizes, a single element, and enough rows ([700, 9]) for many dw blocks and several threads.
  const std::vector<Shape> shapes{{1, 1}, {3, 7}, {2, 5, 33}, {4, 128}, {700, 9}};

  // --- f32: cpu vs ref, forward and backward ---------------------------------------------------
  uint64_t seed = 100;
  for (RmsNormStyle style : styles) {
    for (const Shape& s : shapes) {
      const std::string tag = std::string(style_name(style)) + " " + s.str();
      const auto x = Tensor<float>::uniform(s, ++seed, -2.0, 2.0);
      const auto w = Tensor<float>::uniform({s.back()}, ++seed, -1.5, 1.5);
      const auto g = Tensor<float>::uniform(s, ++seed);
      const auto fwd = cpu::rms_norm_forward(x, w, kEps, style);
      check_close(fwd.y, ref::rms_norm(x, w, kEps, style), kTolF32, "forward " + tag);
      REQUIRE(fwd.rstd.numel() == s.rows());

      const auto want = ref::rms_norm_backward(x, w, g, kEps, style);
      const auto got = cpu::rms_norm_backward(x, w, fwd.rstd, g, style);
      check_close(got.dx, want.dx, kTolF32, "dx " + tag);
      check_close(got.dw, want.dw, kTolF32, "dw " + tag);
      // Only what is asked for is computed.
      const auto only_dx = cpu::rms_norm_backward(x, w, fwd.rstd, g, style, true, false);
      CHECK(!only_dx.dw.defined());
      check_close(only_dx.dx, want.dx, kTolF32, "dx alone " + tag);
      const auto only_dw = cpu::rms_norm_backward(x, w, fwd.rstd, g, style, false, true);
      CHECK(!only_dw.dx.defined());
      check_close(only_dw.dw, want.dw, kTolF32, "dw alone " + tag);
    }
  }

  // --- dw does not depend on the thread count (fixed row blocks, reduced in order) ----------------------
#if defined(_OPENMP)
  {
    const auto x = Tensor<float>::uniform({1000, 24}, 90), w = Tensor<float>::uniform({24}, 91);
    const auto g = Tensor<float>::uniform({1000, 24}, 92);
    const auto rstd = cpu::rms_norm_forward(x, w, kEps, RmsNormStyle::Weight).rstd;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const auto one = cpu::rms_norm_backward(x, w, rstd, g, RmsNormStyle::Weight).dw;
    omp_set_num_threads(3);
    const auto three = cpu::rms_norm_backward(x, w, rstd, g, RmsNormStyle::Weight).dw;
    omp_set_num_threads(saved);
    bool same = true;
    for (int64_t j = 0; j < one.numel(); ++j) same = same && one.flat(j) == three.flat(j);
    CHECK_MESSAGE(same, "dw is bitwise identical with 1 and 3 threads");
  }
#endif

  // --- math: a constant row has x̂ = sign(x) exactly (eps = 0), so y = w * sign or (1 + w) * sign ----
  {
    const auto x = Tensor<float>::from_vector({2, 4}, {2, 2, 2, 2, -3, -3, -3, -3});
    const auto w = Tensor<float>::from_vector({4}, {0.5f, 1.0f, 1.5f, -2.0f});
    const auto yw = Tensor<double>::from_vector({2, 4}, {0.5, 1.0, 1.5, -2.0, -0.5, -1.0, -1.5, 2.0});
    const auto yo = Tensor<double>::from_vector({2, 4}, {1.5, 2.0, 2.5, -1.0, -1.5, -2.0, -2.5, 1.0});
    check_close(cpu::rms_norm_forward(x, w, 0.0, RmsNormStyle::Weight).y, yw, kTolF32, "constant rows, Weight");
    check_close(cpu::rms_norm_forward(x, w, 0.0, RmsNormStyle::OnePlusWeight).y, yo, kTolF32,
                "constant rows, OnePlusWeight");
    // mean(x^2) of a row of 2s is 4: rstd = 1/2; with eps = 5, rstd = 1/3.
    const auto r = cpu::rms_norm_forward(x, w, 5.0, RmsNormStyle::Weight).rstd;
    check_close(r, Tensor<double>::from_vector({2}, {1.0 / 3.0, 1.0 / std::sqrt(14.0)}), kTolF32, "rstd with eps");
  }

  // --- bf16 forward: against ref in double, and the SPEC rounding points bit for bit -----------------
  for (RmsNormStyle style : styles) {
    const std::string tag = style_name(style);
    const auto x = Tensor<bf16>::uniform({6, 64}, 31, -3.0, 3.0);
    const auto w = Tensor<bf16>::uniform({64}, 32, 0.5, 1.5);
    const auto y = cpu::rms_norm_forward(x, w, kEps, style).y;
    const auto y_exact = ref::rms_norm(x.cast<double>(), w.cast<double>(), kEps, style);
    check_close(y, y_exact, kTolBf16, "bf16 vs ref in double, " + tag);
    // ref::rms_norm<bf16> applies the rounding points in double; the f32 fast path may differ only where
    // an f32 vs f64 x̂ lands on the other side of a bf16 rounding boundary (rare).
    const auto y_ref16 = ref::rms_norm(x, w, kEps, style);
    check_close(y, y_ref16, kTolBf16, "bf16 vs ref bf16, " + tag);
    const int64_t mism = bit_mismatches(y, y_ref16);
    INFO(tag << ": " << mism << " of " << y.numel() << " bf16 outputs differ in bits from ref");
    CHECK(mism * 100 <= y.numel());
    // The check above can tell the two rounding orders apart: on this input they disagree often.
    const auto once = y_exact.cast<bf16>();  // exact result rounded once
    if (style == RmsNormStyle::Weight) CHECK(bit_mismatches(y_ref16, once) * 10 >= y.numel());
  }

  // --- bf16 backward vs ref in double --------------------------------------------------------------
  for (RmsNormStyle style : styles) {
    const auto x = Tensor<bf16>::uniform({5, 48}, 41, -2.0, 2.0);
    const auto w = Tensor<bf16>::uniform({48}, 42, 0.5, 1.5);
    const auto g = Tensor<bf16>::uniform({5, 48}, 43);
    const auto fwd = cpu::rms_norm_forward(x, w, kEps, style);
    const auto got = cpu::rms_norm_backward(x, w, fwd.rstd, g, style);
    const auto want = ref::rms_norm_backward(x.cast<double>(), w.cast<double>(), g.cast<double>(), kEps, style);
    check_close(got.dx, want.dx, kTolBf16, std::string("bf16 dx, ") + style_name(style));
    check_close(got.dw, want.dw, kTolBf16, std::string("bf16 dw, ") + style_name(style));
  }

  // --- gradcheck in f64 through the Var op -----------------------------------------------------------
  for (RmsNormStyle style : styles) {
    auto f = [style](const std::vector<Var<double>>& v) { return rms_norm(v[0], v[1], kEps, style); };
    const std::string tag = style_name(style);
    check_grad(f, {Tensor<double>::uniform({3, 5}, 51), Tensor<double>::uniform({5}, 52)}, {},
               "gradcheck [3, 5] " + tag);
    check_grad(f, {Tensor<double>::uniform({2, 2, 4}, 53), Tensor<double>::uniform({4}, 54)}, {},
               "gradcheck [2, 2, 4] " + tag);
    check_grad(f, {Tensor<double>::uniform({2, 3}, 55), Tensor<double>::uniform({3}, 56)}, {true, false},
               "gradcheck x only " + tag);
  }

  // --- Var op: frozen weight gets nothing; gradients accumulate into an existing buffer ----------
  {
    const auto xv = Tensor<float>::uniform({4, 6}, 61), wv = Tensor<float>::uniform({6}, 62);
    const auto g = Tensor<float>::uniform({4, 6}, 63), g0 = Tensor<float>::uniform({4, 6}, 64);
    auto x = Var<float>::param(xv);
    Var<float> w(wv, false);
    x.grad_buffer().copy_from(g0);
    auto y = rms_norm(x, w, kEps, RmsNormStyle::Weight);
    CHECK(y.requires_grad());
    y.backward(g);
    CHECK(!w.grad().defined());
    const auto want = ref::rms_norm_backward(xv, wv, g, kEps, RmsNormStyle::Weight);
    auto expect = Tensor<double>::empty(xv.shape());
    for (int64_t i = 0; i < expect.numel(); ++i) expect.flat(i) = double(g0.flat(i)) + double(want.dx.flat(i));
    check_close(x.grad(), expect, kTolF32, "x grad accumulates onto the existing buffer");

    Var<float> xf(xv, false);
    CHECK(!rms_norm(xf, w, kEps, RmsNormStyle::Weight).requires_grad());
  }

  // --- errors ----------------------------------------------------------------------------------------
  {
    const auto x = Tensor<float>::uniform({3, 4}, 71);
    check_throws_naming<ShapeError>(
        [&] { rms_norm(Var<float>(x), Var<float>(Tensor<float>::zeros({5})), kEps, RmsNormStyle::Weight); },
        {"[3, 4]", "[5]"}, "weight length mismatch");
    check_throws_naming<ShapeError>(
        [&] {
          cpu::rms_norm_forward(x, Tensor<float>::zeros({1, 4}), kEps, RmsNormStyle::OnePlusWeight);
        },
        {"[3, 4]", "[1, 4]"}, "weight of rank 2");
  }
}
