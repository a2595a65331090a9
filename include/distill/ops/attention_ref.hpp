// Scaled-dot-product attention: options, shape rules, the mask, and the reference (ref::) implementation.
//
// Layout (straight out of the projections, no transposes):
//   q [B, T, H, D], k and v [B, S, KV, D], out [B, T, H, D].
// GQA (SPEC §1.3): H % KV == 0 and query head h reads kv head h / (H / KV) (repeat_kv repeats each kv head
// H / KV times consecutively). KV == H is plain multi-head attention, KV == 1 multi-query.
// Positions: keys sit at 0 .. S-1 and query t at t + (S - T), i.e. the queries are the last T positions
// (KV-cache decoding: T = 1 is the newest token). Masks compare these absolute positions; key j is visible
// to the query at position p iff
//   causal:            j <= p
//   window > 0:        j > p - window       (SPEC §2.4: the query sees itself and the previous window-1 keys)
//   window > 0 and not causal:  also j < p + window   (a symmetric window |p - j| < window; our definition)
// Causal or windowed attention needs S >= T. Every query then sees at least the key at its own position, so
// no row is ever empty; a row with no visible key (not reachable through the public API) would give zeros.
// scale = 0 means 1 / sqrt(D) (Qwen3; Gemma3 passes query_pre_attn_scalar^-0.5 explicitly).
//
// ref:: is the truth the fast paths are tested against: plain loops that materialize the full [T, S] score
// matrix of each (b, h) and accumulate in double. It is slow by design.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "distill/autograd/var.hpp"

namespace distill {

struct AttentionOptions {
  bool causal = true;
  int64_t window = 0;  // sliding window in positions; 0: no sliding window
  double scale = 0;    // 0 means 1 / sqrt(D)
};

// Input gradients of attention, shaped like q, k and v.
template <class T>
struct AttentionGrads {
  Tensor<T> dq;  // [B, T, H, D]
  Tensor<T> dk;  // [B, S, KV, D]
  Tensor<T> dv;  // [B, S, KV, D]
};

namespace detail {

struct AttentionDims {
  int64_t B, T, S, H, KV, D;
  int64_t rep;     // H / KV query heads per kv head
  int64_t offset;  // S - T: absolute position of query 0
  double scale;
};

// Checks q/k/v against the layout above; throws ShapeError naming the shapes. `op` prefixes the message.
inline AttentionDims attention_dims(const Shape& q, const Shape& k, const Shape& v, const AttentionOptions& o,
                                    const char* op) {
  const std::string name(op);
  auto rank4 = [&](const Shape& s, const char* what, const char* layout) {
    if (s.rank() != 4) throw ShapeError(name + ": " + what + " must be " + layout + ", got " + s.str());
  };
  rank4(q, "q", "[B, T, H, D]");
  rank4(k, "k", "[B, S, KV, D]");
  rank4(v, "v", "[B, S, KV, D]");
  check_same_shape(k, v, (name + ": k vs v").c_str());
  if (q[0] != k[0]) throw ShapeError(name + ": q " + q.str() + " and k " + k.str() + " differ in batch size");
  if (q[3] != k[3]) throw ShapeError(name + ": q " + q.str() + " and k " + k.str() + " differ in head_dim");
  if (k[2] == 0 || q[2] % k[2] != 0)
    throw ShapeError(name + ": the " + std::to_string(q[2]) + " query heads of q " + q.str() +
                     " are not a multiple of the " + std::to_string(k[2]) + " kv heads of k " + k.str());
  if ((o.causal || o.window > 0) && k[1] < q[1])
    throw ShapeError(name + ": q " + q.str() + " has more positions than k " + k.str() +
                     "; causal or windowed attention puts the queries at the last T of the S key positions");
  if (q[1] > 0 && k[1] == 0 && q[0] * q[2] > 0)
    throw ShapeError(name + ": q " + q.str() + " attends to no keys (k " + k.str() + ")");
  DISTILL_CHECK(o.window >= 0, name, ": window must be >= 0 (0: no sliding window), got ", o.window);
  DISTILL_CHECK(std::isfinite(o.scale), name, ": scale must be finite, got ", o.scale);
  DISTILL_CHECK(o.scale != 0 || q[3] > 0, name, ": the default scale 1/sqrt(D) needs D > 0");
  AttentionDims d{q[0], q[1], k[1], q[2], k[2], q[3], 0, k[1] - q[1], o.scale};
  d.rep = d.KV ? d.H / d.KV : 0;
  if (d.scale == 0) d.scale = 1.0 / std::sqrt(static_cast<double>(d.D));
  return d;
}

// The mask, element by element (the definition; the fast path derives key ranges from it).
inline bool attention_key_visible(int64_t p, int64_t j, const AttentionOptions& o) {
  if (o.causal && j > p) return false;
  if (o.window > 0 && j <= p - o.window) return false;
  if (o.window > 0 && !o.causal && j >= p + o.window) return false;
  return true;
}

}  // namespace detail

namespace ref {

// out = softmax(scale * q k^T + mask) v per (b, h).
template <FloatingDtype T>
Tensor<T> attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const AttentionOptions& opts = {}) {
  const auto d = detail::attention_dims(q.shape(), k.shape(), v.shape(), opts, "ref::attention");
  auto out = Tensor<T>::empty(q.shape());                 // [B, T, H, D]
  std::vector<double> p(static_cast<size_t>(d.T * d.S));  // [T, S] probabilities of one (b, h)
  auto at = [&](int64_t t, int64_t j) -> double& { return p[static_cast<size_t>(t * d.S + j)]; };
  auto x = [](const Tensor<T>& a, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return static_cast<double>(to_compute<T>(a(i0, i1, i2, i3)));
  };
  for (int64_t b = 0; b < d.B; ++b) {
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t g = h / d.rep;
      for (int64_t t = 0; t < d.T; ++t) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < d.S; ++j) {
          double s = 0;
          for (int64_t e = 0; e < d.D; ++e) s += x(q, b, t, h, e) * x(k, b, j, g, e);
          s *= d.scale;
          at(t, j) = s;
          if (detail::attention_key_visible(t + d.offset, j, opts)) mx = std::max(mx, s);
        }
        double sum = 0;
        for (int64_t j = 0; j < d.S; ++j) {
          at(t, j) = detail::attention_key_visible(t + d.offset, j, opts) ? std::exp(at(t, j) - mx) : 0.0;
          sum += at(t, j);
        }
        for (int64_t j = 0; j < d.S; ++j) at(t, j) = sum > 0 ? at(t, j) / sum : 0.0;
      }
      for (int64_t t = 0; t < d.T; ++t) {
        for (int64_t e = 0; e < d.D; ++e) {
          double o = 0;
          for (int64_t j = 0; j < d.S; ++j) o += at(t, j) * x(v, b, j, g, e);
          out(b, t, h, e) = from_compute<T>(static_cast<compute_t<T>>(o));
        }
      }
    }
  }
  return out;
}

// Gradients of ref::attention given the upstream gradient g_out; `out` is the forward output (used for
// D_t = sum_e g_out[t, e] * out[t, e], the row term of the softmax backward).
template <FloatingDtype T>
AttentionGrads<T> attention_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& out,
                                     const Tensor<T>& g_out, const AttentionOptions& opts = {}) {
  const auto d = detail::attention_dims(q.shape(), k.shape(), v.shape(), opts, "ref::attention_backward");
  check_same_shape(q.shape(), out.shape(), "ref::attention_backward: q vs out");
  check_same_shape(q.shape(), g_out.shape(), "ref::attention_backward: q vs g_out");
  auto x = [](const Tensor<T>& a, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return static_cast<double>(to_compute<T>(a(i0, i1, i2, i3)));
  };
  const size_t nq = static_cast<size_t>(q.numel()), nk = static_cast<size_t>(k.numel());
  std::vector<double> dq(nq, 0.0), dk(nk, 0.0), dv(nk, 0.0);  // contiguous [B, T, H, D] / [B, S, KV, D]
  auto qi = [&](int64_t b, int64_t t, int64_t h, int64_t e) {
    return static_cast<size_t>(((b * d.T + t) * d.H + h) * d.D + e);
  };
  auto ki = [&](int64_t b, int64_t j, int64_t g, int64_t e) {
    return static_cast<size_t>(((b * d.S + j) * d.KV + g) * d.D + e);
  };
  std::vector<double> p(static_cast<size_t>(d.T * d.S)), ds(p.size());  // [T, S] of one (b, h)
  for (int64_t b = 0; b < d.B; ++b) {
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t g = h / d.rep;
      for (int64_t t = 0; t < d.T; ++t) {
        // P row, recomputed exactly as in the forward.
        double* pr = &p[static_cast<size_t>(t * d.S)];
        double mx = -std::numeric_limits<double>::infinity(), sum = 0;
        for (int64_t j = 0; j < d.S; ++j) {
          double s = 0;
          for (int64_t e = 0; e < d.D; ++e) s += x(q, b, t, h, e) * x(k, b, j, g, e);
          pr[j] = s * d.scale;
          if (detail::attention_key_visible(t + d.offset, j, opts)) mx = std::max(mx, pr[j]);
        }
        for (int64_t j = 0; j < d.S; ++j) {
          pr[j] = detail::attention_key_visible(t + d.offset, j, opts) ? std::exp(pr[j] - mx) : 0.0;
          sum += pr[j];
        }
        for (int64_t j = 0; j < d.S; ++j) pr[j] = sum > 0 ? pr[j] / sum : 0.0;
        // dP = g_out v^T; dS = P * (dP - D_t).
        double Dt = 0;
        for (int64_t e = 0; e < d.D; ++e) Dt += x(g_out, b, t, h, e) * x(out, b, t, h, e);
        for (int64_t j = 0; j < d.S; ++j) {
          double dp = 0;
          for (int64_t e = 0; e < d.D; ++e) dp += x(g_out, b, t, h, e) * x(v, b, j, g, e);
          ds[static_cast<size_t>(t * d.S + j)] = pr[j] * (dp - Dt);
        }
      }
      for (int64_t t = 0; t < d.T; ++t) {
        for (int64_t j = 0; j < d.S; ++j) {
          const double pj = p[static_cast<size_t>(t * d.S + j)], sj = ds[static_cast<size_t>(t * d.S + j)];
          for (int64_t e = 0; e < d.D; ++e) {
            dv[ki(b, j, g, e)] += pj * x(g_out, b, t, h, e);        // dV = P^T dO
            dq[qi(b, t, h, e)] += d.scale * sj * x(k, b, j, g, e);  // dQ = scale dS K
            dk[ki(b, j, g, e)] += d.scale * sj * x(q, b, t, h, e);  // dK = scale dS^T Q
          }
        }
      }
    }
  }
  auto to_tensor = [](const Shape& s, const std::vector<double>& a) {
    auto r = Tensor<T>::empty(s);
    for (int64_t i = 0; i < r.numel(); ++i)
      r.data()[i] = from_compute<T>(static_cast<compute_t<T>>(a[static_cast<size_t>(i)]));
    return r;
  };
  return {to_tensor(q.shape(), dq), to_tensor(k.shape(), dk), to_tensor(v.shape(), dv)};
}

}  // namespace ref
}  // namespace distill
