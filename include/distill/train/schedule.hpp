// Learning-rate schedules and global gradient-norm clipping, as Hugging Face's Trainer uses them.
//
// Schedules (SPEC §9.2): the lambdas of transformers' get_linear / get_cosine (num_cycles 0.5) /
// get_constant_with_warmup / get_constant schedule, in double, with their quirks kept: `constant` ignores the
// warmup (get_scheduler("constant") does), cosine past `total` rises again (progress > 1, no clamp), linear
// stays at 0 past `total`. torch's LambdaLR sets lr = base_lr * multiplier(step) where step counts the
// optimizer steps already taken: the first update uses step 0 (multiplier 0 when there is a warmup).
//
// Clipping (torch.nn.utils.clip_grad_norm_, norm_type 2): the total norm is the L2 norm of the per-parameter
// gradient norms (parameters without a gradient are skipped); each gradient is multiplied by
//   clip_coef = min(f32(max_norm) * f32(1 / f32(total + f32(1e-6))), 1)     in f32, as torch evaluates
// `max_norm / (total_norm + 1e-6)` (Tensor.__rtruediv__ = reciprocal() * other) then clamp(max=1).
// Given the same total norm, the coefficient and the scaled gradients are bit-identical to torch's. The norm
// itself is summed in double (per-parameter norms then rounded to f32, as torch's are, and the total too), so
// it is at least as accurate as torch's f32 sums and within a few f32 ulps of them; torch's exact f32
// rounding depends on its SIMD width and device, which we do not imitate.
//
// Two ways to clip, with identical results: clip_grad_norm() scales the gradients in place (torch's way), or
// grad_global_norm() + clip_coefficient() and AdamW::step(coef), which multiplies each gradient by the same
// f32 factor inside the update (`g * grad_scale` in f32 — the very product torch's mul_ computes). The second
// leaves the gradients untouched, saves a pass over them, and is the one that works on Cuda.
// A non-finite norm gives a coefficient of 0 (inf) or NaN (NaN), as in torch; check the norm before stepping.
#pragma once
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/error.hpp"
#include "distill/core/parallel.hpp"

namespace distill {

enum class LrSchedule { Linear, Cosine, Constant, ConstantWithWarmup };

// HF's lr_scheduler_type names: "linear", "cosine", "constant", "constant_with_warmup".
inline LrSchedule parse_lr_schedule(std::string_view name) {
  if (name == "linear") return LrSchedule::Linear;
  if (name == "cosine") return LrSchedule::Cosine;
  if (name == "constant") return LrSchedule::Constant;
  if (name == "constant_with_warmup") return LrSchedule::ConstantWithWarmup;
  throw Error("unknown LR schedule \"" + std::string(name) +
              "\" (expected one of: linear, cosine, constant, constant_with_warmup)");
}

inline std::string_view lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::Linear:
      return "linear";
    case LrSchedule::Cosine:
      return "cosine";
    case LrSchedule::Constant:
      return "constant";
    case LrSchedule::ConstantWithWarmup:
      return "constant_with_warmup";
  }
  throw Error("lr_schedule_name: invalid LrSchedule value " + std::to_string(static_cast<int>(s)));
}

// The factor on the base learning rate for the update after `step` optimizer steps (0-based), with `warmup`
// warmup steps out of `total` training steps (total is unused by the constant schedules).
inline double lr_multiplier(LrSchedule s, int64_t step, int64_t warmup, int64_t total) {
  DISTILL_CHECK(step >= 0 && warmup >= 0 && total >= 0, "lr_multiplier: step (", step, "), warmup (", warmup,
                ") and total (", total, ") must be >= 0");
  const auto d = [](int64_t x) { return static_cast<double>(x); };
  if (s == LrSchedule::Constant) return 1.0;
  if (step < warmup) return d(step) / d(std::max<int64_t>(1, warmup));
  switch (s) {
    case LrSchedule::Linear:
      return std::max(0.0, d(total - step) / d(std::max<int64_t>(1, total - warmup)));
    case LrSchedule::Cosine: {
      const double progress = d(step - warmup) / d(std::max<int64_t>(1, total - warmup));
      constexpr double kPi = 3.141592653589793;  // math.pi
      return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * 0.5 * 2.0 * progress)));
    }
    default:
      return 1.0;
  }
}

// HF TrainingArguments.get_warmup_steps: warmup >= 1 is a step count (truncated), else a ratio of total
// (rounded up).
inline int64_t warmup_steps_for(double warmup, int64_t total) {
  DISTILL_CHECK(std::isfinite(warmup) && warmup >= 0, "warmup_steps_for: invalid warmup ", warmup);
  DISTILL_CHECK(total >= 0, "warmup_steps_for: total must be >= 0, got ", total);
  if (warmup >= 1) return static_cast<int64_t>(warmup);
  return static_cast<int64_t>(std::ceil(static_cast<double>(total) * warmup));
}

// torch's clip_coef_clamped for a total norm and max_norm, in f32 (see the file comment).
inline float clip_coefficient(double total_norm, double max_norm) {
  const float denom = static_cast<float>(total_norm) + static_cast<float>(1e-6);
  const float coef = static_cast<float>(max_norm) * (1.0f / denom);
  return coef > 1.0f ? 1.0f : coef;  // clamp(max=1): NaN stays NaN
}

namespace detail::clip {

inline constexpr int64_t kChunk = int64_t{1} << 15;

// Sum of squares in double over fixed chunks, added in order: the same result for any thread count.
inline double sum_squares(const float* g, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double s = 0.0;
      for (int64_t i = c * kChunk, e = std::min(n, (c + 1) * kChunk); i < e; ++i)
        s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
      part[static_cast<size_t>(c)] = s;
    }
  });
  double s = 0.0;
  for (double p : part) s += p;
  return s;
}

}  // namespace detail::clip

// The total L2 norm of the gradients of `params` (parameters without a gradient skipped; 0 when none has one),
// an f32 value returned as double. On Cuda the gradients are copied to the host.
template <class D>
double grad_global_norm(std::span<const Var<float, D>> params) {
  double total_sq = 0.0;
  for (size_t i = 0; i < params.size(); ++i) {
    DISTILL_CHECK(params[i].defined(), "grad_global_norm: parameter ", i, " is an undefined Var");
    if (!params[i].grad().defined()) continue;
    const Tensor<float> g = params[i].grad().template to<Cpu>().contiguous();
    const float norm = static_cast<float>(std::sqrt(detail::clip::sum_squares(g.data(), g.numel())));
    total_sq += static_cast<double>(norm) * static_cast<double>(norm);
  }
  return static_cast<double>(static_cast<float>(std::sqrt(total_sq)));
}

template <class D>
double grad_global_norm(const std::vector<Var<float, D>>& params) {
  return grad_global_norm(std::span<const Var<float, D>>(params));
}

// torch.nn.utils.clip_grad_norm_(params, max_norm): scales every gradient in place by
// clip_coefficient(total, max_norm) (also when that is 1, or NaN) and returns the total norm. Cpu only: on Cuda
// pass clip_coefficient(grad_global_norm(params), max_norm) to AdamW::step instead.
template <class D>
double clip_grad_norm(std::span<const Var<float, D>> params, double max_norm) {
  static_assert(std::is_same_v<D, Cpu>,
                "clip_grad_norm scales gradients on the host only; on Cuda use "
                "AdamW::step(clip_coefficient(grad_global_norm(params), max_norm))");
  DISTILL_CHECK(std::isfinite(max_norm) && max_norm >= 0, "clip_grad_norm: invalid max_norm ", max_norm);
  const double total = grad_global_norm(params);
  const float coef = clip_coefficient(total, max_norm);
  for (const Var<float, D>& p : params) {
    if (!p.grad().defined()) continue;
    const Tensor<float>& g = p.grad();
    DISTILL_CHECK(g.is_contiguous(), "clip_grad_norm: a gradient is not contiguous");
    float* x = g.data();
    parallel_for(g.numel(), int64_t{1} << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) x[i] *= coef;
    });
  }
  return total;
}

template <class D>
double clip_grad_norm(const std::vector<Var<float, D>>& params, double max_norm) {
  return clip_grad_norm(std::span<const Var<float, D>>(params), max_norm);
}

}  // namespace distill
