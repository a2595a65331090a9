// Attention on the CPU, flash-attention style (layout, GQA and mask: see attention_ref.hpp).
//
// Forward: one task per (b, h, query tile). The task streams key/value tiles past its query tile with an
// online softmax (running row max m, row sum l, unnormalized output O), so it never holds more than a
// [tile, tile] score block; it saves the per-row logsumexp lse = m + log(l) for the backward.
// Backward: for every (key tile, query tile) pair that the mask lets meet it recomputes P = exp(scale q k^T - lse)
// and applies
//   dV += P^T dO;  dP = dO V^T;  dS = P * (dP - D) with D_t = rowsum(dO_t * O_t);
//   dQ += scale dS K;  dK += scale dS^T Q.
// With at least as many (b, kv head) pairs as threads it runs one task per pair, covering every query head of
// the group, so dK and dV are owned by one thread and need no atomics. With fewer (B = 1 and one kv head, as in
// gemma-3-1b) it runs two passes over finer tasks so that every thread works: one task per (b, kv head, key
// tile) for dK, dV, then one per (b, head, query tile) for dQ, recomputing P and dS in both (7 tile products
// per tile pair instead of 5). Every output row is summed by one task in a fixed order (key tiles ascending for
// dQ, (head, query tile) ascending for dK, dV), so the gradients are the same bits for any thread count and
// either schedule.
// Key tiles (forward) and query tiles (backward) that the causal/window mask hides entirely are skipped,
// so causal attention costs about half of full attention. Per-thread memory is O(tile^2 + tile * D).
// Inputs of any floating dtype compute in compute_t<T> (float for bf16/f16); tiles are packed (converted
// and made contiguous) into per-thread Eigen buffers and multiplied with Eigen's GEMM.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "distill/core/parallel.hpp"
#include "distill/ops/attention_ref.hpp"

namespace distill {

// What the forward saves for the backward (on the inputs' device).
template <class T, class D = Cpu>
struct AttentionForward {
  Tensor<T, D> out;             // [B, T, H, D]
  Tensor<compute_t<T>, D> lse;  // [B, H, T] logsumexp of each row of scale * q k^T over the visible keys
};

namespace detail {

inline constexpr int64_t kAttnTileQ = 64;  // query rows per tile
inline constexpr int64_t kAttnTileK = 64;  // key rows per tile

template <class C>
using AttnMat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class C>
using AttnVec = Eigen::Matrix<C, Eigen::Dynamic, 1>;

// Keys [lo, hi) visible to the query at absolute position p (the mask of attention_key_visible as a range;
// lo and hi never decrease as p grows).
struct KeyRange {
  int64_t lo, hi;
};
inline KeyRange attention_key_range(int64_t p, int64_t S, const AttentionOptions& o) {
  int64_t lo = 0, hi = S;
  if (o.causal) hi = std::min(hi, p + 1);
  if (o.window > 0) {
    lo = std::max<int64_t>(lo, p - o.window + 1);
    if (!o.causal) hi = std::min(hi, p + o.window);
  }
  return {lo, std::max(lo, hi)};
}

// dst rows [0, n) = alpha * the n rows of D values starting at src, `ld` elements apart.
template <class T, class C>
void attention_pack(const T* src, int64_t ld, int64_t n, int64_t D, C alpha, AttnMat<C>& dst) {
  for (int64_t r = 0; r < n; ++r) {
    const T* s = src + r * ld;
    C* o = dst.data() + r * D;
    for (int64_t e = 0; e < D; ++e) o[e] = alpha * to_compute<T>(s[e]);
  }
}

// Columns [a, e) of row r of the [nq, nk] score block, clamped to the block, for the query at position p.
inline void attention_row_span(int64_t p, int64_t j0, int64_t nk, int64_t S, const AttentionOptions& o, int64_t& a,
                               int64_t& e) {
  const KeyRange kr = attention_key_range(p, S, o);
  a = std::clamp<int64_t>(kr.lo - j0, 0, nk);
  e = std::clamp<int64_t>(kr.hi - j0, 0, nk);
  if (e < a) e = a;
}

// Task index i in [0, n) -> tile index 0, n-1, 1, n-2, ... (a permutation of [0, n)): neighbouring tasks pair
// a tile with much causal work with one with little.
inline int64_t attention_snake(int64_t i, int64_t n) { return i % 2 == 0 ? i / 2 : n - 1 - i / 2; }

}  // namespace detail

namespace cpu {

template <FloatingDtype T>
AttentionForward<T> attention_forward(const Tensor<T>& q_in, const Tensor<T>& k_in, const Tensor<T>& v_in,
                                      const AttentionOptions& opts = {}) {
  using C = compute_t<T>;
  using Mat = detail::AttnMat<C>;
  const auto d = detail::attention_dims(q_in.shape(), k_in.shape(), v_in.shape(), opts, "cpu::attention_forward");
  const Tensor<T> q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  AttentionForward<T> res{Tensor<T>::empty(q.shape()), Tensor<C>::empty({d.B, d.H, d.T})};
  const int64_t Bq = detail::kAttnTileQ, Bk = detail::kAttnTileK, D = d.D;
  const int64_t nqt = (d.T + Bq - 1) / Bq;
  const C scale = static_cast<C>(d.scale);
  const C neg_inf = -std::numeric_limits<C>::infinity();
  const T *qp = q.data(), *kp = k.data(), *vp = v.data();
  T* op = res.out.data();
  C* lp = res.lse.data();

  parallel_for_tiles(d.B * d.H * nqt, 1, [&](int64_t begin, int64_t end) {
    Mat Qs(Bq, D), Kt(Bk, D), Vt(Bk, D), O(Bq, D), P(Bq, Bk);
    std::vector<C> m(static_cast<size_t>(Bq)), l(static_cast<size_t>(Bq));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qt = task % nqt, h = (task / nqt) % d.H, b = task / (nqt * d.H), g = h / d.rep;
      const int64_t t0 = qt * Bq, nq = std::min(Bq, d.T - t0);
      detail::attention_pack(qp + ((b * d.T + t0) * d.H + h) * D, d.H * D, nq, D, scale, Qs);  // scale * q
      O.topRows(nq).setZero();
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), C(0));
      // Keys any row of this tile can see; tiles outside are skipped.
      const int64_t kbeg = detail::attention_key_range(t0 + d.offset, d.S, opts).lo;
      const int64_t kend = detail::attention_key_range(t0 + nq - 1 + d.offset, d.S, opts).hi;
      for (int64_t j0 = kbeg; j0 < kend; j0 += Bk) {
        const int64_t nk = std::min(Bk, kend - j0);
        detail::attention_pack(kp + ((b * d.S + j0) * d.KV + g) * D, d.KV * D, nk, D, C(1), Kt);
        detail::attention_pack(vp + ((b * d.S + j0) * d.KV + g) * D, d.KV * D, nk, D, C(1), Vt);
        auto s = P.topLeftCorner(nq, nk);  // [nq, nk] scores, then probabilities
        s.noalias() = Qs.topRows(nq) * Kt.topRows(nk).transpose();
        for (int64_t r = 0; r < nq; ++r) {
          int64_t a, e;
          detail::attention_row_span(t0 + r + d.offset, j0, nk, d.S, opts, a, e);
          auto row = s.row(r);
          if (a == e) {  // nothing visible in this tile: m, l, O unchanged
            row.setZero();
            continue;
          }
          auto vis = row.segment(a, e - a);
          const C mn = std::max(m[static_cast<size_t>(r)], vis.maxCoeff());
          const C alpha = std::exp(m[static_cast<size_t>(r)] - mn);  // 0 on the first visible tile
          vis = (vis.array() - mn).exp().matrix();
          row.head(a).setZero();
          row.tail(nk - e).setZero();
          l[static_cast<size_t>(r)] = l[static_cast<size_t>(r)] * alpha + vis.sum();
          if (alpha != C(1)) O.row(r) *= alpha;
          m[static_cast<size_t>(r)] = mn;
        }
        O.topRows(nq).noalias() += s * Vt.topRows(nk);
      }
      for (int64_t r = 0; r < nq; ++r) {
        const C lr = l[static_cast<size_t>(r)];
        const C inv = lr > 0 ? C(1) / lr : C(0);  // an empty row gives zeros
        T* dst = op + ((b * d.T + t0 + r) * d.H + h) * D;
        for (int64_t e = 0; e < D; ++e) dst[e] = from_compute<T>(O(r, e) * inv);
        lp[(b * d.H + h) * d.T + t0 + r] = lr > 0 ? m[static_cast<size_t>(r)] + std::log(lr) : neg_inf;
      }
    }
  });
  return res;
}

// Gradients from the saved forward (out, lse) and the upstream gradient g_out [B, T, H, D].
template <FloatingDtype T>
AttentionGrads<T> attention_backward(const Tensor<T>& q_in, const Tensor<T>& k_in, const Tensor<T>& v_in,
                                     const Tensor<T>& out_in, const Tensor<compute_t<T>>& lse_in, const Tensor<T>& g_in,
                                     const AttentionOptions& opts = {}) {
  using C = compute_t<T>;
  using Mat = detail::AttnMat<C>;
  using Vec = detail::AttnVec<C>;
  const auto d = detail::attention_dims(q_in.shape(), k_in.shape(), v_in.shape(), opts, "cpu::attention_backward");
  check_same_shape(q_in.shape(), out_in.shape(), "cpu::attention_backward: q vs out");
  check_same_shape(q_in.shape(), g_in.shape(), "cpu::attention_backward: q vs g_out");
  check_same_shape(Shape{d.B, d.H, d.T}, lse_in.shape(), "cpu::attention_backward: lse must be [B, H, T]");
  const Tensor<T> q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const Tensor<T> out = out_in.contiguous(), go = g_in.contiguous();
  const Tensor<C> lse = lse_in.contiguous();
  const int64_t Bq = detail::kAttnTileQ, Bk = detail::kAttnTileK, D = d.D;
  const int64_t nqt = (d.T + Bq - 1) / Bq, nkt = (d.S + Bk - 1) / Bk;
  const C scale = static_cast<C>(d.scale);

  // D_t = rowsum(dO_t * O_t) per (b, h, t), in the compute type.
  auto delta = Tensor<C>::empty({d.B, d.H, d.T});  // [B, H, T]
  {
    const T *gp = go.data(), *opp = out.data();
    C* dp = delta.data();
    parallel_for(d.B * d.T * d.H, 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {  // row = (b * T + t) * H + h
        const int64_t h = row % d.H, t = (row / d.H) % d.T, b = row / (d.H * d.T);
        C acc = 0;
        for (int64_t e = 0; e < D; ++e) acc += to_compute<T>(gp[row * D + e]) * to_compute<T>(opp[row * D + e]);
        dp[(b * d.H + h) * d.T + t] = acc;
      }
    });
  }

  const T *qp = q.data(), *kp = k.data(), *vp = v.data(), *gp = go.data();
  const C *lsep = lse.data(), *deltap = delta.data();

  // Tile helpers shared by both schedules, so that they do the same arithmetic in the same order.
  // Query tile (b, h, t0) of nq rows: Qs = scale * q, dO, and its rows of lse and delta.
  auto load_q = [&](int64_t b, int64_t h, int64_t t0, int64_t nq, Mat& Qs, Mat& dO, Vec& lse_t, Vec& delta_t) {
    detail::attention_pack(qp + ((b * d.T + t0) * d.H + h) * D, d.H * D, nq, D, scale, Qs);  // scale * q
    detail::attention_pack(gp + ((b * d.T + t0) * d.H + h) * D, d.H * D, nq, D, C(1), dO);
    for (int64_t r = 0; r < nq; ++r) {
      lse_t[r] = lsep[(b * d.H + h) * d.T + t0 + r];
      delta_t[r] = deltap[(b * d.H + h) * d.T + t0 + r];
    }
  };
  // Key tile (b, g, j0) of nk rows.
  auto load_kv = [&](int64_t b, int64_t g, int64_t j0, int64_t nk, Mat& Kt, Mat& Vt) {
    detail::attention_pack(kp + ((b * d.S + j0) * d.KV + g) * D, d.KV * D, nk, D, C(1), Kt);
    detail::attention_pack(vp + ((b * d.S + j0) * d.KV + g) * D, d.KV * D, nk, D, C(1), Vt);
  };
  // Whether some row of query tile [t0, t0 + nq) sees some key of [j0, j0 + nk).
  auto tiles_meet = [&](int64_t t0, int64_t nq, int64_t j0, int64_t nk) {
    return detail::attention_key_range(t0 + d.offset, d.S, opts).lo < j0 + nk &&
           detail::attention_key_range(t0 + nq - 1 + d.offset, d.S, opts).hi > j0;
  };
  // P = exp(scale q k^T - lse) on the visible entries (0 elsewhere) and dS = P * (dO V^T - delta), both [nq, nk].
  auto probs_and_ds = [&](int64_t t0, int64_t nq, int64_t j0, int64_t nk, const Mat& Qs, const Mat& dO,
                          const Vec& lse_t, const Vec& delta_t, const Mat& Kt, const Mat& Vt, Mat& P, Mat& dS) {
    auto p = P.topLeftCorner(nq, nk);
    p.noalias() = Qs.topRows(nq) * Kt.topRows(nk).transpose();
    for (int64_t r = 0; r < nq; ++r) {
      int64_t a, e;
      detail::attention_row_span(t0 + r + d.offset, j0, nk, d.S, opts, a, e);
      auto row = p.row(r);
      row.segment(a, e - a) = (row.segment(a, e - a).array() - lse_t[r]).exp().matrix();
      row.head(a).setZero();
      row.tail(nk - e).setZero();
    }
    auto ds = dS.topLeftCorner(nq, nk);
    ds.noalias() = dO.topRows(nq) * Vt.topRows(nk).transpose();  // dP
    ds = (p.array() * (ds.array().colwise() - delta_t.head(nq).array())).matrix();
  };
  // dK, dV of key tile (b, g, j0): sums over every query head of group g and every query tile that sees it,
  // in ascending (h, t0) order.
  auto key_tile_grads = [&](int64_t b, int64_t g, int64_t j0, Mat& Kt, Mat& Vt, Mat& dKt, Mat& dVt, Mat& Qs, Mat& dO,
                            Mat& P, Mat& dS, Vec& lse_t, Vec& delta_t, auto&& on_ds) {
    const int64_t nk = std::min(Bk, d.S - j0);
    load_kv(b, g, j0, nk, Kt, Vt);
    dKt.topRows(nk).setZero();
    dVt.topRows(nk).setZero();
    for (int64_t h = g * d.rep; h < (g + 1) * d.rep; ++h) {
      for (int64_t t0 = 0; t0 < d.T; t0 += Bq) {
        const int64_t nq = std::min(Bq, d.T - t0);
        if (!tiles_meet(t0, nq, j0, nk)) continue;  // masked out entirely
        load_q(b, h, t0, nq, Qs, dO, lse_t, delta_t);
        probs_and_ds(t0, nq, j0, nk, Qs, dO, lse_t, delta_t, Kt, Vt, P, dS);
        dVt.topRows(nk).noalias() += P.topLeftCorner(nq, nk).transpose() * dO.topRows(nq);
        dKt.topRows(nk).noalias() += dS.topLeftCorner(nq, nk).transpose() * Qs.topRows(nq);  // Qs carries the scale
        on_ds(h, t0, nq, nk);
      }
    }
  };
  AttentionGrads<T> res{Tensor<T>{}, Tensor<T>::empty(k.shape()), Tensor<T>::empty(v.shape())};  // dq: below
  T *dkp = res.dk.data(), *dvp = res.dv.data();
  auto store_kv = [&](int64_t b, int64_t g, int64_t j0, const Mat& dKt, const Mat& dVt) {
    const int64_t nk = std::min(Bk, d.S - j0);
    for (int64_t r = 0; r < nk; ++r) {
      T* dk_row = dkp + ((b * d.S + j0 + r) * d.KV + g) * D;
      T* dv_row = dvp + ((b * d.S + j0 + r) * d.KV + g) * D;
      for (int64_t e = 0; e < D; ++e) {
        dk_row[e] = from_compute<T>(dKt(r, e));
        dv_row[e] = from_compute<T>(dVt(r, e));
      }
    }
  };

  if (d.B * d.KV >= max_threads()) {
    // Enough (b, kv head) pairs to fill the threads: one pass, one task per pair, covering every query head of
    // the group, so dK and dV are owned by one thread. dQ accumulates over key tiles: in place for f32/f64, in
    // a float buffer for bf16/f16.
    Tensor<C> dq_acc = Tensor<C>::zeros(q.shape());
    C* dqp = dq_acc.data();
    parallel_for_tiles(d.B * d.KV, 1, [&](int64_t begin, int64_t end) {
      Mat Kt(Bk, D), Vt(Bk, D), dKt(Bk, D), dVt(Bk, D), Qs(Bq, D), dO(Bq, D), P(Bq, Bk), dS(Bq, Bk);
      Vec lse_t(Bq), delta_t(Bq);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / d.KV, g = task % d.KV;
        for (int64_t j0 = 0; j0 < d.S; j0 += Bk) {
          key_tile_grads(b, g, j0, Kt, Vt, dKt, dVt, Qs, dO, P, dS, lse_t, delta_t,
                         [&](int64_t h, int64_t t0, int64_t nq, int64_t nk) {
                           Eigen::Map<Mat, 0, Eigen::OuterStride<>> dq_rows(dqp + ((b * d.T + t0) * d.H + h) * D, nq, D,
                                                                            Eigen::OuterStride<>(d.H * D));
                           dq_rows.noalias() += (scale * dS.topLeftCorner(nq, nk)) * Kt.topRows(nk);
                         });
          store_kv(b, g, j0, dKt, dVt);
        }
      }
    });
    if constexpr (std::is_same_v<T, C>)
      res.dq = dq_acc;
    else
      res.dq = dq_acc.template cast<T>();
    return res;
  }

  // Fewer (b, kv head) pairs than threads (B = 1 with one kv head, say): two passes over finer tasks, each
  // recomputing P and dS (7 tile products per visible tile pair instead of 5), so that every thread works.
  // Pass 1: one task per (b, kv head, key tile) computes its dK, dV rows. Pass 2: one task per (b, head,
  // query tile) computes its dQ rows over the key tiles it sees. Every task owns its output rows and sums in
  // a fixed order, so the result does not depend on the thread count. Tasks are numbered so that the tile
  // index goes 0, n-1, 1, n-2, ...: under a causal mask the work per tile grows or shrinks with its index,
  // and the contiguous chunks of parallel_for_tiles then get about equal work.
  parallel_for_tiles(d.B * d.KV * nkt, 1, [&](int64_t begin, int64_t end) {
    Mat Kt(Bk, D), Vt(Bk, D), dKt(Bk, D), dVt(Bk, D), Qs(Bq, D), dO(Bq, D), P(Bq, Bk), dS(Bq, Bk);
    Vec lse_t(Bq), delta_t(Bq);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kt = detail::attention_snake(task % nkt, nkt), bg = task / nkt;
      const int64_t b = bg / d.KV, g = bg % d.KV;
      key_tile_grads(b, g, kt * Bk, Kt, Vt, dKt, dVt, Qs, dO, P, dS, lse_t, delta_t,
                     [](int64_t, int64_t, int64_t, int64_t) {});
      store_kv(b, g, kt * Bk, dKt, dVt);
    }
  });
  res.dq = Tensor<T>::empty(q.shape());
  T* dqp = res.dq.data();
  parallel_for_tiles(d.B * d.H * nqt, 1, [&](int64_t begin, int64_t end) {
    Mat Kt(Bk, D), Vt(Bk, D), Qs(Bq, D), dO(Bq, D), P(Bq, Bk), dS(Bq, Bk), dQt(Bq, D);
    Vec lse_t(Bq), delta_t(Bq);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qt = detail::attention_snake(task % nqt, nqt), bh = task / nqt;
      const int64_t b = bh / d.H, h = bh % d.H, g = h / d.rep;
      const int64_t t0 = qt * Bq, nq = std::min(Bq, d.T - t0);
      load_q(b, h, t0, nq, Qs, dO, lse_t, delta_t);
      dQt.topRows(nq).setZero();
      // The key tiles (on the same grid as pass 1) that some row of this query tile sees, ascending.
      const int64_t kbeg = detail::attention_key_range(t0 + d.offset, d.S, opts).lo;
      const int64_t kend = detail::attention_key_range(t0 + nq - 1 + d.offset, d.S, opts).hi;
      for (int64_t j0 = kbeg / Bk * Bk; j0 < kend; j0 += Bk) {
        const int64_t nk = std::min(Bk, d.S - j0);
        if (!tiles_meet(t0, nq, j0, nk)) continue;
        load_kv(b, g, j0, nk, Kt, Vt);
        probs_and_ds(t0, nq, j0, nk, Qs, dO, lse_t, delta_t, Kt, Vt, P, dS);
        dQt.topRows(nq).noalias() += (scale * dS.topLeftCorner(nq, nk)) * Kt.topRows(nk);
      }
      for (int64_t r = 0; r < nq; ++r) {
        T* dst = dqp + ((b * d.T + t0 + r) * d.H + h) * D;
        for (int64_t e = 0; e < D; ++e) dst[e] = from_compute<T>(dQt(r, e));
      }
    }
  });
  return res;
}

}  // namespace cpu
}  // namespace distill
