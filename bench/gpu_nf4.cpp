// The 4-bit kernels (kernels/nf4.cu) against their ceilings, measured in the same run (Google Benchmark, manual
// CUDA-event timing): device-to-device copy bandwidth, and cuBLASLt bf16 on the unquantized weight at the same
// shape. Issue 7's targets, printed as RESULT rows for scripts/device_check.sh's table:
//   GEMV (M = 1) at 4096x4096 and the model shapes: >= 85% of copy bandwidth, >= 3x faster than cuBLASLt bf16
//   M = 16 costs <= 1.25x the M = 1 time
//   training (M = 4096 tokens): forward x·Wᵀ and backward dy·W each <= 1.15x cuBLASLt bf16 on dense weights
// Bytes of a GEMV: the packed weight + its statistics (what Nf4Device holds) + x + y. Shapes are [out, in].
// Run: build/device/bench/gpu_nf4 [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "distill/cuda/matmul.hpp"
#include "distill/cuda/nf4.hpp"
#include "gpu_bench.hpp"

using namespace distill;

namespace {

struct Shape2 {
  int64_t rows, cols;
  std::string str() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};
const std::vector<Shape2> kDecodeShapes{{4096, 4096}, {1152, 6912}, {6912, 1152}, {1152, 1024},
                                        {256, 1152},  {2560, 9728}, {9728, 2560}, {2560, 4096}};
const std::vector<Shape2> kTrainShapes{{1152, 6912}, {6912, 1152}, {1152, 1024},
                                       {2560, 9728}, {9728, 2560}, {2560, 4096}};
constexpr int64_t kTrainM = 4096;

// One weight per shape, quantized once (NF4, blocksize 64, double quant, bf16: the student's format).
struct Weight {
  std::shared_ptr<const cuda::Nf4Device> q;
  Tensor<bf16, Cuda> dense;
};
Weight& weight(const Shape2& s) {
  static std::map<std::string, Weight> cache;
  auto it = cache.find(s.str());
  if (it != cache.end()) return it->second;
  const Tensor<float> w = Tensor<float>::uniform({s.rows, s.cols}, 5, -0.05, 0.05).cast<bf16>().cast<float>();
  const auto q = quant::quantize_4bit(w.data(), {s.rows, s.cols}, quant::QuantType::Nf4, 64, true, io::StDtype::BF16);
  Weight& out = cache[s.str()];
  out.q = cuda::upload_nf4(q);
  out.dense = w.cast<bf16>().to<Cuda>();
  return out;
}

std::map<std::string, double> g_us;  // benchmark name -> median µs per call

// Times fn with CUDA events, one iteration per measurement; Google Benchmark aggregates.
template <class F>
void run_timed(benchmark::State& st, const std::string& key, double bytes, double flops, F&& fn) {
  for (int i = 0; i < 3; ++i) fn();
  cuda::synchronize();
  cuda::EventTimer timer;
  std::vector<double> all;
  for (auto _ : st) {
    timer.start();
    fn();
    const double ms = timer.stop_ms();
    st.SetIterationTime(ms * 1e-3);
    all.push_back(ms * 1e3);
  }
  std::sort(all.begin(), all.end());
  const double us = all.empty() ? 0 : all[all.size() / 2];
  g_us[key] = us;
  if (bytes > 0) st.counters["GB/s"] = bytes / (us * 1e-6) / 1e9;
  if (flops > 0) st.counters["TFLOP/s"] = flops / (us * 1e-6) / 1e12;
}

void bm_copy(benchmark::State& st) {
  const size_t bytes = size_t{256} << 20;
  void* a = cuda::device_malloc(bytes);
  void* b = cuda::device_malloc(bytes);
  cuda::memset_device_zero(a, bytes);
  run_timed(st, "copy", 2.0 * bytes, 0, [&] { cuda::memcpy_device_to_device(b, a, bytes); });
  cuda::device_free(a);
  cuda::device_free(b);
}

void bm_gemv(benchmark::State& st, Shape2 s, int64_t M, bool nf4) {
  Weight& w = weight(s);
  const auto x = Tensor<float>::uniform({M, s.cols}, 9).cast<bf16>().to<Cuda>();
  auto y = Tensor<bf16, Cuda>::empty({M, s.rows});
  const double wbytes = nf4 ? static_cast<double>(w.q->device_bytes()) : 2.0 * s.rows * s.cols;
  const double bytes = wbytes + 2.0 * M * (s.rows + s.cols);
  const std::string key = std::string(nf4 ? "nf4" : "cublaslt") + "_M" + std::to_string(M) + "_" + s.str();
  if (nf4)
    run_timed(st, key, bytes, 2.0 * M * s.rows * s.cols,
              [&] { cuda::nf4_gemv<bf16>(x.data(), s.cols, M, w.q->view(), y.data(), s.rows); });
  else
    run_timed(st, key, bytes, 2.0 * M * s.rows * s.cols, [&] {
      cuda::gemm<bf16>(x.data(), s.cols, false, w.dense.data(), s.cols, true, y.data(), s.rows, M, s.rows, s.cols, 1, 0,
                       0, 0);
    });
}

// Training: forward y = x·Wᵀ [M, rows] and backward dx = dy·W [M, cols].
void bm_train(benchmark::State& st, Shape2 s, bool backward, bool nf4) {
  Weight& w = weight(s);
  const int64_t M = kTrainM;
  const auto in = Tensor<float>::uniform({M, backward ? s.rows : s.cols}, 13).cast<bf16>().to<Cuda>();
  auto out = Tensor<bf16, Cuda>::empty({M, backward ? s.cols : s.rows});
  const std::string key = std::string(nf4 ? "nf4" : "cublaslt") + (backward ? "_bwd_" : "_fwd_") + s.str();
  const double flops = 2.0 * M * s.rows * s.cols;
  run_timed(st, key, 0, flops, [&] {
    if (nf4) {
      out = backward ? cuda::nf4_matmul_dx(in, *w.q) : cuda::nf4_matmul(in, *w.q);
    } else if (backward) {
      cuda::gemm<bf16>(in.data(), s.rows, false, w.dense.data(), s.cols, false, out.data(), s.cols, M, s.cols, s.rows,
                       1, 0, 0, 0);
    } else {
      cuda::gemm<bf16>(in.data(), s.cols, false, w.dense.data(), s.cols, true, out.data(), s.rows, M, s.rows, s.cols, 1,
                       0, 0, 0);
    }
  });
}

double get(const std::string& k) {
  auto it = g_us.find(k);
  return it == g_us.end() ? 0 : it->second;
}

}  // namespace

int main(int argc, char** argv) {
  if (!bench::gpu_or_skip("gpu_nf4")) return 0;
  benchmark::RegisterBenchmark("copy/256MiB", bm_copy)->UseManualTime()->MinTime(0.05);
  for (const Shape2& s : kDecodeShapes)
    for (int64_t M : {int64_t{1}, int64_t{16}})
      for (bool nf4 : {true, false})
        benchmark::RegisterBenchmark(
            ((nf4 ? "nf4_gemv/M" : "cublaslt_bf16/M") + std::to_string(M) + "/" + s.str()).c_str(),
            [=](benchmark::State& st) { bm_gemv(st, s, M, nf4); })
            ->UseManualTime()
            ->MinTime(0.05);
  for (const Shape2& s : kTrainShapes)
    for (bool bwd : {false, true})
      for (bool nf4 : {true, false})
        benchmark::RegisterBenchmark((std::string(nf4 ? "nf4_" : "cublaslt_bf16_") + (bwd ? "bwd" : "fwd") + "/M" +
                                      std::to_string(kTrainM) + "/" + s.str())
                                         .c_str(),
                                     [=](benchmark::State& st) { bm_train(st, s, bwd, nf4); })
            ->UseManualTime()
            ->MinTime(0.05);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  // The targets, as RESULT rows (value | unit | % of target-or-ceiling | what).
  const double copy_us = get("copy");
  const double copy_gbps = copy_us > 0 ? 2.0 * (size_t{256} << 20) / (copy_us * 1e-6) / 1e9 : 0;
  std::printf("CEILING|copy|256MiB|%.1f|GB/s\n", copy_gbps);
  for (const Shape2& s : kDecodeShapes) {
    Weight& w = weight(s);
    const double t1 = get("nf4_M1_" + s.str()), t16 = get("nf4_M16_" + s.str()), lt = get("cublaslt_M1_" + s.str());
    if (t1 <= 0) continue;
    const double gbps = (static_cast<double>(w.q->device_bytes()) + 2.0 * (s.rows + s.cols)) / (t1 * 1e-6) / 1e9;
    bench::report("nf4_gemv_M1", s.str(), gbps, "GB/s", copy_gbps, "copy (target 85%)");
    bench::report("nf4_gemv_M1_speedup_vs_cublaslt", s.str(), lt / t1, "x", 3.0, "target 3x");
    bench::report("nf4_gemv_M16_over_M1", s.str(), t16 / t1, "x", 1.25, "target <= 1.25x");
  }
  for (const Shape2& s : kTrainShapes) {
    for (const char* d : {"fwd", "bwd"}) {
      const double a = get(std::string("nf4_") + d + "_" + s.str()),
                   b = get(std::string("cublaslt_") + d + "_" + s.str());
      if (a > 0 && b > 0)
        bench::report(std::string("nf4_train_") + d + "_over_cublaslt", "M4096 " + s.str(), a / b, "x", 1.15,
                      "target <= 1.15x");
    }
  }
  return 0;
}
