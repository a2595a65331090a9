// Matmul: ours (cpu::matmul) vs Eigen called directly vs a naive triple loop, f32, FLOP/s counters.
// Target: ours within 10% of Eigen at 512^3 (ours adds shape checks and the output allocation).
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "distill/ops/matmul.hpp"

using namespace distill;
using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

static void set_flops(benchmark::State& st, int64_t n) {
  st.counters["FLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate);
}

static void BM_matmul_distill(benchmark::State& st) {
  const int64_t n = st.range(0);
  auto a = Tensor<float>::uniform({n, n}, 1), b = Tensor<float>::uniform({n, n}, 2);
  for (auto _ : st) {
    auto c = cpu::matmul(a, b);
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(st, n);
}

static void BM_matmul_eigen(benchmark::State& st) {
  const int64_t n = st.range(0);
  auto a = Tensor<float>::uniform({n, n}, 1), b = Tensor<float>::uniform({n, n}, 2);
  Eigen::Map<const Mat> ma(a.data(), n, n), mb(b.data(), n, n);
  for (auto _ : st) {
    Mat c(n, n);  // same allocation per call as ours
    c.noalias() = ma * mb;
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(st, n);
}

static void BM_matmul_naive(benchmark::State& st) {
  const int64_t n = st.range(0);
  auto a = Tensor<float>::uniform({n, n}, 1), b = Tensor<float>::uniform({n, n}, 2);
  auto c = Tensor<float>::empty({n, n});
  const float *A = a.data(), *B = b.data();
  float* C = c.data();
  for (auto _ : st) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0;
        for (int64_t k = 0; k < n; ++k) acc += A[i * n + k] * B[k * n + j];
        C[i * n + j] = acc;
      }
    benchmark::DoNotOptimize(C);
  }
  set_flops(st, n);
}

// Training-shaped: activations [B*T, C] times a transposed weight [N, C] (nn.Linear layout).
static void BM_matmul_distill_linear(benchmark::State& st) {
  auto x = Tensor<float>::uniform({4, 128, 512}, 1), w = Tensor<float>::uniform({1024, 512}, 2);
  for (auto _ : st) {
    auto y = cpu::matmul(x, w, false, true);
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["FLOP/s"] = benchmark::Counter(2.0 * 512 * 512 * 1024, benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_matmul_distill)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_matmul_eigen)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_matmul_naive)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_matmul_distill_linear)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
