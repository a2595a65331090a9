// Cross-entropy losses: cross_entropy over given logits, and linear_cross_entropy, the fused lm_head + loss
// that never materializes the [N, V] logits (Gemma3: V = 262,144).
//
// Contract (Hugging Face / torch.nn.functional.cross_entropy(reduction="mean", ignore_index=-100)):
//  - logits [..., V] (usually [N, V]; [B, T, V] is flattened to rows) with int32 targets of the logits' shape
//    without the class axis ([N], or [B, T]); the caller does the causal shift. Bad shapes throw ShapeError
//    naming both shapes.
//  - loss = mean over rows whose target != ignore_index of (logsumexp(row) - row[target]), computed in
//    compute_t<T> (f32 for bf16/f16: HF upcasts logits to fp32 for the loss), summed over rows in double in row
//    order (deterministic for any thread count). The result is a one-element rank-0 Var.
//  - A target outside [0, V) that is not ignore_index throws distill::Error naming the row and the value.
//  - Every row ignored: torch returns NaN (0/0); we return 0 with a zero gradient, so a batch without any
//    supervised token (e.g. prompt only) does not poison training.
//  - For HF's gradient-accumulation variant (sum / num_items_in_batch), scale the mean by count / num_items.
//  - Backward accumulates (softmax(row) - onehot(target)) * g / count into the logits' gradient row by row,
//    writing straight into the gradient buffer (no other [N, V] buffer). Ignored rows get nothing.
//  - linear_cross_entropy(hidden [..., C], weight [V, C]) == cross_entropy(hidden @ weight^T) but computes
//    the logits chunk_rows rows at a time with Eigen GEMMs and keeps only per-row (max, log-sum-exp) for
//    backward, which recomputes each chunk's logits: 1 GEMM forward, 3 backward, peak extra memory
//    chunk_rows x V compute-type values (plus, for 16-bit inputs, converted weight blocks). Ignored rows are
//    skipped (no GEMM work). Only inputs that require grad get a gradient.
//  - No final-logit softcap: SPEC §2 has final_logit_softcapping = null for Gemma3 (and Qwen3 has none).
//  - On Cuda (cuda/cross_entropy.hpp, kernels/cross_entropy.cu) the same contract, in f32, with one block per
//    row (online log-sum-exp) and, for linear_cross_entropy, cuBLASLt GEMMs over vocabulary chunks of at most
//    256 MB; the forward keeps only the per-row log-sum-exp (CrossEntropyContext<T, Cuda>).
#pragma once
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "distill/core/nvtx.hpp"
#include "distill/ops/softmax.hpp"
#ifdef DISTILL_WITH_CUDA
#include "distill/cuda/cross_entropy.hpp"
#endif

namespace distill {

inline constexpr int32_t kIgnoreIndex = -100;

// What the cross-entropy forwards keep for backward (indexed by active row a = 0..count-1).
template <FloatingDtype T, class D = Cpu>
struct CrossEntropyContext {
  using C = compute_t<T>;
  Tensor<int32_t> targets;      // [N] validated copy of the targets, flattened
  std::vector<int64_t> active;  // rows whose target is not ignore_index, ascending
  Tensor<C> row_max;            // [count] max logit of each active row
  Tensor<C> log_sum;            // [count] log(sum(exp(logit - row_max)))
  double loss = 0;              // mean over active rows; 0 when there are none
  int64_t count() const { return static_cast<int64_t>(active.size()); }
};

// On Cuda the forward keeps, on the device, only what the backward kernels read: the targets and the per-row
// log-sum-exp in f32 (no per-row max: softmax = exp(logit - lse)). The loss stays on the device too.
template <FloatingDtype T>
struct CrossEntropyContext<T, Cuda> {
  Tensor<int32_t, Cuda> targets;  // cross_entropy: [N] as given; linear_cross_entropy: [count] of the active rows
  Tensor<int32_t, Cuda> active;   // linear_cross_entropy: [count] active rows, ascending; undefined if all count
  Tensor<float, Cuda> lse;        // [N] (0 on ignored rows) or, linear_cross_entropy, [count]
  Tensor<T, Cuda> loss;           // [] mean over active rows; 0 when there are none
  int32_t ignore_index = kIgnoreIndex;
  int64_t n_rows = 0;    // N
  int64_t n_active = 0;  // count
  int64_t count() const { return n_active; }
};

namespace detail::rowwise {
inline void check_ce_shapes(const Shape& logits, const Shape& targets, const char* op) {
  if (logits.rank() < 1 || logits.without(-1) != targets)
    throw ShapeError(std::string(op) + ": logits " + logits.str() + " and targets " + targets.str() +
                     " do not match (targets must have the logits' shape without the class axis)");
}

// The rows of flat (contiguous [N]) targets that are not ignore_index, ascending; throws distill::Error naming
// the first target outside [0, V).
inline std::vector<int64_t> active_rows(const Tensor<int32_t>& flat, int64_t V, int32_t ignore_index, const char* op) {
  std::vector<int64_t> active;
  active.reserve(static_cast<size_t>(flat.numel()));
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const int32_t t = flat.data()[i];
    if (t == ignore_index) continue;
    if (t < 0 || t >= V)
      throw Error(std::string(op) + ": target " + std::to_string(t) + " at row " + std::to_string(i) +
                  " is outside [0, " + std::to_string(V) + ") and is not ignore_index (" +
                  std::to_string(ignore_index) + ")");
    active.push_back(i);
  }
  return active;
}

// Validates the targets against [0, V) and fills ctx.targets / ctx.active. Runs before any parallel region
// (an exception must not escape an OpenMP region).
template <class T>
void collect_targets(CrossEntropyContext<T>& ctx, const Tensor<int32_t>& targets, int64_t V, int32_t ignore_index,
                     const char* op) {
  ctx.targets = targets.clone().reshape({targets.numel()});
  ctx.active = active_rows(ctx.targets, V, ignore_index, op);
  ctx.row_max = Tensor<compute_t<T>>::empty({ctx.count()});
  ctx.log_sum = Tensor<compute_t<T>>::empty({ctx.count()});
}

template <class C>
using RowMajorMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class C>
using MatMap = Eigen::Map<RowMajorMat<C>>;
template <class C>
using ConstMatMap = Eigen::Map<const RowMajorMat<C>>;

// For 16-bit weights, the weight is converted to compute type in vocabulary blocks of about this many values.
inline constexpr int64_t kLceConvertBlockElems = int64_t{1} << 22;

template <class T>
int64_t lce_vocab_block(int64_t requested, int64_t V, int64_t C) {
  if (requested > 0) return std::min(requested, std::max<int64_t>(V, 1));
  if constexpr (std::is_same_v<T, compute_t<T>>) return std::max<int64_t>(V, 1);
  return std::clamp<int64_t>(kLceConvertBlockElems / std::max<int64_t>(C, 1), 1, std::max<int64_t>(V, 1));
}

// Rows [r0, r1) of a [R, K] T matrix as compute-type values (the rows themselves, or converted into buf).
template <class T>
const compute_t<T>* rows_as_compute(const T* base, int64_t r0, int64_t r1, int64_t K, std::vector<compute_t<T>>& buf) {
  if constexpr (std::is_same_v<T, compute_t<T>>) {
    return base + r0 * K;
  } else {
    buf.resize(static_cast<size_t>((r1 - r0) * K));
    for (int64_t i = 0; i < (r1 - r0) * K; ++i) buf[static_cast<size_t>(i)] = to_compute<T>(base[r0 * K + i]);
    return buf.data();
  }
}

// Active rows [a0, a1) of hidden [N, C] gathered into buf as compute-type values.
template <class T>
void gather_rows(const T* hidden, const std::vector<int64_t>& active, int64_t a0, int64_t a1, int64_t C,
                 std::vector<compute_t<T>>& buf) {
  buf.resize(static_cast<size_t>((a1 - a0) * C));
  for (int64_t a = a0; a < a1; ++a) {
    const T* src = hidden + active[static_cast<size_t>(a)] * C;
    for (int64_t c = 0; c < C; ++c) buf[static_cast<size_t>((a - a0) * C + c)] = to_compute<T>(src[c]);
  }
}

template <class T>
double grad_scalar(const Tensor<T>& g) {
  DISTILL_CHECK(g.numel() == 1, "a loss gradient must have one element, got ", g.shape().str());
  return f64(g.flat(0));
}
}  // namespace detail::rowwise

// ------------------------------------------------------------------------------------------------------
namespace ref {

// logits [..., V], targets [...] -> [] (mean over non-ignored rows; 0 when all are ignored)
template <FloatingDtype T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Tensor<int32_t>& targets, int32_t ignore_index = kIgnoreIndex) {
  detail::rowwise::check_ce_shapes(logits.shape(), targets.shape(), "ref::cross_entropy");
  const int64_t V = logits.shape().back(), N = targets.numel();
  const Tensor<T> x = logits.contiguous();
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = targets.flat(i);
    if (t == ignore_index) continue;
    DISTILL_CHECK(t >= 0 && t < V, "ref::cross_entropy: target ", t, " at row ", i, " is outside [0, ", V, ")");
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, detail::rowwise::f64(x.data()[i * V + j]));
    for (int64_t j = 0; j < V; ++j) s += std::exp(detail::rowwise::f64(x.data()[i * V + j]) - m);
    total += (m - detail::rowwise::f64(x.data()[i * V + t])) + std::log(s);
    ++count;
  }
  return Tensor<T>::full(Shape(), static_cast<T>(count ? total / static_cast<double>(count) : 0.0));
}

// d loss / d logits for an upstream gradient g: (softmax - onehot) * g / count on non-ignored rows.
template <FloatingDtype T>
Tensor<T> cross_entropy_backward(const Tensor<T>& logits, const Tensor<int32_t>& targets, double g,
                                 int32_t ignore_index = kIgnoreIndex) {
  detail::rowwise::check_ce_shapes(logits.shape(), targets.shape(), "ref::cross_entropy_backward");
  const int64_t V = logits.shape().back(), N = targets.numel();
  const Tensor<T> x = logits.contiguous();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) count += targets.flat(i) != ignore_index;
  auto dx = Tensor<T>::zeros(logits.shape());
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = targets.flat(i);
    if (t == ignore_index) continue;
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, detail::rowwise::f64(x.data()[i * V + j]));
    for (int64_t j = 0; j < V; ++j) s += std::exp(detail::rowwise::f64(x.data()[i * V + j]) - m);
    for (int64_t j = 0; j < V; ++j) {
      const double p = std::exp(detail::rowwise::f64(x.data()[i * V + j]) - m) / s;
      dx.data()[i * V + j] = static_cast<T>((p - (j == t ? 1.0 : 0.0)) * g / static_cast<double>(count));
    }
  }
  return dx;
}

// hidden [..., C] @ weight[V, C]^T -> [..., V] in double.
template <FloatingDtype T>
Tensor<double> linear_logits(const Tensor<T>& hidden, const Tensor<T>& weight) {
  const int64_t C = hidden.shape().back(), V = weight.dim(0), N = hidden.numel() / std::max<int64_t>(C, 1);
  const Tensor<T> h = hidden.contiguous(), w = weight.contiguous();
  auto out = Tensor<double>::empty(hidden.shape().with(-1, V));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t v = 0; v < V; ++v) {
      double acc = 0;
      for (int64_t c = 0; c < C; ++c)
        acc += detail::rowwise::f64(h.data()[i * C + c]) * detail::rowwise::f64(w.data()[v * C + c]);
      out.data()[i * V + v] = acc;
    }
  return out;
}

template <FloatingDtype T>
Tensor<T> linear_cross_entropy(const Tensor<T>& hidden, const Tensor<T>& weight, const Tensor<int32_t>& targets,
                               int32_t ignore_index = kIgnoreIndex) {
  return Tensor<T>::full(Shape(),
                         static_cast<T>(cross_entropy(linear_logits(hidden, weight), targets, ignore_index).flat(0)));
}

template <FloatingDtype T>
struct LinearGrads {
  Tensor<T> hidden;  // [..., C]
  Tensor<T> weight;  // [V, C]
};

// dhidden = dlogits @ weight, dweight = dlogits^T @ hidden, with dlogits from cross_entropy_backward.
template <FloatingDtype T>
LinearGrads<T> linear_cross_entropy_backward(const Tensor<T>& hidden, const Tensor<T>& weight,
                                             const Tensor<int32_t>& targets, double g,
                                             int32_t ignore_index = kIgnoreIndex) {
  const Tensor<double> dl = cross_entropy_backward(linear_logits(hidden, weight), targets, g, ignore_index);
  const int64_t C = hidden.shape().back(), V = weight.dim(0), N = targets.numel();
  const Tensor<T> h = hidden.contiguous(), w = weight.contiguous();
  LinearGrads<T> out{Tensor<T>::empty(hidden.shape()), Tensor<T>::empty(weight.shape())};
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0;
      for (int64_t v = 0; v < V; ++v) acc += dl.data()[i * V + v] * detail::rowwise::f64(w.data()[v * C + c]);
      out.hidden.data()[i * C + c] = static_cast<T>(acc);
    }
  for (int64_t v = 0; v < V; ++v)
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0;
      for (int64_t i = 0; i < N; ++i) acc += dl.data()[i * V + v] * detail::rowwise::f64(h.data()[i * C + c]);
      out.weight.data()[v * C + c] = static_cast<T>(acc);
    }
  return out;
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------------
namespace cpu {

// logits [..., V], targets [...]: the loss and what backward needs.
template <FloatingDtype T>
CrossEntropyContext<T> cross_entropy_forward(const Tensor<T>& logits, const Tensor<int32_t>& targets,
                                             int32_t ignore_index = kIgnoreIndex) {
  using C = compute_t<T>;
  detail::rowwise::check_ce_shapes(logits.shape(), targets.shape(), "cross_entropy");
  const int64_t V = logits.shape().back();
  CrossEntropyContext<T> ctx;
  detail::rowwise::collect_targets(ctx, targets, V, ignore_index, "cross_entropy");
  const Tensor<T> x = logits.contiguous();
  std::vector<C> row_loss(ctx.active.size());
  parallel_for(ctx.count(), detail::rowwise::row_grain(V), [&](int64_t b, int64_t e) {
    std::vector<C> buf;
    for (int64_t a = b; a < e; ++a) {
      const int64_t i = ctx.active[static_cast<size_t>(a)];
      const C* row = detail::rowwise::row_as_compute(x.data() + i * V, V, buf);
      const auto xr = detail::rowwise::ConstArrayMap<C>(row, V);
      const C m = xr.maxCoeff(), log_s = std::log((xr - m).exp().sum());
      ctx.row_max.data()[a] = m;
      ctx.log_sum.data()[a] = log_s;
      row_loss[static_cast<size_t>(a)] = (m - row[ctx.targets.data()[i]]) + log_s;
    }
  });
  double total = 0;
  for (C l : row_loss) total += static_cast<double>(l);
  ctx.loss = ctx.count() ? total / static_cast<double>(ctx.count()) : 0.0;
  return ctx;
}

// dlogits += (softmax(logits) - onehot(target)) * grad_out / count on the active rows.
template <FloatingDtype T>
void cross_entropy_backward(const Tensor<T>& logits, const CrossEntropyContext<T>& ctx, double grad_out,
                            const Tensor<T>& dlogits) {
  using C = compute_t<T>;
  detail::rowwise::check_grad_target(dlogits, logits.shape(), "cross_entropy_backward");
  if (ctx.count() == 0) return;
  const int64_t V = logits.shape().back();
  const Tensor<T> x = logits.contiguous();
  const C scale = static_cast<C>(grad_out / static_cast<double>(ctx.count()));
  parallel_for(ctx.count(), detail::rowwise::row_grain(V), [&](int64_t b, int64_t e) {
    std::vector<C> buf, dbuf(std::is_same_v<T, C> ? 0 : static_cast<size_t>(V));
    for (int64_t a = b; a < e; ++a) {
      const int64_t i = ctx.active[static_cast<size_t>(a)];
      const auto xr = detail::rowwise::ConstArrayMap<C>(detail::rowwise::row_as_compute(x.data() + i * V, V, buf), V);
      const C m = ctx.row_max.data()[a], log_s = ctx.log_sum.data()[a];
      const int32_t t = ctx.targets.data()[i];
      if constexpr (std::is_same_v<T, C>) {
        T* d = dlogits.data() + i * V;
        detail::rowwise::ArrayMap<C>(d, V) += ((xr - m) - log_s).exp() * scale;
        d[t] -= scale;
      } else {
        auto dr = detail::rowwise::ArrayMap<C>(dbuf.data(), V);
        dr = ((xr - m) - log_s).exp() * scale;
        dr[t] -= scale;
        detail::rowwise::add_into(dlogits.data() + i * V, dbuf.data(), V);
      }
    }
  });
}

// --- linear_cross_entropy -------------------------------------------------------------------------------
// hidden [..., C], weight [V, C], targets [...]. The loops run over vocabulary blocks of `vocab_block` rows of
// the weight (0 = all of V for f32/f64; blocks of ~4M converted values for 16-bit weights), and inside a block
// over chunks of chunk_rows active rows; the (max, log-sum-exp) of each row is merged across blocks online.

template <FloatingDtype T>
CrossEntropyContext<T> linear_cross_entropy_forward(const Tensor<T>& hidden, const Tensor<T>& weight,
                                                    const Tensor<int32_t>& targets, int32_t ignore_index = kIgnoreIndex,
                                                    int64_t chunk_rows = 256, int64_t vocab_block = 0) {
  using C = compute_t<T>;
  const char* op = "linear_cross_entropy";
  if (weight.rank() != 2 || hidden.rank() < 1 || hidden.shape().back() != weight.dim(1))
    throw ShapeError(std::string(op) + ": hidden " + hidden.shape().str() + " and weight " + weight.shape().str() +
                     " do not fit (want hidden [..., C] and weight [V, C])");
  detail::rowwise::check_ce_shapes(hidden.shape(), targets.shape(), op);
  DISTILL_CHECK(chunk_rows > 0, op, ": chunk_rows must be positive, got ", chunk_rows);
  const int64_t Cd = hidden.shape().back(), V = weight.dim(0);
  CrossEntropyContext<T> ctx;
  detail::rowwise::collect_targets(ctx, targets, V, ignore_index, op);
  const int64_t n = ctx.count();
  if (n == 0) return ctx;
  const Tensor<T> h = hidden.contiguous(), w = weight.contiguous();
  const int64_t vb = detail::rowwise::lce_vocab_block<T>(vocab_block, V, Cd), chunk = std::min(chunk_rows, n);
  C* row_max = ctx.row_max.data();
  C* log_sum = ctx.log_sum.data();  // holds sum(exp(logit - row_max)) until the end
  std::fill_n(row_max, n, -std::numeric_limits<C>::infinity());
  std::fill_n(log_sum, n, C(0));
  std::vector<C> target_logit(static_cast<size_t>(n)), wbuf, hbuf, tile(static_cast<size_t>(chunk * vb));
  for (int64_t v0 = 0; v0 < V; v0 += vb) {
    const int64_t v1 = std::min(V, v0 + vb);
    const auto W =
        detail::rowwise::ConstMatMap<C>(detail::rowwise::rows_as_compute(w.data(), v0, v1, Cd, wbuf), v1 - v0, Cd);
    for (int64_t a0 = 0; a0 < n; a0 += chunk) {
      const int64_t a1 = std::min(n, a0 + chunk), rows = a1 - a0, cols = v1 - v0;
      detail::rowwise::gather_rows(h.data(), ctx.active, a0, a1, Cd, hbuf);
      auto L = detail::rowwise::MatMap<C>(tile.data(), rows, cols);  // [rows, cols] logits of this tile
      L.noalias() = detail::rowwise::ConstMatMap<C>(hbuf.data(), rows, Cd) * W.transpose();
      parallel_for(rows, detail::rowwise::row_grain(cols), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t a = a0 + r;
          const auto lr = detail::rowwise::ConstArrayMap<C>(tile.data() + r * cols, cols);
          const C m = std::max(row_max[a], lr.maxCoeff());
          log_sum[a] = log_sum[a] * std::exp(row_max[a] - m) + (lr - m).exp().sum();
          row_max[a] = m;
          const int64_t t = ctx.targets.data()[ctx.active[static_cast<size_t>(a)]];
          if (t >= v0 && t < v1) target_logit[static_cast<size_t>(a)] = lr[t - v0];
        }
      });
    }
  }
  double total = 0;
  for (int64_t a = 0; a < n; ++a) {
    log_sum[a] = std::log(log_sum[a]);
    total += static_cast<double>((row_max[a] - target_logit[static_cast<size_t>(a)]) + log_sum[a]);
  }
  ctx.loss = total / static_cast<double>(n);
  return ctx;
}

// dhidden += dlogits @ weight and dweight += dlogits^T @ hidden, recomputing the logits tile by tile.
// Pass an undefined Tensor for a gradient that is not wanted.
template <FloatingDtype T>
void linear_cross_entropy_backward(const Tensor<T>& hidden, const Tensor<T>& weight, const CrossEntropyContext<T>& ctx,
                                   double grad_out, const Tensor<T>& dhidden, const Tensor<T>& dweight,
                                   int64_t chunk_rows = 256, int64_t vocab_block = 0) {
  using C = compute_t<T>;
  const bool want_h = dhidden.defined(), want_w = dweight.defined();
  if (want_h) detail::rowwise::check_grad_target(dhidden, hidden.shape(), "linear_cross_entropy_backward (hidden)");
  if (want_w) detail::rowwise::check_grad_target(dweight, weight.shape(), "linear_cross_entropy_backward (weight)");
  DISTILL_CHECK(chunk_rows > 0, "linear_cross_entropy_backward: chunk_rows must be positive, got ", chunk_rows);
  const int64_t n = ctx.count();
  if (n == 0 || !(want_h || want_w)) return;
  const int64_t Cd = hidden.shape().back(), V = weight.dim(0);
  const Tensor<T> h = hidden.contiguous(), w = weight.contiguous();
  const int64_t vb = detail::rowwise::lce_vocab_block<T>(vocab_block, V, Cd), chunk = std::min(chunk_rows, n);
  const C scale = static_cast<C>(grad_out / static_cast<double>(n));
  // dhidden of the active rows, accumulated over vocabulary blocks in compute type, scattered at the end.
  std::vector<C> dh(want_h ? static_cast<size_t>(n * Cd) : 0), dwbuf, wbuf, hbuf;
  std::vector<C> tile(static_cast<size_t>(chunk * vb));
  for (int64_t v0 = 0; v0 < V; v0 += vb) {
    const int64_t v1 = std::min(V, v0 + vb), cols = v1 - v0;
    const auto W =
        detail::rowwise::ConstMatMap<C>(detail::rowwise::rows_as_compute(w.data(), v0, v1, Cd, wbuf), cols, Cd);
    C* dw_block = nullptr;  // [cols, Cd]: the gradient rows themselves for f32/f64, else a compute-type block
    if (want_w) {
      if constexpr (std::is_same_v<T, C>) {
        dw_block = dweight.data() + v0 * Cd;
      } else {
        dwbuf.assign(static_cast<size_t>(cols * Cd), C(0));
        dw_block = dwbuf.data();
      }
    }
    for (int64_t a0 = 0; a0 < n; a0 += chunk) {
      const int64_t a1 = std::min(n, a0 + chunk), rows = a1 - a0;
      detail::rowwise::gather_rows(h.data(), ctx.active, a0, a1, Cd, hbuf);
      const auto H = detail::rowwise::ConstMatMap<C>(hbuf.data(), rows, Cd);
      auto L = detail::rowwise::MatMap<C>(tile.data(), rows, cols);
      L.noalias() = H * W.transpose();
      // The tile becomes dlogits in place: (softmax - onehot) * scale.
      parallel_for(rows, detail::rowwise::row_grain(cols), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t a = a0 + r;
          auto lr = detail::rowwise::ArrayMap<C>(tile.data() + r * cols, cols);
          lr = ((lr - ctx.row_max.data()[a]) - ctx.log_sum.data()[a]).exp() * scale;
          const int64_t t = ctx.targets.data()[ctx.active[static_cast<size_t>(a)]];
          if (t >= v0 && t < v1) lr[t - v0] -= scale;
        }
      });
      if (want_h) detail::rowwise::MatMap<C>(dh.data() + a0 * Cd, rows, Cd).noalias() += L * W;
      if (want_w) detail::rowwise::MatMap<C>(dw_block, cols, Cd).noalias() += L.transpose() * H;
    }
    if constexpr (!std::is_same_v<T, C>)
      if (want_w)
        for (int64_t v = 0; v < cols; ++v)
          detail::rowwise::add_into(dweight.data() + (v0 + v) * Cd, dwbuf.data() + v * Cd, Cd);
  }
  if (want_h)
    for (int64_t a = 0; a < n; ++a)
      detail::rowwise::add_into(dhidden.data() + ctx.active[static_cast<size_t>(a)] * Cd, dh.data() + a * Cd, Cd);
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------------
#ifdef DISTILL_WITH_CUDA
// Tensor-level Cuda paths (kernels/cross_entropy.cu): the same contract as cpu::, the targets checked on the
// host. Forwards return the context with the loss on the device; backwards take the upstream gradient as a
// one-element device tensor (no host round trip) and accumulate into contiguous gradient buffers.
namespace cuda {

namespace detail_ce {
template <class T>
void check_grad_buffer(const Tensor<T, Cuda>& d, const Shape& want, const char* op) {
  check_same_shape(d.shape(), want, op);
  DISTILL_CHECK(d.is_contiguous(), op, ": the gradient buffer must be contiguous");
}
template <class T>
const T* scalar_grad(const Tensor<T, Cuda>& g, const char* op) {
  DISTILL_CHECK(g.numel() == 1, op, ": a loss gradient must have one element, got ", g.shape().str());
  return g.data();  // one element: contiguous whatever its strides
}
}  // namespace detail_ce

// logits [..., V] on the device, targets [...] on the host.
template <FloatingDtype T>
CrossEntropyContext<T, Cuda> cross_entropy_forward(const Tensor<T, Cuda>& logits, const Tensor<int32_t>& targets,
                                                   int32_t ignore_index = kIgnoreIndex) {
  ::distill::detail::rowwise::check_ce_shapes(logits.shape(), targets.shape(), "cross_entropy");
  const int64_t V = logits.shape().back(), N = targets.numel();
  const Tensor<int32_t> t = targets.contiguous().reshape({N});
  CrossEntropyContext<T, Cuda> ctx;
  ctx.n_active =
      static_cast<int64_t>(::distill::detail::rowwise::active_rows(t, V, ignore_index, "cross_entropy").size());
  ctx.ignore_index = ignore_index;
  ctx.n_rows = N;
  ctx.targets = t.template to<Cuda>();
  ctx.lse = Tensor<float, Cuda>::empty({N});
  ctx.loss = Tensor<T, Cuda>::empty(Shape());
  const Tensor<T, Cuda> x = logits.contiguous();
  cross_entropy_forward(x.data(), N, V, ctx.targets.data(), ignore_index, ctx.count(), ctx.lse.data(), ctx.loss.data());
  return ctx;
}

// dlogits += (softmax(logits) - onehot(target)) * grad_out / count on the active rows.
template <FloatingDtype T>
void cross_entropy_backward(const Tensor<T, Cuda>& logits, const CrossEntropyContext<T, Cuda>& ctx,
                            const Tensor<T, Cuda>& grad_out, const Tensor<T, Cuda>& dlogits) {
  detail_ce::check_grad_buffer(dlogits, logits.shape(), "cross_entropy_backward");
  const T* g = detail_ce::scalar_grad(grad_out, "cross_entropy_backward");
  if (ctx.count() == 0) return;
  const Tensor<T, Cuda> x = logits.contiguous();
  cross_entropy_backward(x.data(), ctx.n_rows, logits.shape().back(), ctx.targets.data(), ctx.ignore_index, ctx.count(),
                         ctx.lse.data(), g, dlogits.data());
}

// hidden [..., C] and weight [V, C] on the device, targets [...] on the host. vocab_chunk / row_chunk > 0
// force the tiling (tests); 0 keeps the logits chunk under cuda::kLceChunkBytes.
template <FloatingDtype T>
CrossEntropyContext<T, Cuda> linear_cross_entropy_forward(const Tensor<T, Cuda>& hidden, const Tensor<T, Cuda>& weight,
                                                          const Tensor<int32_t>& targets,
                                                          int32_t ignore_index = kIgnoreIndex, int64_t vocab_chunk = 0,
                                                          int64_t row_chunk = 0) {
  const char* op = "linear_cross_entropy";
  if (weight.rank() != 2 || hidden.rank() < 1 || hidden.shape().back() != weight.dim(1))
    throw ShapeError(std::string(op) + ": hidden " + hidden.shape().str() + " and weight " + weight.shape().str() +
                     " do not fit (want hidden [..., C] and weight [V, C])");
  ::distill::detail::rowwise::check_ce_shapes(hidden.shape(), targets.shape(), op);
  const int64_t Cd = hidden.shape().back(), V = weight.dim(0), N = targets.numel();
  DISTILL_CHECK(N <= std::numeric_limits<int32_t>::max(), op, ": ", N, " rows exceed int32 row indices");
  const Tensor<int32_t> t = targets.contiguous().reshape({N});
  const std::vector<int64_t> active = ::distill::detail::rowwise::active_rows(t, V, ignore_index, op);
  const int64_t n = static_cast<int64_t>(active.size());
  CrossEntropyContext<T, Cuda> ctx;
  ctx.ignore_index = ignore_index;
  ctx.n_rows = N;
  ctx.n_active = n;
  ctx.loss = Tensor<T, Cuda>::zeros(Shape());
  if (n == 0) return ctx;
  if (n == N) {
    ctx.targets = t.template to<Cuda>();
  } else {  // compact: the active rows and their targets
    auto rows = Tensor<int32_t>::empty({n}), tg = Tensor<int32_t>::empty({n});
    for (int64_t a = 0; a < n; ++a) {
      rows.data()[a] = static_cast<int32_t>(active[static_cast<size_t>(a)]);
      tg.data()[a] = t.data()[active[static_cast<size_t>(a)]];
    }
    ctx.active = rows.template to<Cuda>();
    ctx.targets = tg.template to<Cuda>();
  }
  ctx.lse = Tensor<float, Cuda>::empty({n});
  const Tensor<T, Cuda> h = hidden.contiguous(), w = weight.contiguous();
  linear_cross_entropy_forward(h.data(), w.data(), N, Cd, V, ctx.active.defined() ? ctx.active.data() : nullptr,
                               ctx.targets.data(), n, ctx.lse.data(), ctx.loss.data(), vocab_chunk, row_chunk);
  return ctx;
}

// dhidden += dlogits @ weight and dweight += dlogits^T @ hidden, recomputing the logits chunk by chunk.
// Pass an undefined Tensor for a gradient that is not wanted.
template <FloatingDtype T>
void linear_cross_entropy_backward(const Tensor<T, Cuda>& hidden, const Tensor<T, Cuda>& weight,
                                   const CrossEntropyContext<T, Cuda>& ctx, const Tensor<T, Cuda>& grad_out,
                                   const Tensor<T, Cuda>& dhidden, const Tensor<T, Cuda>& dweight,
                                   int64_t vocab_chunk = 0, int64_t row_chunk = 0) {
  const bool want_h = dhidden.defined(), want_w = dweight.defined();
  if (want_h) detail_ce::check_grad_buffer(dhidden, hidden.shape(), "linear_cross_entropy_backward (hidden)");
  if (want_w) detail_ce::check_grad_buffer(dweight, weight.shape(), "linear_cross_entropy_backward (weight)");
  const T* g = detail_ce::scalar_grad(grad_out, "linear_cross_entropy_backward");
  if (ctx.count() == 0 || !(want_h || want_w)) return;
  const Tensor<T, Cuda> h = hidden.contiguous(), w = weight.contiguous();
  linear_cross_entropy_backward(h.data(), w.data(), ctx.n_rows, hidden.shape().back(), weight.dim(0),
                                ctx.active.defined() ? ctx.active.data() : nullptr, ctx.targets.data(), ctx.count(),
                                ctx.lse.data(), g, want_h ? dhidden.data() : nullptr, want_w ? dweight.data() : nullptr,
                                vocab_chunk, row_chunk);
}

}  // namespace cuda
#endif

// ------------------------------------------------------------------------------------------------------
// Recorded ops. Both return a one-element rank-0 Var. On Cuda the targets stay host tensors (checked there,
// then copied once); the loss and everything backward needs stay on the device.

// logits [N, V] (or [..., V]), targets [N] (or [...]) -> []
template <FloatingDtype T, class D>
Var<T, D> cross_entropy(const Var<T, D>& logits, const Tensor<int32_t>& targets, int32_t ignore_index = kIgnoreIndex) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("cross_entropy");
    auto ctx = std::make_shared<const CrossEntropyContext<T, Cuda>>(
        cuda::cross_entropy_forward(logits.value(), targets, ignore_index));
    return Var<T, D>::record("cross_entropy", ctx->loss, {logits.node()}, [logits, ctx](auto& self) {
      if (logits.requires_grad()) cuda::cross_entropy_backward(logits.value(), *ctx, self.grad, logits.grad_buffer());
    });
#else
    static_assert(expr::dependent_false_v<T>,
                  "cross_entropy on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    auto ctx = cpu::cross_entropy_forward(logits.value(), targets, ignore_index);
    auto loss = Tensor<T, D>::full(Shape(), from_compute<T>(static_cast<compute_t<T>>(ctx.loss)));
    return Var<T, D>::record(
        "cross_entropy", loss, {logits.node()},
        [logits, ctx = std::make_shared<const CrossEntropyContext<T>>(std::move(ctx))](auto& self) {
          if (logits.requires_grad())
            cpu::cross_entropy_backward(logits.value(), *ctx, detail::rowwise::grad_scalar(self.grad),
                                        logits.grad_buffer());
        });
  }
}

// hidden [N, C] (or [..., C]), weight [V, C], targets [N] (or [...]) -> []: cross_entropy(hidden @ weight^T)
// without the [N, V] logits; chunk_rows rows of logits exist at a time. On Cuda chunk_rows is not used: the
// logits are tiled by vocabulary chunks under cuda::kLceChunkBytes (see cuda/cross_entropy.hpp).
template <FloatingDtype T, class D>
Var<T, D> linear_cross_entropy(const Var<T, D>& hidden, const Var<T, D>& weight, const Tensor<int32_t>& targets,
                               int32_t ignore_index = kIgnoreIndex, int64_t chunk_rows = 256) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("linear_cross_entropy");
    auto ctx = std::make_shared<const CrossEntropyContext<T, Cuda>>(
        cuda::linear_cross_entropy_forward(hidden.value(), weight.value(), targets, ignore_index));
    return Var<T, D>::record(
        "linear_cross_entropy", ctx->loss, {hidden.node(), weight.node()}, [hidden, weight, ctx](auto& self) {
          const Tensor<T, D> dh = hidden.requires_grad() ? hidden.grad_buffer() : Tensor<T, D>();
          const Tensor<T, D> dw = weight.requires_grad() ? weight.grad_buffer() : Tensor<T, D>();
          cuda::linear_cross_entropy_backward(hidden.value(), weight.value(), *ctx, self.grad, dh, dw);
        });
#else
    static_assert(expr::dependent_false_v<T>,
                  "linear_cross_entropy on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is "
                  "found)");
#endif
  } else {
    auto ctx = cpu::linear_cross_entropy_forward(hidden.value(), weight.value(), targets, ignore_index, chunk_rows);
    auto loss = Tensor<T, D>::full(Shape(), from_compute<T>(static_cast<compute_t<T>>(ctx.loss)));
    return Var<T, D>::record(
        "linear_cross_entropy", loss, {hidden.node(), weight.node()},
        [hidden, weight, chunk_rows, ctx = std::make_shared<const CrossEntropyContext<T>>(std::move(ctx))](auto& self) {
          const Tensor<T, D> dh = hidden.requires_grad() ? hidden.grad_buffer() : Tensor<T, D>();
          const Tensor<T, D> dw = weight.requires_grad() ? weight.grad_buffer() : Tensor<T, D>();
          cpu::linear_cross_entropy_backward(hidden.value(), weight.value(), *ctx,
                                             detail::rowwise::grad_scalar(self.grad), dh, dw, chunk_rows);
        });
  }
}

}  // namespace distill
