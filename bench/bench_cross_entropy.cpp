// Cross-entropy benchmarks, each beside its baseline:
//  - cross_entropy forward + backward on given logits [N, V]: the cpu:: path vs the ref:: plain loops (GB/s over
//    the logits read by forward, read by backward and read-modify-written in the gradient);
//  - the lm_head + loss: unfused (Eigen GEMM to a materialized [N, V] logits tensor, cross_entropy, two GEMMs for
//    the gradients) vs linear_cross_entropy (chunked, never holding [N, V]; one more GEMM to recompute logits).
//    FLOP/s counts the GEMM work each one does; "logits_MB" is the largest logits buffer each one holds.
#include <benchmark/benchmark.h>

#include <random>

#include "distill/ops/cross_entropy.hpp"

using namespace distill;

namespace {

Tensor<int32_t> random_targets(int64_t N, int64_t V) {
  std::mt19937_64 g(7);
  auto t = Tensor<int32_t>::empty({N});
  for (int64_t i = 0; i < N; ++i) t.data()[i] = static_cast<int32_t>(g() % V);
  return t;
}

void logits_counters(benchmark::State& st, int64_t N, int64_t V) {
  const double bytes = 4.0 * static_cast<double>(N * V) * 4;  // fwd read, bwd read, grad read + write
  st.counters["GB/s"] = benchmark::Counter(bytes * static_cast<double>(st.iterations()), benchmark::Counter::kIsRate,
                                           benchmark::Counter::kIs1000);
}

void BM_cross_entropy_ref(benchmark::State& st) {
  const int64_t N = st.range(0), V = st.range(1);
  const auto x = Tensor<float>::uniform({N, V}, 1);
  const auto t = random_targets(N, V);
  for (auto _ : st) {
    auto loss = ref::cross_entropy(x, t);
    auto dx = ref::cross_entropy_backward(x, t, 1.0);
    benchmark::DoNotOptimize(loss.data());
    benchmark::DoNotOptimize(dx.data());
  }
  logits_counters(st, N, V);
}

void BM_cross_entropy_cpu(benchmark::State& st) {
  const int64_t N = st.range(0), V = st.range(1);
  const auto x = Tensor<float>::uniform({N, V}, 1);
  const auto t = random_targets(N, V);
  auto dx = Tensor<float>::zeros({N, V});
  for (auto _ : st) {
    auto ctx = cpu::cross_entropy_forward(x, t);
    cpu::cross_entropy_backward(x, ctx, 1.0, dx);
    benchmark::DoNotOptimize(ctx.loss);
    benchmark::DoNotOptimize(dx.data());
  }
  logits_counters(st, N, V);
}

void gemm_counters(benchmark::State& st, int64_t N, int64_t C, int64_t V, int gemms, double logits_rows) {
  const double flops = 2.0 * static_cast<double>(N) * static_cast<double>(C) * static_cast<double>(V) * gemms;
  st.counters["FLOP/s"] = benchmark::Counter(flops * static_cast<double>(st.iterations()), benchmark::Counter::kIsRate,
                                             benchmark::Counter::kIs1000);
  st.counters["logits_MB"] = logits_rows * static_cast<double>(V) * 4.0 / 1e6;
}

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Baseline: logits = H W^T materialized, cross_entropy on them, dH = dL W, dW = dL^T H.
void BM_linear_ce_unfused(benchmark::State& st) {
  const int64_t N = st.range(0), C = st.range(1), V = st.range(2);
  const auto h = Tensor<float>::uniform({N, C}, 2), w = Tensor<float>::uniform({V, C}, 3, -0.05, 0.05);
  const auto t = random_targets(N, V);
  auto dh = Tensor<float>::zeros({N, C}), dw = Tensor<float>::zeros({V, C});
  const Eigen::Map<const Mat> H(h.data(), N, C), W(w.data(), V, C);
  Eigen::Map<Mat> dH(dh.data(), N, C), dW(dw.data(), V, C);
  for (auto _ : st) {
    auto logits = Tensor<float>::empty({N, V});
    Eigen::Map<Mat>(logits.data(), N, V).noalias() = H * W.transpose();
    auto ctx = cpu::cross_entropy_forward(logits, t);
    auto dl = Tensor<float>::zeros({N, V});
    cpu::cross_entropy_backward(logits, ctx, 1.0, dl);
    const Eigen::Map<const Mat> DL(dl.data(), N, V);
    dH.noalias() += DL * W;
    dW.noalias() += DL.transpose() * H;
    benchmark::DoNotOptimize(ctx.loss);
  }
  gemm_counters(st, N, C, V, 3, 2.0 * static_cast<double>(N));
}

void BM_linear_ce_fused(benchmark::State& st) {
  const int64_t N = st.range(0), C = st.range(1), V = st.range(2), chunk = st.range(3);
  const auto h = Tensor<float>::uniform({N, C}, 2), w = Tensor<float>::uniform({V, C}, 3, -0.05, 0.05);
  const auto t = random_targets(N, V);
  auto dh = Tensor<float>::zeros({N, C}), dw = Tensor<float>::zeros({V, C});
  for (auto _ : st) {
    auto ctx = cpu::linear_cross_entropy_forward(h, w, t, kIgnoreIndex, chunk);
    cpu::linear_cross_entropy_backward(h, w, ctx, 1.0, dh, dw, chunk);
    benchmark::DoNotOptimize(ctx.loss);
  }
  gemm_counters(st, N, C, V, 4, static_cast<double>(std::min(N, chunk)));
}

}  // namespace

BENCHMARK(BM_cross_entropy_ref)->Args({64, 32768})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_cross_entropy_cpu)->Args({64, 32768})->Unit(benchmark::kMillisecond)->UseRealTime();
// N, C, V (Gemma3-1B: C = 1152, V = 262144; scaled down so a 2-core run stays short).
BENCHMARK(BM_linear_ce_unfused)->Args({256, 512, 32768})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_linear_ce_fused)
    ->Args({256, 512, 32768, 64})
    ->Args({256, 512, 32768, 256})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
