// AdamW exactly as torch.optim.AdamW (SPEC.md §9.1; torch's single-tensor path), for f32 master parameters.
// Per parameter, with its own step count t (starting at 1; a parameter without a gradient in a step is
// skipped and its t does not advance, as in torch):
//   g = grad * grad_scale                       (grad_scale: 1, or the global-norm clipping factor)
//   p = p * (1 - lr * weight_decay)             decoupled weight decay, applied first
//   m = m + (1 - beta1) * (g - m)               torch's lerp
//   v = beta2 * v + (1 - beta2) * g * g
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// ref::adamw_step   plain loops in double (any floating dtype, rounded to it when stored).
// cpu::adamw_step   f32, with the step's scalars rounded to f32 first and the operations in torch's order, so
//                   it rounds as torch's f32 kernels do; elements split across threads.
// cuda::adamw_step  the same arithmetic in one fused multi-tensor kernel (distill/cuda/adamw.hpp).
// AdamW<D> holds Var<float, D> parameters (the f32 master weights, updated in place), creates m and v (zeros)
// on a parameter's first update, skips frozen parameters and ones without a gradient, and exposes the state
// (m, v, t per parameter, and the number of step() calls) so a checkpoint can save and restore it.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/nvtx.hpp"
#include "distill/core/parallel.hpp"
#include "distill/cuda/adamw.hpp"

namespace distill {

struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

// The hyper-parameters torch accepts (its constructor's checks).
inline void check_adamw_config(const AdamWConfig& c) {
  DISTILL_CHECK(c.lr >= 0 && std::isfinite(c.lr), "AdamW: invalid learning rate ", c.lr);
  DISTILL_CHECK(c.beta1 >= 0 && c.beta1 < 1, "AdamW: invalid beta1 ", c.beta1, " (need 0 <= beta1 < 1)");
  DISTILL_CHECK(c.beta2 >= 0 && c.beta2 < 1, "AdamW: invalid beta2 ", c.beta2, " (need 0 <= beta2 < 1)");
  DISTILL_CHECK(c.eps >= 0, "AdamW: invalid eps ", c.eps);
  DISTILL_CHECK(c.weight_decay >= 0, "AdamW: invalid weight_decay ", c.weight_decay);
}

// The f32 scalars of one update at step t: computed in double, then rounded once (torch passes Python
// floats to f32 kernels the same way).
struct AdamWScalars {
  float decay;            // 1 - lr * weight_decay
  float one_minus_beta1;  // the lerp weight
  float beta2;
  float one_minus_beta2;
  float eps;
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  float grad_scale;
};

inline AdamWScalars adamw_scalars(const AdamWConfig& c, int64_t t, double grad_scale = 1.0) {
  DISTILL_CHECK(t >= 1, "AdamW: the step count starts at 1, got ", t);
  const double bc1 = 1.0 - std::pow(c.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(c.beta2, static_cast<double>(t));
  return {static_cast<float>(1.0 - c.lr * c.weight_decay),
          static_cast<float>(1.0 - c.beta1),
          static_cast<float>(c.beta2),
          static_cast<float>(1.0 - c.beta2),
          static_cast<float>(c.eps),
          static_cast<float>(c.lr / bc1),
          static_cast<float>(std::sqrt(bc2)),
          static_cast<float>(grad_scale)};
}

namespace detail::adamw {
template <class T, class D>
void check_operands(const Tensor<T, D>& p, const Tensor<T, D>& m, const Tensor<T, D>& v, const Tensor<T, D>& g,
                    const char* op) {
  check_same_shape(p.shape(), m.shape(), op);
  check_same_shape(p.shape(), v.shape(), op);
  check_same_shape(p.shape(), g.shape(), op);
}
}  // namespace detail::adamw

// ------------------------------------------------------------------------------------------------
namespace ref {

// One AdamW update of p, m and v in place (step t >= 1), every operation in double.
template <FloatingDtype T>
void adamw_step(const Tensor<T>& p, const Tensor<T>& m, const Tensor<T>& v, const Tensor<T>& g, const AdamWConfig& c,
                int64_t t, double grad_scale = 1.0) {
  detail::adamw::check_operands(p, m, v, g, "ref::adamw_step");
  DISTILL_CHECK(t >= 1, "ref::adamw_step: the step count starts at 1, got ", t);
  const double bc1 = 1.0 - std::pow(c.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(c.beta2, static_cast<double>(t));
  auto load = [](const T& x) { return static_cast<double>(to_compute<T>(x)); };
  auto store = [](double x) { return static_cast<T>(static_cast<compute_t<T>>(x)); };
  for (int64_t i = 0; i < p.numel(); ++i) {
    const double gi = load(g.flat(i)) * grad_scale;
    const double mi = c.beta1 * load(m.flat(i)) + (1.0 - c.beta1) * gi;
    const double vi = c.beta2 * load(v.flat(i)) + (1.0 - c.beta2) * gi * gi;
    double pi = load(p.flat(i)) * (1.0 - c.lr * c.weight_decay);
    pi -= c.lr / bc1 * mi / (std::sqrt(vi) / std::sqrt(bc2) + c.eps);
    p.flat(i) = store(pi);
    m.flat(i) = store(mi);
    v.flat(i) = store(vi);
  }
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------
namespace cpu {

inline constexpr int64_t kAdamWGrain = int64_t{1} << 15;

// One AdamW update of n contiguous f32 elements in place. The expressions follow torch's kernels
// (lerp; mul_ then addcmul_ as v*b2 + (1-b2)*g*g; sqrt(v)/bc2_sqrt + eps; addcdiv_ as p + (-step)*m/denom).
inline void adamw_step(float* p, float* m, float* v, const float* g, int64_t n, const AdamWScalars& s) {
  const float neg_step = -s.step_size, w = s.one_minus_beta1, one_minus_w = 1.0f - s.one_minus_beta1;
  const bool small_weight = w < 0.5f;  // torch's lerp switches formulas at weight 0.5
  parallel_for(n, kAdamWGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float gi = g[i] * s.grad_scale;
      const float mi = small_weight ? m[i] + w * (gi - m[i]) : gi - (gi - m[i]) * one_minus_w;
      const float vi = v[i] * s.beta2 + s.one_minus_beta2 * gi * gi;
      const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
      p[i] = p[i] * s.decay + neg_step * mi / denom;
      m[i] = mi;
      v[i] = vi;
    }
  });
}

// The same on contiguous f32 tensors.
inline void adamw_step(const Tensor<float>& p, const Tensor<float>& m, const Tensor<float>& v, const Tensor<float>& g,
                       const AdamWConfig& c, int64_t t, double grad_scale = 1.0) {
  detail::adamw::check_operands(p, m, v, g, "adamw_step");
  DISTILL_CHECK(p.is_contiguous() && m.is_contiguous() && v.is_contiguous() && g.is_contiguous(),
                "adamw_step: p, m, v and g must be contiguous");
  adamw_step(p.data(), m.data(), v.data(), g.data(), p.numel(), adamw_scalars(c, t, grad_scale));
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------
template <class D = Cpu>
class AdamW {
  static_assert(DeviceTag<D>, "AdamW's device must be distill::Cpu or distill::Cuda");

 public:
  using Param = Var<float, D>;
  // Per-parameter optimizer state; m and v stay undefined until the parameter's first update.
  struct State {
    Tensor<float, D> m, v;
    int64_t t = 0;  // updates applied to this parameter (torch's state["step"])
  };

  explicit AdamW(std::vector<Param> params, const AdamWConfig& config = {})
      : params_(std::move(params)), states_(params_.size()), config_(config) {
    check_adamw_config(config_);
    std::unordered_set<const void*> seen;
    for (size_t i = 0; i < params_.size(); ++i) {
      DISTILL_CHECK(params_[i].defined(), "AdamW: parameter ", i, " is an undefined Var");
      DISTILL_CHECK(params_[i].is_leaf(), "AdamW: parameter ", i, " (", params_[i].op(),
                    ") is not a leaf; optimize the leaves it was computed from");
      DISTILL_CHECK(seen.insert(params_[i].node().get()).second, "AdamW: parameter ", i,
                    " appears twice in the list (it would be updated twice per step)");
    }
  }

  // One update of every trainable parameter that has a gradient, its gradient multiplied by grad_scale first.
  void step(double grad_scale = 1.0) {
    DISTILL_CHECK(std::isfinite(grad_scale) && grad_scale >= 0, "AdamW::step: invalid grad_scale ", grad_scale);
    // Validate every parameter before advancing any step count: a failed check (say, a restored state of the
    // wrong shape) leaves the optimizer exactly as it was.
    std::vector<size_t> todo;
    for (size_t i = 0; i < params_.size(); ++i) {
      const Param& p = params_[i];
      if (!p.requires_grad() || !p.grad().defined()) continue;
      DISTILL_CHECK(p.value().is_contiguous() && p.grad().is_contiguous(), "AdamW: parameter ", i,
                    " or its gradient is not contiguous");
      State& st = states_[i];
      if (!st.m.defined()) st.m = Tensor<float, D>::zeros(p.shape());
      if (!st.v.defined()) st.v = Tensor<float, D>::zeros(p.shape());
      DISTILL_CHECK(
          st.m.shape() == p.shape() && st.v.shape() == p.shape() && st.m.is_contiguous() && st.v.is_contiguous(),
          "AdamW: the state of parameter ", i, " (m ", st.m.shape().str(), ", v ", st.v.shape().str(),
          ") does not match its shape ", p.shape().str());
      todo.push_back(i);
    }
    ++steps_;
    for (size_t i : todo) ++states_[i].t;
    if constexpr (std::is_same_v<D, Cpu>) {
      for (size_t i : todo) {
        const Param& p = params_[i];
        State& st = states_[i];
        cpu::adamw_step(p.value().data(), st.m.data(), st.v.data(), p.grad().data(), p.numel(),
                        adamw_scalars(config_, st.t, grad_scale));
      }
    } else {
#ifdef DISTILL_WITH_CUDA
      NvtxRange nvtx("adamw");
      std::vector<cuda::AdamWTensorArgs> args;
      AdamWScalars s{};
      for (size_t i : todo) {
        const Param& p = params_[i];
        State& st = states_[i];
        s = adamw_scalars(config_, st.t, grad_scale);
        args.push_back(
            {p.value().data(), p.grad().data(), st.m.data(), st.v.data(), p.numel(), s.step_size, s.bc2_sqrt});
      }
      if (args.empty()) return;
      const cuda::AdamWSharedArgs shared{s.decay, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.eps, s.grad_scale};
      cuda::adamw_step(args.data(), static_cast<int>(args.size()), shared);
#else
      static_assert(expr::dependent_false_v<D>,
                    "AdamW on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
    }
  }

  // Releases every parameter's gradient (torch's zero_grad(set_to_none=True)).
  void zero_grad() {
    for (const Param& p : params_) p.zero_grad();
  }

  void set_lr(double lr) {
    DISTILL_CHECK(lr >= 0 && std::isfinite(lr), "AdamW: invalid learning rate ", lr);
    config_.lr = lr;
  }
  double lr() const { return config_.lr; }
  const AdamWConfig& config() const { return config_; }

  // step() calls so far (for LR schedules and checkpoints; per-parameter counts are in state(i).t).
  int64_t step_count() const { return steps_; }
  void set_step_count(int64_t n) {
    DISTILL_CHECK(n >= 0, "AdamW: negative step count ", n);
    steps_ = n;
  }

  size_t size() const { return params_.size(); }
  const std::vector<Param>& params() const { return params_; }
  // State of parameter i, writable so a checkpoint can restore it (shapes are checked at the next step).
  State& state(size_t i) {
    DISTILL_CHECK(i < states_.size(), "AdamW: parameter index ", i, " out of range (", states_.size(), ")");
    return states_[i];
  }
  const State& state(size_t i) const { return const_cast<AdamW*>(this)->state(i); }

 private:
  std::vector<Param> params_;
  std::vector<State> states_;
  AdamWConfig config_;
  int64_t steps_ = 0;
};

}  // namespace distill
