// Attention forward + backward, f32, B=1, H=8, KV=4, D=64 (and B=1, H=4, KV=1 for the flash path: one kv head,
// as in gemma-3-1b, where the backward must split work below the (b, kv head) level): the flash-tiled cpu:: path
// beside two baselines
// that materialize the [T, S] score matrix of every head: a float one on Eigen GEMMs (what one writes without
// tiling: it keeps P [B, H, T, S] for the backward) and ref:: (plain loops accumulating in double; only at T=256, it is
// slow). FLOP/s counts the useful work of every variant the same way, so the ratios are time ratios: per visible
// (query, key) pair 4 D forward (q k^T, P V) and 10 D backward (q k^T again, dV, dP, dQ, dK).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <vector>

#include "distill/ops/attention.hpp"

namespace {

using namespace distill;

constexpr int64_t kB = 1, kH = 8, kKV = 4, kD = 64;

struct Data {
  Tensor<float> q, k, v, g;  // q, g [B, T, H, D]; k, v [B, T, KV, D]
};

const Data& data_for(int64_t T, int64_t H = kH, int64_t KV = kKV) {
  static std::map<std::array<int64_t, 3>, Data> cache;
  const std::array<int64_t, 3> key{T, H, KV};
  auto it = cache.find(key);
  if (it == cache.end())
    it = cache
             .emplace(key, Data{Tensor<float>::uniform({kB, T, H, kD}, 1), Tensor<float>::uniform({kB, T, KV, kD}, 2),
                                Tensor<float>::uniform({kB, T, KV, kD}, 3), Tensor<float>::uniform({kB, T, H, kD}, 4)})
             .first;
  return it->second;
}

double useful_flops(int64_t T, bool causal, int64_t H = kH) {
  const double pairs = causal ? 0.5 * static_cast<double>(T) * static_cast<double>(T + 1)
                              : static_cast<double>(T) * static_cast<double>(T);
  return pairs * static_cast<double>(kB * H) * 14.0 * static_cast<double>(kD);
}

void set_counters(benchmark::State& st, int64_t T, bool causal, int64_t H = kH) {
  st.counters["FLOP/s"] = benchmark::Counter(useful_flops(T, causal, H), benchmark::Counter::kIsIterationInvariantRate);
}

// --- baseline: materialized scores in float, Eigen GEMMs, parallel over heads ---------------------------
using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Strided = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
using CStrided = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;

struct Materialized {
  Tensor<float> out;
  std::vector<Mat> P;  // [B * H] of [T, S]: kept for the backward
};

Materialized materialized_forward(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v) {
  const int64_t T = q.dim(1), S = k.dim(1), rep = kH / kKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(kD));
  Materialized m{Tensor<float>::empty(q.shape()), std::vector<Mat>(static_cast<size_t>(kB * kH))};
  parallel_for(kB * kH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / kH, h = bh % kH, g = h / rep;
      CStrided Q(q.data() + (b * T * kH + h) * kD, T, kD, Eigen::OuterStride<>(kH * kD));
      CStrided K(k.data() + (b * S * kKV + g) * kD, S, kD, Eigen::OuterStride<>(kKV * kD));
      CStrided V(v.data() + (b * S * kKV + g) * kD, S, kD, Eigen::OuterStride<>(kKV * kD));
      Mat& P = m.P[static_cast<size_t>(bh)];
      P.noalias() = scale * (Q * K.transpose());  // [T, S]
      for (int64_t t = 0; t < T; ++t) {
        const int64_t vis = t + (S - T) + 1;  // causal
        auto row = P.row(t);
        row.tail(S - vis).setZero();
        auto x = row.head(vis);
        x = (x.array() - x.maxCoeff()).exp().matrix();
        x /= x.sum();
      }
      Strided O(m.out.data() + (b * T * kH + h) * kD, T, kD, Eigen::OuterStride<>(kH * kD));
      O.noalias() = P * V;
    }
  });
  return m;
}

AttentionGrads<float> materialized_backward(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v,
                                            const Materialized& m, const Tensor<float>& g_out) {
  const int64_t T = q.dim(1), S = k.dim(1), rep = kH / kKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(kD));
  AttentionGrads<float> r{Tensor<float>::empty(q.shape()), Tensor<float>::zeros(k.shape()),
                          Tensor<float>::zeros(v.shape())};
  parallel_for(kB * kKV, 1, [&](int64_t begin, int64_t end) {
    Mat dS(T, S);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / kKV, g = bg % kKV;
      CStrided K(k.data() + (b * S * kKV + g) * kD, S, kD, Eigen::OuterStride<>(kKV * kD));
      CStrided V(v.data() + (b * S * kKV + g) * kD, S, kD, Eigen::OuterStride<>(kKV * kD));
      Strided dK(r.dk.data() + (b * S * kKV + g) * kD, S, kD, Eigen::OuterStride<>(kKV * kD));
      Strided dV(r.dv.data() + (b * S * kKV + g) * kD, S, kD, Eigen::OuterStride<>(kKV * kD));
      for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
        const Mat& P = m.P[static_cast<size_t>(b * kH + h)];
        CStrided Q(q.data() + (b * T * kH + h) * kD, T, kD, Eigen::OuterStride<>(kH * kD));
        CStrided dO(g_out.data() + (b * T * kH + h) * kD, T, kD, Eigen::OuterStride<>(kH * kD));
        Strided dQ(r.dq.data() + (b * T * kH + h) * kD, T, kD, Eigen::OuterStride<>(kH * kD));
        dV.noalias() += P.transpose() * dO;
        dS.noalias() = dO * V.transpose();  // dP
        const Eigen::VectorXf rowdot = (P.array() * dS.array()).rowwise().sum();
        dS = (P.array() * (dS.array().colwise() - rowdot.array())).matrix();
        dQ.noalias() = scale * (dS * K);
        dK.noalias() += scale * (dS.transpose() * Q);
      }
    }
  });
  return r;
}

// Max |baseline - cpu::| over out, dq, dk, dv: a baseline computing something else would make the ratio moot.
double max_diff(const Tensor<float>& a, const Tensor<float>& b) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, static_cast<double>(std::abs(a.data()[i] - b.data()[i])));
  return m;
}
double max_diff_vs_flash(const Data& d) {
  const auto base = materialized_forward(d.q, d.k, d.v);
  const auto base_g = materialized_backward(d.q, d.k, d.v, base, d.g);
  const auto fwd = cpu::attention_forward(d.q, d.k, d.v, AttentionOptions{});
  const auto g = cpu::attention_backward(d.q, d.k, d.v, fwd.out, fwd.lse, d.g, AttentionOptions{});
  return std::max(
      {max_diff(base.out, fwd.out), max_diff(base_g.dq, g.dq), max_diff(base_g.dk, g.dk), max_diff(base_g.dv, g.dv)});
}

// --- benchmarks ---------------------------------------------------------------------------------------
void BM_attention_flash_cpu(benchmark::State& st) {
  const int64_t T = st.range(0);
  const bool causal = st.range(1) != 0;
  const Data& d = data_for(T);
  const AttentionOptions o{causal, 0, 0};
  for (auto _ : st) {
    auto fwd = cpu::attention_forward(d.q, d.k, d.v, o);
    auto grads = cpu::attention_backward(d.q, d.k, d.v, fwd.out, fwd.lse, d.g, o);
    benchmark::DoNotOptimize(grads.dq.data());
  }
  set_counters(st, T, causal);
}

// Args: {T, causal, H, KV}. H=4, KV=1: a single (b, kv head) pair, so the backward parallelizes over key and
// query tiles (the two-pass path) instead of over kv heads.
void BM_attention_flash_cpu_heads(benchmark::State& st) {
  const int64_t T = st.range(0), H = st.range(2), KV = st.range(3);
  const bool causal = st.range(1) != 0;
  const Data& d = data_for(T, H, KV);
  const AttentionOptions o{causal, 0, 0};
  for (auto _ : st) {
    auto fwd = cpu::attention_forward(d.q, d.k, d.v, o);
    auto grads = cpu::attention_backward(d.q, d.k, d.v, fwd.out, fwd.lse, d.g, o);
    benchmark::DoNotOptimize(grads.dq.data());
  }
  set_counters(st, T, causal, H);
}

void BM_attention_materialized_f32(benchmark::State& st) {
  const int64_t T = st.range(0);
  const Data& d = data_for(T);
  for (auto _ : st) {
    auto fwd = materialized_forward(d.q, d.k, d.v);
    auto grads = materialized_backward(d.q, d.k, d.v, fwd, d.g);
    benchmark::DoNotOptimize(grads.dq.data());
  }
  set_counters(st, T, true);
  st.counters["max_diff_vs_flash"] = max_diff_vs_flash(d);
}

void BM_attention_ref(benchmark::State& st) {
  const int64_t T = st.range(0);
  const Data& d = data_for(T);
  const AttentionOptions o{true, 0, 0};
  for (auto _ : st) {
    auto out = ref::attention(d.q, d.k, d.v, o);
    auto grads = ref::attention_backward(d.q, d.k, d.v, out, d.g, o);
    benchmark::DoNotOptimize(grads.dq.data());
  }
  set_counters(st, T, true);
}

}  // namespace

// Args: {T, causal}. The main comparison is T=1024 causal; non-causal shows what skipping masked tiles saves.
BENCHMARK(BM_attention_flash_cpu)
    ->Args({256, 1})
    ->Args({1024, 1})
    ->Args({1024, 0})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();
BENCHMARK(BM_attention_flash_cpu_heads)
    ->Args({1024, 1, 4, 1})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();
BENCHMARK(BM_attention_materialized_f32)
    ->Arg(256)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();
BENCHMARK(BM_attention_ref)->Arg(256)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();

BENCHMARK_MAIN();
