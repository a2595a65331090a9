// RMSNorm on the GPU (kernels/rmsnorm.cu): forward and backward against ref:: (f32 and bf16, both styles),
// bf16 outputs bit for bit against the CPU fast path, gradients of the same Var graph on Cuda and on Cpu
// (trainable and frozen weight, frozen input, accumulation), determinism of dw, and the launch plan.
#include <cstring>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/ops/rmsnorm.hpp"

using namespace distill;
using namespace distill::test;

namespace {

constexpr double kEps = 1e-6;
const RmsNormStyle kStyles[] = {RmsNormStyle::Weight, RmsNormStyle::OnePlusWeight};

const char* style_name(RmsNormStyle s) { return s == RmsNormStyle::Weight ? "Weight" : "OnePlusWeight"; }

// Odd sizes, a single element, many rows ([700, 9]: many dw partials), the model widths (Gemma3-1B 1152,
// Qwen3-4B 2560), a head-dim norm, and rows too long for registers ([3, 20000]; [5, 5001]: one-element packs).
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s{{1, 1},    {3, 7},    {2, 5, 33}, {4, 128},   {700, 9}, {64, 1152},
                                    {8, 2560}, {96, 256}, {4, 8192},  {3, 20000}, {5, 5001}};
  return s;
}

template <class T>
struct Inputs {
  Tensor<T> x, w, g;
};

template <class T>
Inputs<T> inputs(const Shape& s, uint64_t seed, RmsNormStyle style) {
  // Weight norms sit near 1 (Qwen3 initialises them to ones), Gemma3's offsets near 0.
  const double wlo = style == RmsNormStyle::Weight ? 0.5 : -0.5, whi = style == RmsNormStyle::Weight ? 1.5 : 0.5;
  return {Tensor<float>::uniform(s, seed, -2.0, 2.0).cast<T>(),
          Tensor<float>::uniform({s.back()}, seed + 1, wlo, whi).cast<T>(),
          Tensor<float>::uniform(s, seed + 2).cast<T>()};
}

}  // namespace

TEST_CASE("cuda:rms_norm") {
  // --- f32: forward, rstd and backward against ref:: and the CPU ----------------------------------------
  uint64_t seed = 1000;
  for (RmsNormStyle style : kStyles) {
    for (const Shape& s : shapes()) {
      const std::string tag = std::string("f32 ") + style_name(style) + " " + s.str();
      const auto in = inputs<float>(s, seed += 3, style);
      const auto x = to_dev(in.x), w = to_dev(in.w), g = to_dev(in.g);
      const auto fwd = cuda::rms_norm_forward(x, w, kEps, style);
      check_close(fwd.y, ref::rms_norm(in.x, in.w, kEps, style), kTolF32, "forward " + tag);
      const auto cpu_fwd = cpu::rms_norm_forward(in.x, in.w, kEps, style);
      check_close(fwd.rstd, cpu_fwd.rstd, kTolF32, "rstd " + tag);

      const auto want = ref::rms_norm_backward(in.x, in.w, in.g, kEps, style);
      const auto got = cuda::rms_norm_backward(x, w, fwd.rstd, g, style);
      check_close(got.dx, want.dx, kTolF32, "dx " + tag);
      check_close(got.dw, want.dw, kTolF32, "dw " + tag);
      const auto only_dx = cuda::rms_norm_backward(x, w, fwd.rstd, g, style, true, false);
      CHECK(!only_dx.dw.defined());
      check_close(only_dx.dx, want.dx, kTolF32, "dx alone " + tag);
      const auto only_dw = cuda::rms_norm_backward(x, w, fwd.rstd, g, style, false, true);
      CHECK(!only_dw.dx.defined());
      check_close(only_dw.dw, want.dw, kTolF32, "dw alone " + tag);
    }
  }

  // --- bf16: against ref:: and, bit for bit, against the CPU fast path -----------------------------------
  for (RmsNormStyle style : kStyles) {
    int64_t same = 0, total = 0;
    for (const Shape& s : shapes()) {
      const std::string tag = std::string("bf16 ") + style_name(style) + " " + s.str();
      const auto in = inputs<bf16>(s, seed += 3, style);
      const auto x = to_dev(in.x), w = to_dev(in.w), g = to_dev(in.g);
      const auto fwd = cuda::rms_norm_forward(x, w, kEps, style);
      check_close(fwd.y, ref::rms_norm(in.x, in.w, kEps, style), kTolBf16, "forward " + tag);
      const auto cpu_y = cpu::rms_norm_forward(in.x, in.w, kEps, style).y;
      same += cpu_y.numel() - bit_mismatches(to_host(fwd.y), cpu_y);
      total += cpu_y.numel();

      const auto want =
          ref::rms_norm_backward(in.x.cast<double>(), in.w.cast<double>(), in.g.cast<double>(), kEps, style);
      const auto got = cuda::rms_norm_backward(x, w, fwd.rstd, g, style);
      check_close(got.dx, want.dx, kTolBf16, "dx " + tag);
      // Weight's dw sums g * bf16(x̂) (the forward's rounding point) where ref:: uses the exact x̂; over
      // hundreds of rows that drifts past the bf16 tolerance, so its reference is the CPU fast path.
      const auto cpu_dw =
          cpu::rms_norm_backward(in.x, in.w, cpu::rms_norm_forward(in.x, in.w, kEps, style).rstd, in.g, style).dw;
      const Tensor<double> dw_ref = style == RmsNormStyle::Weight ? cpu_dw.cast<double>() : want.dw;
      check_close(got.dw, dw_ref, kTolBf16, "dw " + tag);
      check_close(got.dw, cpu_dw, kTolBf16, "dw vs cpu " + tag);
      const auto only_dw = cuda::rms_norm_backward(x, w, fwd.rstd, g, style, false, true);
      check_close(only_dw.dw, dw_ref, kTolBf16, "dw alone " + tag);
    }
    const double pct = 100.0 * static_cast<double>(same) / static_cast<double>(total);
    MESSAGE("bf16 " << std::string(style_name(style)) << ": " << same << " of " << total << " outputs (" << pct
                    << "%) equal the CPU fast path bit for bit");
    CHECK(same * 100 >= total * 99);
  }

  // --- f16 runs the same kernels: a spot check against ref:: --------------------------------------------
  for (RmsNormStyle style : kStyles) {
    const auto in = inputs<f16>({33, 1152}, seed += 3, style);
    const auto fwd = cuda::rms_norm_forward(to_dev(in.x), to_dev(in.w), kEps, style);
    check_close(fwd.y, ref::rms_norm(in.x, in.w, kEps, style), kTolF16,
                std::string("f16 forward ") + style_name(style));
  }

  // --- dw is the same from run to run (fixed partials, fixed reduction order) ----------------------------
  {
    const auto in = inputs<float>({4097, 640}, 77, RmsNormStyle::Weight);
    const auto x = to_dev(in.x), w = to_dev(in.w), g = to_dev(in.g);
    const auto rstd = cuda::rms_norm_forward(x, w, kEps, RmsNormStyle::Weight).rstd;
    const auto a = to_host(cuda::rms_norm_backward(x, w, rstd, g, RmsNormStyle::Weight).dw);
    const auto b = to_host(cuda::rms_norm_backward(x, w, rstd, g, RmsNormStyle::Weight).dw);
    CHECK_MESSAGE(same_bits(a, b), "dw is bitwise identical across runs");
  }

  // --- gradients: the same Var graph on Cuda and on Cpu --------------------------------------------------
  // x and w trainable, w frozen (no dw), x frozen (no dx); the x gradient lands on an existing buffer.
  struct Grad {
    bool x_trainable, w_trainable;
  };
  for (RmsNormStyle style : kStyles) {
    for (const Grad& gc : {Grad{true, true}, Grad{true, false}, Grad{false, true}}) {
      for (const Shape& s : {Shape{3, 7}, Shape{2, 5, 33}, Shape{64, 1152}, Shape{8, 2560}, Shape{3, 20000}}) {
        const std::string tag = std::string(style_name(style)) + " " + s.str() + (gc.x_trainable ? " dx" : "") +
                                (gc.w_trainable ? " dw" : "");
        const auto in = inputs<float>(s, seed += 3, style);
        const auto g0 = Tensor<float>::uniform(s, seed + 7);
        auto run = [&](auto dev) {
          using D = decltype(dev);
          Var<float, D> x(in.x.to<D>(), gc.x_trainable), w(in.w.to<D>(), gc.w_trainable);
          if (gc.x_trainable) x.grad_buffer().copy_from(g0.to<D>());
          auto y = rms_norm(x, w, kEps, style);
          REQUIRE(y.requires_grad());
          y.backward(in.g.to<D>());
          CHECK(x.grad().defined() == gc.x_trainable);
          CHECK(w.grad().defined() == gc.w_trainable);
          return std::pair{x.grad().defined() ? to_host(x.grad()) : Tensor<float>(),
                           w.grad().defined() ? to_host(w.grad()) : Tensor<float>()};
        };
        const auto [cx, cw] = run(Cpu{});
        const auto [gx, gw] = run(Cuda{});
        if (gc.x_trainable) check_close(gx, cx, kTolF32, "grad x " + tag);
        if (gc.w_trainable) check_close(gw, cw, kTolF32, "grad w " + tag);
      }
    }
  }
  // bf16 graph: Cuda against Cpu within the bf16 tolerance.
  for (RmsNormStyle style : kStyles) {
    const auto in = inputs<bf16>({16, 1152}, seed += 3, style);
    auto run = [&](auto dev) {
      using D = decltype(dev);
      auto x = Var<bf16, D>::param(in.x.to<D>()), w = Var<bf16, D>::param(in.w.to<D>());
      rms_norm(x, w, kEps, style).backward(in.g.to<D>());
      return std::pair{to_host(x.grad()), to_host(w.grad())};
    };
    const auto [cx, cw] = run(Cpu{});
    const auto [gx, gw] = run(Cuda{});
    check_close(gx, cx, kTolBf16, std::string("bf16 grad x ") + style_name(style));
    check_close(gw, cw, kTolBf16, std::string("bf16 grad w ") + style_name(style));
  }
  // Nothing trainable: nothing recorded.
  {
    Var<float, Cuda> x(to_dev(Tensor<float>::uniform({2, 8}, 5))), w(to_dev(Tensor<float>::uniform({8}, 6)));
    CHECK(!rms_norm(x, w, kEps, RmsNormStyle::Weight).requires_grad());
  }

  // --- errors name the shapes ------------------------------------------------------------------------------
  check_throws_naming<ShapeError>(
      [] {
        cuda::rms_norm_forward(to_dev(Tensor<float>::zeros({3, 4})), to_dev(Tensor<float>::zeros({5})), kEps,
                               RmsNormStyle::Weight);
      },
      {"[3, 4]", "[5]"}, "weight length mismatch");
}
