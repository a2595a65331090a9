// Fused element-wise expressions vs the same math with every intermediate materialized (one pass per
// op through our own evaluator), on 1M f32 elements, GB/s counters (bytes the fused pass must move:
// its inputs once and its output once). Target: fused >= 1.5x faster.
#include <benchmark/benchmark.h>

#include "distill/autograd.hpp"

using namespace distill;
constexpr int64_t kN = 1 << 20;

static void set_bytes(benchmark::State& st, int streams) {
  st.counters["GB/s"] = benchmark::Counter(double(streams) * kN * sizeof(float),
                                           benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// silu(a) * b
static void BM_silu_mul_fused(benchmark::State& st) {
  auto a = Tensor<float>::uniform({kN}, 1), b = Tensor<float>::uniform({kN}, 2);
  auto out = Tensor<float>::empty({kN});
  for (auto _ : st) {
    expr::assign(out, silu(a) * b);
    benchmark::DoNotOptimize(out.data());
  }
  set_bytes(st, 3);
}
static void BM_silu_mul_materialized(benchmark::State& st) {
  auto a = Tensor<float>::uniform({kN}, 1), b = Tensor<float>::uniform({kN}, 2);
  auto out = Tensor<float>::empty({kN});
  for (auto _ : st) {
    auto s = eval(silu(a));  // temporary
    expr::assign(out, s * b);
    benchmark::DoNotOptimize(out.data());
  }
  set_bytes(st, 3);
}

// A 5-op chain: (a * b + c) * sigmoid(a) - square(c)
static void BM_chain5_fused(benchmark::State& st) {
  auto a = Tensor<float>::uniform({kN}, 1), b = Tensor<float>::uniform({kN}, 2), c = Tensor<float>::uniform({kN}, 3);
  auto out = Tensor<float>::empty({kN});
  for (auto _ : st) {
    expr::assign(out, (a * b + c) * sigmoid(a) - square(c));
    benchmark::DoNotOptimize(out.data());
  }
  set_bytes(st, 4);
}
static void BM_chain5_materialized(benchmark::State& st) {
  auto a = Tensor<float>::uniform({kN}, 1), b = Tensor<float>::uniform({kN}, 2), c = Tensor<float>::uniform({kN}, 3);
  auto out = Tensor<float>::empty({kN});
  for (auto _ : st) {
    auto t1 = eval(a * b);
    auto t2 = eval(t1 + c);
    auto t3 = eval(sigmoid(a));
    auto t4 = eval(t2 * t3);
    auto t5 = eval(square(c));
    expr::assign(out, t4 - t5);
    benchmark::DoNotOptimize(out.data());
  }
  set_bytes(st, 4);
}

// The derived backward of silu(a) * b (one fused pass producing both gradients) vs per-op backward
// with materialized intermediates.
static void BM_silu_mul_backward_fused(benchmark::State& st) {
  auto a = Var<float>::param(Tensor<float>::uniform({kN}, 1)), b = Var<float>::param(Tensor<float>::uniform({kN}, 2));
  auto g = Tensor<float>::uniform({kN}, 3);
  for (auto _ : st) {
    Var<float> y = silu(a) * b;
    y.backward(g);
    benchmark::DoNotOptimize(a.grad().data());
  }
  set_bytes(st, 6);  // read a, b, g; write y, da, db
}
static void BM_silu_mul_backward_materialized(benchmark::State& st) {
  auto a = Var<float>::param(Tensor<float>::uniform({kN}, 1)), b = Var<float>::param(Tensor<float>::uniform({kN}, 2));
  auto g = Tensor<float>::uniform({kN}, 3);
  for (auto _ : st) {
    Var<float> s = silu(a);  // recorded separately: two tape nodes, a materialized intermediate
    Var<float> y = s * b;
    y.backward(g);
    benchmark::DoNotOptimize(a.grad().data());
  }
  set_bytes(st, 6);
}

BENCHMARK(BM_silu_mul_fused)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_silu_mul_materialized)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_chain5_fused)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_chain5_materialized)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_silu_mul_backward_fused)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_silu_mul_backward_materialized)->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
