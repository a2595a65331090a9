// Logit distillation losses (issue 10): forward KL, reverse KL and generalized JSD(beta) between the student's
// and the teacher's next-token distributions at temperature T, on given logits or fused with the student's lm
// head so that only `chunk_rows` rows of logits exist at a time.
//
// Definitions (TRL's GKDTrainer.generalized_jsd_loss and Liger's LigerJSD; tools/golden/kd.py checks them with
// PyTorch autograd). Per position, with p_S = softmax(student / T) and p_T = softmax(teacher / T):
//   ForwardKL  KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)       mean-seeking: cover every teacher mode
//   ReverseKL  KL(p_S || p_T) = sum_v p_S (log p_S - log p_T)       mode-seeking
//   JSD(beta)  beta KL(p_T || M) + (1 - beta) KL(p_S || M),  M = beta p_T + (1 - beta) p_S,  0 < beta < 1
// loss = scale * (sum over valid positions) / norm, with scale = T^2 when t2_scale (Hinton et al.: keeps the
// gradient's size independent of T; TRL leaves it out) and norm = the number of valid positions, or the caller's
// count -- the global count of valid tokens across gradient-accumulation steps and processes, so that summing the
// micro-batches' losses gives the mean over the whole batch.
//
// Gradients with respect to the student's logits s (the teacher is constant), per valid row, times scale / norm:
//   ForwardKL  (p_S - p_T) / T
//   ReverseKL  p_S * (u - sum p_S u) / T,  u = log p_S - log p_T
//   JSD        p_S * (u - sum p_S u) / T,  u = (1 - beta) (log p_S - log M)
// Rows are computed in double (log-softmax with the max subtracted; log M by log-sum-exp of the two weighted
// log-probabilities, never log of a sum that underflows), summed in row order: deterministic for any thread count.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/parallel.hpp"
#include "distill/ops/cross_entropy.hpp"
#include "distill/ops/reduce.hpp"

namespace distill::train {

enum class KdDivergence : uint8_t { ForwardKL, ReverseKL, JSD };

inline const char* kd_divergence_name(KdDivergence d) {
  return d == KdDivergence::ForwardKL ? "kl" : d == KdDivergence::ReverseKL ? "rkl" : "jsd";
}
// "kl" (or "fkl", "forward_kl"), "rkl" (or "reverse_kl"), "jsd".
inline KdDivergence parse_kd_divergence(std::string_view s) {
  if (s == "kl" || s == "fkl" || s == "forward_kl") return KdDivergence::ForwardKL;
  if (s == "rkl" || s == "reverse_kl") return KdDivergence::ReverseKL;
  if (s == "jsd") return KdDivergence::JSD;
  throw Error("unknown distillation divergence \"" + std::string(s) + "\"; expected kl, rkl or jsd");
}

struct KdConfig {
  KdDivergence div = KdDivergence::ForwardKL;
  double beta = 0.5;         // JSD only: the teacher's weight in the mixture
  double temperature = 1.0;  // T > 0
  bool t2_scale = true;      // multiply by T^2
  void validate() const {
    DISTILL_CHECK(temperature > 0 && std::isfinite(temperature), "KD temperature must be positive, got ", temperature);
    if (div == KdDivergence::JSD)
      DISTILL_CHECK(beta > 0 && beta < 1, "JSD beta must lie strictly between 0 and 1 (0 and 1 are the KLs: use ",
                    "--kd rkl or kl), got ", beta);
  }
  double scale() const { return t2_scale ? temperature * temperature : 1.0; }
};

namespace ref {

// One position's divergence from student logits s[V] and teacher logits t[V]; when grad is given, also
// d(divergence)/ds times g, ADDED to grad[V]. `work` holds 3*V doubles of scratch.
inline double kd_row(const double* s, const double* t, int64_t V, const KdConfig& c, double g, double* grad,
                     double* work) {
  const double invT = 1.0 / c.temperature;
  double* ls = work;      // log p_S
  double* lt = work + V;  // log p_T
  double* u = work + 2 * V;
  auto log_softmax = [&](const double* x, double* out) {
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, x[v] * invT);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(x[v] * invT - m);
    const double lz = m + std::log(z);
    for (int64_t v = 0; v < V; ++v) out[v] = x[v] * invT - lz;
  };
  log_softmax(s, ls);
  log_softmax(t, lt);
  double d = 0;
  switch (c.div) {
    case KdDivergence::ForwardKL:
      for (int64_t v = 0; v < V; ++v) d += std::exp(lt[v]) * (lt[v] - ls[v]);
      if (grad)
        for (int64_t v = 0; v < V; ++v) grad[v] += g * invT * (std::exp(ls[v]) - std::exp(lt[v]));
      return d;
    case KdDivergence::ReverseKL:
      for (int64_t v = 0; v < V; ++v) {
        u[v] = ls[v] - lt[v];
        d += std::exp(ls[v]) * u[v];
      }
      break;
    case KdDivergence::JSD: {
      const double lb = std::log(c.beta), l1b = std::log1p(-c.beta);
      for (int64_t v = 0; v < V; ++v) {
        const double a = lt[v] + lb, b = ls[v] + l1b;  // log(beta p_T), log((1 - beta) p_S)
        const double hi = std::max(a, b);
        const double lm = hi + std::log1p(std::exp(std::min(a, b) - hi));  // log M
        d += c.beta * std::exp(lt[v]) * (lt[v] - lm) + (1 - c.beta) * std::exp(ls[v]) * (ls[v] - lm);
        u[v] = (1 - c.beta) * (ls[v] - lm);
      }
      break;
    }
  }
  if (grad) {  // softmax's Jacobian: p_S * (u - <p_S, u>)
    double mean = 0;
    for (int64_t v = 0; v < V; ++v) mean += std::exp(ls[v]) * u[v];
    for (int64_t v = 0; v < V; ++v) grad[v] += g * invT * std::exp(ls[v]) * (u[v] - mean);
  }
  return d;
}

}  // namespace ref

namespace detail_kd {

using distill::detail::rowwise::f64;          // an element as a double, through its compute type
using distill::detail::rowwise::grad_scalar;  // a loss's upstream gradient

inline std::vector<uint8_t> valid_rows(const Tensor<int32_t>& valid, int64_t N, const char* who) {
  std::vector<uint8_t> ok(static_cast<size_t>(N), 1);
  if (!valid.defined()) return ok;
  DISTILL_CHECK(valid.numel() == N, who, ": valid has ", valid.numel(), " entries for ", N, " positions");
  const Tensor<int32_t> v = valid.contiguous();
  for (int64_t i = 0; i < N; ++i) ok[static_cast<size_t>(i)] = v.data()[i] != 0;
  return ok;
}

inline double norm_of(double norm, const std::vector<uint8_t>& ok) {
  if (norm > 0) return norm;
  double n = 0;
  for (uint8_t o : ok) n += o;
  return n;
}

// Rows [r0, r1) of row-major student values s (VS per row) and teacher values t (VT per row), any element types,
// in parallel over valid rows: d_out[i] = row(s_row, t_row, grad_row, work) with the rows as doubles; grad_row
// (dst + i * VS) is null when dst is. Invalid rows get 0. `work_size` doubles of scratch per thread.
template <class S, class U, class Row>
void rows(const S* s, int64_t VS, const U* t, int64_t VT, int64_t r0, int64_t r1, const std::vector<uint8_t>& ok,
          int64_t work_size, double* d_out, double* dst, const Row& row) {
  parallel_for(r1 - r0, 1, [&](int64_t a, int64_t b) {
    std::vector<double> sv(static_cast<size_t>(VS)), tv(static_cast<size_t>(VT)), work(static_cast<size_t>(work_size));
    for (int64_t i = a; i < b; ++i) {
      if (!ok[static_cast<size_t>(r0 + i)]) {
        d_out[i] = 0;
        continue;
      }
      for (int64_t v = 0; v < VS; ++v) sv[static_cast<size_t>(v)] = f64(s[i * VS + v]);
      for (int64_t v = 0; v < VT; ++v) tv[static_cast<size_t>(v)] = f64(t[i * VT + v]);
      d_out[i] = row(sv.data(), tv.data(), dst ? dst + i * VS : nullptr, work.data());
    }
  });
}

// The divergence rows of kd.hpp's KdConfig (same vocabulary on both sides).
template <class S, class U>
void kd_rows(const S* s, const U* t, int64_t r0, int64_t r1, int64_t V, const std::vector<uint8_t>& ok,
             const KdConfig& c, double* d_out, double g, double* dst) {
  rows(s, V, t, V, r0, r1, ok, 3 * V, d_out, dst, [&](const double* sv, const double* tv, double* grad, double* work) {
    return ref::kd_row(sv, tv, V, c, g, grad, work);
  });
}

// A loss value as the element type T.
template <class T>
T as_value(double x) {
  return from_compute<T>(static_cast<compute_t<T>>(x));
}

// Adds a double gradient (row-major, the Var's element count) into its contiguous gradient buffer.
template <class T>
void add_grad(Tensor<T>& gb, const std::vector<double>& gr, const char* who) {
  DISTILL_CHECK(gb.is_contiguous(), who, ": the gradient buffer must be contiguous");
  for (int64_t i = 0; i < gb.numel(); ++i) gb.data()[i] = as_value<T>(f64(gb.data()[i]) + gr[static_cast<size_t>(i)]);
}

}  // namespace detail_kd

// Rows [r0, r1) of hidden [N, C] @ weight[V, C]^T (both contiguous) as f32 [r1 - r0, V]: a model's logits a chunk
// of positions at a time (the student's in linear_kd_loss; a same-tokenizer teacher's TeacherRows).
inline Tensor<float> head_logits(const Tensor<float>& hidden, const Tensor<float>& weight, int64_t r0, int64_t r1) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t C = weight.dim(1), V = weight.dim(0);
  Tensor<float> out = Tensor<float>::zeros({r1 - r0, V});
  Eigen::Map<Mat>(out.data(), r1 - r0, V).noalias() = Eigen::Map<const Mat>(hidden.data() + r0 * C, r1 - r0, C) *
                                                      Eigen::Map<const Mat>(weight.data(), V, C).transpose();
  return out;
}

// student [N, V] (or [..., V]), teacher of the same shape (constant), valid [N] (nonzero: the position counts;
// an undefined Tensor<int32_t>(): all) -> a rank-0 Var: scale * sum_valid divergence / norm (norm 0: the number of
// valid positions).
template <FloatingDtype T, FloatingDtype U>
Var<T> kd_loss(const Var<T>& student, const Tensor<U>& teacher, const Tensor<int32_t>& valid, const KdConfig& c,
               double norm = 0) {
  c.validate();
  const Shape& sh = student.value().shape();
  DISTILL_CHECK(sh.rank() >= 1 && sh == teacher.shape(), "kd_loss: student logits ", sh.str(), " and teacher logits ",
                teacher.shape().str(), " must have the same shape");
  const int64_t V = sh.back(), N = student.value().numel() / std::max<int64_t>(V, 1);
  const auto ok = std::make_shared<const std::vector<uint8_t>>(detail_kd::valid_rows(valid, N, "kd_loss"));
  const double nrm = detail_kd::norm_of(norm, *ok);
  const Tensor<T> s = student.value().contiguous();
  const Tensor<U> t = teacher.contiguous();
  std::vector<double> d(static_cast<size_t>(N));
  detail_kd::kd_rows(s.data(), t.data(), 0, N, V, *ok, c, d.data(), 0.0, nullptr);
  double sum = 0;
  for (double x : d) sum += x;
  const double loss = nrm > 0 ? c.scale() * sum / nrm : 0.0;
  return Var<T>::record("kd_loss", Tensor<T>::full(Shape(), detail_kd::as_value<T>(loss)), {student.node()},
                        [student, t, ok, c, nrm, N, V](auto& self) {
                          if (!student.requires_grad() || nrm <= 0) return;
                          const double g = detail_kd::grad_scalar(self.grad) * c.scale() / nrm;
                          const Tensor<T> s = student.value().contiguous();
                          std::vector<double> dd(static_cast<size_t>(N)), gr(static_cast<size_t>(N * V), 0.0);
                          detail_kd::kd_rows(s.data(), t.data(), 0, N, V, *ok, c, dd.data(), g, gr.data());
                          detail_kd::add_grad(student.grad_buffer(), gr, "kd_loss");
                        });
}

// ---- Cross-tokenizer: Universal Logit Distillation (Boizard et al. 2024) ---------------------------------------
// When the teacher's vocabulary differs from the student's (Qwen3 -> Gemma3), the two distributions have no common
// support to compare token by token. ULD compares their shapes instead: per aligned position,
//   d = sum_i |sort_desc(p_S)_i - sort_desc(p_T)_i|      (the shorter vocabulary padded with zeros)
// -- the closed form of the Wasserstein-1 distance between the sorted probability vectors. p = softmax(logits / T);
// no T^2 scale. loss = sum over valid positions / norm (0: the valid count). Gradient, per row: with
// u_j = sign(sorted difference at j's rank), ds = p_S * (u - <p_S, u>) / T (sort is a permutation; ties, which
// random or trained logits practically never have, take the order std::stable_sort gives).
//
// Alignment rule (uld_align): the answer is the same text under both tokenizers, tokenized differently; the k-th
// position that predicts an answer token in the student's sequence is paired with the k-th such position in the
// teacher's, for k < min(both counts) -- the rule of the ULD paper (answers truncated to the shorter length). The
// pairs are positions in each sequence; the caller gathers the student's rows and the teacher's rows with them.
inline std::vector<std::pair<int64_t, int64_t>> uld_align(const std::vector<uint8_t>& student_answer,
                                                          const std::vector<uint8_t>& teacher_answer) {
  std::vector<int64_t> a, b;
  for (size_t i = 0; i < student_answer.size(); ++i)
    if (student_answer[i]) a.push_back(static_cast<int64_t>(i));
  for (size_t i = 0; i < teacher_answer.size(); ++i)
    if (teacher_answer[i]) b.push_back(static_cast<int64_t>(i));
  std::vector<std::pair<int64_t, int64_t>> out;
  for (size_t k = 0; k < std::min(a.size(), b.size()); ++k) out.emplace_back(a[k], b[k]);
  return out;
}

namespace ref {

// One aligned position: the ULD distance, and (when grad is given) its gradient w.r.t. the student's logits times
// g, ADDED to grad[VS]. `work` holds 2*max(VS, VT) + 2*VS doubles.
inline double uld_row(const double* s, int64_t VS, const double* t, int64_t VT, double T, double g, double* grad,
                      double* work) {
  const int64_t Vm = std::max(VS, VT);
  double* ps = work;        // p_S (unsorted), VS
  double* pss = work + VS;  // sorted p_S padded, Vm
  double* pts = pss + Vm;   // sorted p_T padded, Vm
  double* u = pts + Vm;     // sign per student token, VS
  auto softmax = [T](const double* x, int64_t V, double* out) {
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, x[v] / T);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += (out[v] = std::exp(x[v] / T - m));
    for (int64_t v = 0; v < V; ++v) out[v] /= z;
  };
  softmax(s, VS, ps);
  softmax(t, VT, pts);
  std::fill(pts + VT, pts + Vm, 0.0);
  std::sort(pts, pts + Vm, std::greater<double>());
  std::vector<int64_t> order(static_cast<size_t>(VS));
  for (int64_t v = 0; v < VS; ++v) order[static_cast<size_t>(v)] = v;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ps[a] > ps[b]; });
  for (int64_t r = 0; r < Vm; ++r) pss[r] = r < VS ? ps[order[static_cast<size_t>(r)]] : 0.0;
  double d = 0;
  for (int64_t r = 0; r < Vm; ++r) d += std::abs(pss[r] - pts[r]);
  if (grad) {
    double mean = 0;
    for (int64_t r = 0; r < VS; ++r) {
      const double diff = pss[r] - pts[r];
      const int64_t j = order[static_cast<size_t>(r)];
      u[j] = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
      mean += ps[j] * u[j];
    }
    for (int64_t j = 0; j < VS; ++j) grad[j] += g / T * ps[j] * (u[j] - mean);
  }
  return d;
}

// ---- Top-K teacher rows: offline logits, or a teacher with another tokenizer seen through the shared vocabulary --
// A top-K row of width 2K + 1 describes the teacher's distribution in the STUDENT's vocabulary as K + 1 buckets:
//   [ids: K student token ids, stored as floats (exact below 2^24; -1 = unused)]
//   [log-probs: K teacher log-probabilities of those tokens]
//   [tail: log of the teacher's remaining mass -- every other token, -inf when none]
// The divergence is taken between the two bucket distributions: the teacher's buckets as given (log-probs floored
// at -69, ~1e-30, then renormalized, so that rounding in a stored file never makes a KL negative or a reverse KL
// infinite), and the student's q_b = sum of p_S over the bucket's tokens (the tail bucket: every token not listed;
// dropped on both sides when the K ids cover the whole student vocabulary). An id listed twice merges into one
// bucket; an id outside the student's vocabulary adds its mass to the tail. With K = V and every id listed once
// this is exactly kd_row. The teacher's rows are taken as they are (the temperature applies to the student: a
// caller that wants the teacher at T builds its rows at T; offline rows are at T = 1).
// Gradient w.r.t. the student's logits (chain rule through q_b = sum_{v in b} p_v): with f_b = df/dq_b,
//   dd/ds_v = p_v (f_b(v) - sum_b q_b f_b) / T
//   ForwardKL f_b = -pT_b / q_b;  ReverseKL f_b = log q_b - log pT_b (+1, which cancels);
//   JSD f_b = (1 - beta)(log q_b - log M_b) (as in kd_row).
inline constexpr double kTopkLogFloor = -69.0;

// `work` holds 2*V + 4*(K + 1) doubles.
inline double topk_kd_row(const double* s, int64_t V, const double* row, int64_t K, const KdConfig& c, double g,
                          double* grad, double* work) {
  const double invT = 1.0 / c.temperature;
  double* ls = work;           // log p_S [V]
  double* bucket = work + V;   // bucket index of each student token, as a double [V]
  double* lt = work + 2 * V;   // teacher log-mass per bucket [K + 1]
  double* lq = lt + (K + 1);   // student log-mass per bucket
  double* u = lq + (K + 1);    // f_b
  double* used = u + (K + 1);  // 1 when the bucket takes part
  auto lse2 = [](double a, double b) {
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    const double hi = std::max(a, b);
    return hi + std::log1p(std::exp(std::min(a, b) - hi));
  };
  double m = -INFINITY;
  for (int64_t v = 0; v < V; ++v) m = std::max(m, s[v] * invT);
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(s[v] * invT - m);
  const double lz = m + std::log(z);
  for (int64_t v = 0; v < V; ++v) {
    ls[v] = s[v] * invT - lz;
    bucket[v] = static_cast<double>(K);
  }
  for (int64_t b = 0; b <= K; ++b) lt[b] = lq[b] = -INFINITY, used[b] = 0;
  lt[K] = row[2 * K];
  for (int64_t k = 0; k < K; ++k) {
    const double idf = row[k], lp = row[K + k];
    if (lp == -INFINITY || std::isnan(lp)) continue;
    const bool in_vocab = idf >= 0 && idf < static_cast<double>(V) && idf == std::floor(idf);
    if (!in_vocab) {
      if (idf >= 0) lt[K] = lse2(lt[K], lp);  // a teacher token the student does not have: tail mass
      continue;
    }
    const auto id = static_cast<int64_t>(idf);
    const auto b = static_cast<int64_t>(bucket[id]) == K ? k : static_cast<int64_t>(bucket[id]);
    bucket[id] = static_cast<double>(b);
    lt[b] = lse2(lt[b], lp);
    used[b] = 1;
  }
  for (int64_t v = 0; v < V; ++v) {
    const auto b = static_cast<int64_t>(bucket[v]);
    lq[b] = lse2(lq[b], ls[v]);
  }
  used[K] = lq[K] > -INFINITY ? 1 : 0;  // some student token is in no listed bucket
  double lnorm = -INFINITY;
  for (int64_t b = 0; b <= K; ++b)
    if (used[b]) {
      lt[b] = std::max(lt[b], kTopkLogFloor);
      lnorm = lse2(lnorm, lt[b]);
    }
  double d = 0;
  for (int64_t b = 0; b <= K; ++b) {
    if (!used[b]) continue;
    lt[b] -= lnorm;
    const double pt = std::exp(lt[b]), q = std::exp(lq[b]);
    switch (c.div) {
      case KdDivergence::ForwardKL:
        d += pt * (lt[b] - lq[b]);
        u[b] = -std::exp(lt[b] - lq[b]);
        break;
      case KdDivergence::ReverseKL:
        d += q * (lq[b] - lt[b]);
        u[b] = lq[b] - lt[b];
        break;
      case KdDivergence::JSD: {
        const double lm = lse2(lt[b] + std::log(c.beta), lq[b] + std::log1p(-c.beta));
        d += c.beta * pt * (lt[b] - lm) + (1 - c.beta) * q * (lq[b] - lm);
        u[b] = (1 - c.beta) * (lq[b] - lm);
        break;
      }
    }
  }
  if (grad) {
    double mean = 0;
    for (int64_t b = 0; b <= K; ++b)
      if (used[b]) mean += std::exp(lq[b]) * u[b];
    for (int64_t v = 0; v < V; ++v) grad[v] += g * invT * std::exp(ls[v]) * (u[static_cast<int64_t>(bucket[v])] - mean);
  }
  return d;
}

}  // namespace ref

// student [N, VS] (Var), teacher [N, VT] (constant; row i aligned with the student's row i, see uld_align),
// valid [N] or undefined (all) -> rank-0 Var: sum of ULD distances over valid rows / norm (0: valid count).
template <FloatingDtype T, FloatingDtype U>
Var<T> uld_loss(const Var<T>& student, const Tensor<U>& teacher, const Tensor<int32_t>& valid, double temperature = 1.0,
                double norm = 0) {
  DISTILL_CHECK(temperature > 0 && std::isfinite(temperature), "ULD temperature must be positive, got ", temperature);
  const Shape& ss = student.value().shape();
  const Shape& ts = teacher.shape();
  DISTILL_CHECK(ss.rank() == 2 && ts.rank() == 2 && ss[0] == ts[0], "uld_loss: student logits ", ss.str(),
                " and teacher logits ", ts.str(),
                " need the same number of (aligned) rows: [N, V_student], [N, V_teacher]");
  const int64_t N = ss[0], VS = ss[1], VT = ts[1];
  const auto ok = std::make_shared<const std::vector<uint8_t>>(detail_kd::valid_rows(valid, N, "uld_loss"));
  const double nrm = detail_kd::norm_of(norm, *ok);
  const Tensor<U> t = teacher.contiguous();
  // d[i] per row; gradient rows (times g) into gr when given.
  auto run = [N, VS, VT, temperature, ok](const Tensor<T>& s, const Tensor<U>& t, double g, double* gr, double* d) {
    detail_kd::rows(s.data(), VS, t.data(), VT, 0, N, *ok, 2 * std::max(VS, VT) + 2 * VS, d, gr,
                    [&](const double* sv, const double* tv, double* grad, double* work) {
                      return ref::uld_row(sv, VS, tv, VT, temperature, g, grad, work);
                    });
  };
  std::vector<double> d(static_cast<size_t>(N));
  run(student.value().contiguous(), t, 0.0, nullptr, d.data());
  double sum = 0;
  for (double x : d) sum += x;
  const double loss = nrm > 0 ? sum / nrm : 0.0;
  return Var<T>::record("uld_loss", Tensor<T>::full(Shape(), detail_kd::as_value<T>(loss)), {student.node()},
                        [student, t, nrm, N, VS, run](auto& self) {
                          if (!student.requires_grad() || nrm <= 0) return;
                          const double g = detail_kd::grad_scalar(self.grad) / nrm;
                          std::vector<double> dd(static_cast<size_t>(N)), gr(static_cast<size_t>(N * VS), 0.0);
                          run(student.value().contiguous(), t, g, gr.data(), dd.data());
                          detail_kd::add_grad(student.grad_buffer(), gr, "uld_loss");
                        });
}

// The teacher's logits of rows [r0, r1) as f32 [r1 - r0, V]: from the teacher's hidden states and lm head a chunk
// at a time, or from an offline file. Called once per chunk in the forward and again in the backward.
using TeacherRows = std::function<Tensor<float>(int64_t r0, int64_t r1)>;

namespace detail_kd {

// The fused loop shared by the linear_*_loss functions: scale * sum over valid rows of row(student logits row,
// teacher row) / norm, with the student's logits hidden @ weight^T made chunk_rows rows at a time (f32; the
// backward recomputes each chunk's logits and asks the teacher for its rows again). `row(s, t, g, grad, work)`
// returns the row's value and, when grad is given, ADDS g * d(value)/ds to grad[V]; the teacher's rows have
// width W. Gradients flow to hidden and, when it requires grad, to weight.
template <class Row>
Var<float> linear_rows_loss(const char* name, const Var<float>& hidden, const Var<float>& weight,
                            const TeacherRows& teacher, int64_t W, const Tensor<int32_t>& valid, double norm,
                            double scale, int64_t chunk_rows, int64_t work_size, Row row) {
  DISTILL_CHECK(chunk_rows > 0, name, ": chunk_rows must be positive, got ", chunk_rows);
  const Shape& hs = hidden.value().shape();
  const Shape& ws = weight.value().shape();
  DISTILL_CHECK(hs.rank() >= 1 && ws.rank() == 2 && hs.back() == ws[1], name, ": hidden ", hs.str(), " and weight ",
                ws.str(), " do not fit (hidden [..., C], weight [V, C])");
  const int64_t C = hs.back(), V = ws[0], N = hidden.value().numel() / std::max<int64_t>(C, 1);
  const auto ok = std::make_shared<const std::vector<uint8_t>>(valid_rows(valid, N, name));
  const double nrm = norm_of(norm, *ok);
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto teacher_chunk = [W, name](const TeacherRows& f, int64_t r0, int64_t r1) {
    Tensor<float> t = f(r0, r1).contiguous();
    DISTILL_CHECK(t.numel() == (r1 - r0) * W, name, ": the teacher gave ", t.shape().str(), " for rows ", r0, "..", r1,
                  ", expected rows of ", W);
    return t;
  };
  // d[i] (and gradient rows times g into gr, when given) for rows [r0, r1).
  auto run = [V, W, work_size, row](const float* L, const float* t, int64_t r0, int64_t r1,
                                    const std::vector<uint8_t>& okv, double g, double* d, double* gr) {
    rows(L, V, t, W, r0, r1, okv, work_size, d, gr,
         [&](const double* sv, const double* tv, double* grad, double* work) { return row(sv, tv, g, grad, work); });
  };
  const Tensor<float> h = hidden.value().contiguous(), w = weight.value().contiguous();
  double sum = 0;
  std::vector<double> d(static_cast<size_t>(std::min(chunk_rows, std::max<int64_t>(N, 1))));
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t r1 = std::min(N, r0 + chunk_rows);
    const Tensor<float> L = head_logits(h, w, r0, r1);
    const Tensor<float> t = teacher_chunk(teacher, r0, r1);
    run(L.data(), t.data(), r0, r1, *ok, 0.0, d.data(), nullptr);
    for (int64_t i = 0; i < r1 - r0; ++i) sum += d[static_cast<size_t>(i)];
  }
  const double loss = nrm > 0 ? scale * sum / nrm : 0.0;
  return Var<float>::record(
      name, Tensor<float>::full(Shape(), static_cast<float>(loss)), {hidden.node(), weight.node()},
      [hidden, weight, teacher, ok, scale, nrm, N, C, V, chunk_rows, teacher_chunk, run, name](auto& self) {
        const bool want_h = hidden.requires_grad(), want_w = weight.requires_grad();
        if ((!want_h && !want_w) || nrm <= 0) return;
        const double g = grad_scalar(self.grad) * scale / nrm;
        const Tensor<float> h = hidden.value().contiguous(), w = weight.value().contiguous();
        Tensor<float> dh = want_h ? hidden.grad_buffer() : Tensor<float>();  // shares the buffer's storage
        Tensor<float> dw = want_w ? weight.grad_buffer() : Tensor<float>();
        DISTILL_CHECK((!want_h || dh.is_contiguous()) && (!want_w || dw.is_contiguous()), name,
                      ": gradient buffers must be contiguous");
        Eigen::Map<const Mat> Wm(w.data(), V, C), Hall(h.data(), N, C);
        std::vector<double> d(static_cast<size_t>(chunk_rows)), gr;
        for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
          const int64_t r1 = std::min(N, r0 + chunk_rows), n = r1 - r0;
          const Tensor<float> L = head_logits(h, w, r0, r1);
          const Tensor<float> t = teacher_chunk(teacher, r0, r1);
          gr.assign(static_cast<size_t>(n * V), 0.0);
          run(L.data(), t.data(), r0, r1, *ok, g, d.data(), gr.data());
          Mat dL(n, V);
          for (int64_t i = 0; i < n * V; ++i) dL.data()[i] = static_cast<float>(gr[static_cast<size_t>(i)]);
          if (want_h) Eigen::Map<Mat>(dh.data() + r0 * C, n, C).noalias() += dL * Wm;
          if (want_w) Eigen::Map<Mat>(dw.data(), V, C).noalias() += dL.transpose() * Hall.middleRows(r0, n);
        }
      });
}

}  // namespace detail_kd

// hidden [N, C], weight [V, C] (the student's lm head): kd_loss(hidden @ weight^T, teacher) with only
// chunk_rows rows of student and teacher logits in memory at a time (f32; the backward recomputes each chunk's
// logits). Gradients flow to hidden and, when it requires grad, to weight.
inline Var<float> linear_kd_loss(const Var<float>& hidden, const Var<float>& weight, const TeacherRows& teacher,
                                 const Tensor<int32_t>& valid, const KdConfig& c, double norm = 0,
                                 int64_t chunk_rows = 256) {
  c.validate();
  DISTILL_CHECK(weight.value().rank() == 2, "linear_kd_loss: weight must be [V, C], got ",
                weight.value().shape().str());
  const int64_t V = weight.value().dim(0);
  return detail_kd::linear_rows_loss("linear_kd_loss", hidden, weight, teacher, V, valid, norm, c.scale(), chunk_rows,
                                     3 * V,
                                     [V, c](const double* s, const double* t, double g, double* grad, double* work) {
                                       return ref::kd_row(s, t, V, c, g, grad, work);
                                     });
}

// The same with top-K teacher rows ([N, 2K + 1], see ref::topk_kd_row): offline logits, or a teacher with another
// tokenizer seen through the shared vocabulary. Scaled by T^2 when c.t2_scale, like linear_kd_loss.
inline Var<float> linear_topk_kd_loss(const Var<float>& hidden, const Var<float>& weight, const TeacherRows& teacher,
                                      int64_t K, const Tensor<int32_t>& valid, const KdConfig& c, double norm = 0,
                                      int64_t chunk_rows = 256) {
  c.validate();
  DISTILL_CHECK(K >= 1, "linear_topk_kd_loss: K must be >= 1, got ", K);
  DISTILL_CHECK(weight.value().rank() == 2, "linear_topk_kd_loss: weight must be [V, C], got ",
                weight.value().shape().str());
  const int64_t V = weight.value().dim(0);
  return detail_kd::linear_rows_loss("linear_topk_kd_loss", hidden, weight, teacher, 2 * K + 1, valid, norm, c.scale(),
                                     chunk_rows, 2 * V + 4 * (K + 1),
                                     [V, K, c](const double* s, const double* t, double g, double* grad, double* work) {
                                       return ref::topk_kd_row(s, V, t, K, c, g, grad, work);
                                     });
}

// uld_loss fused with the student's head: teacher rows [N, VT] of logits (any vocabulary), aligned row by row.
inline Var<float> linear_uld_loss(const Var<float>& hidden, const Var<float>& weight, const TeacherRows& teacher,
                                  int64_t VT, const Tensor<int32_t>& valid, double temperature = 1.0, double norm = 0,
                                  int64_t chunk_rows = 256) {
  DISTILL_CHECK(temperature > 0 && std::isfinite(temperature), "ULD temperature must be positive, got ", temperature);
  DISTILL_CHECK(weight.value().rank() == 2 && VT >= 1, "linear_uld_loss: weight must be [V, C] and VT >= 1");
  const int64_t V = weight.value().dim(0);
  return detail_kd::linear_rows_loss(
      "linear_uld_loss", hidden, weight, teacher, VT, valid, norm, 1.0, chunk_rows, 2 * std::max(V, VT) + 2 * V,
      [V, VT, temperature](const double* s, const double* t, double g, double* grad, double* work) {
        return ref::uld_row(s, V, t, VT, temperature, g, grad, work);
      });
}

}  // namespace distill::train
