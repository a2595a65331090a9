// GPU matmul benchmark (run by scripts/device_check.sh). First the ceiling: cuBLASLt called directly on a
// bf16 8192³ GEMM (f32 accumulate), the best of the heuristic's top algorithms. Then our cuda::gemm at the
// same size, and our Tensor-level cuda::matmul (bf16 and f32) at the model's linear-layer shapes: 4096 tokens
// through Gemma3-1B's MLP (1152 -> 6912) and Qwen3-4B's (2560 -> 9728), weight in nn.Linear layout
// [out, in], with the two backward products (dX = dY·W, dW = dYᵀ·X). Rows:
//   RESULT|<kernel>|<shape>|<TFLOP/s>|TFLOP/s|<% of ceiling>|cublaslt_bf16_gemm
// f32 runs CUBLAS_COMPUTE_32F without TF32 (to match the CPU), so it sits far below the bf16 ceiling by
// design (no tensor cores); its % is reported against the same bf16 ceiling.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "distill/cuda/check.hpp"
#include "distill/cuda/matmul.hpp"
#include "gpu_bench.hpp"

using namespace distill;

namespace {

// Random values in [-1, 1) (xorshift; fast enough for 64M elements), copied to a fresh device tensor.
template <class T>
Tensor<T, Cuda> random_dev(const Shape& s, uint64_t seed) {
  auto h = Tensor<T>::empty(s);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < h.numel(); ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    h.data()[i] = static_cast<T>(static_cast<float>(static_cast<double>(x >> 11) * 0x1.0p-52 - 1.0));
  }
  return h.template to<Cuda>();
}

double tflops(double flop, double ms) { return flop / (ms * 1e-3) / 1e12; }

// cuBLASLt directly: bf16 n³ (column-major, no transposes), best of the heuristic's top algorithms.
double cublaslt_bf16_ceiling(int64_t n) {
  auto a = random_dev<bf16>({n, n}, 1), b = random_dev<bf16>({n, n}, 2);
  auto c = Tensor<bf16, Cuda>::empty({n, n});
  cublasLtHandle_t h = cuda::cublaslt_handle();
  size_t ws_bytes = 0;
  void* ws = cuda::cublaslt_workspace(&ws_bytes);
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t l = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  DISTILL_CHECK_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  DISTILL_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&l, CUDA_R_16BF, n, n, n));
  DISTILL_CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws64 = ws_bytes;
  DISTILL_CHECK_CUBLAS(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws64, sizeof(ws64)));
  constexpr int kAlgos = 8;
  cublasLtMatmulHeuristicResult_t res[kAlgos] = {};
  int found = 0;
  DISTILL_CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(h, op, l, l, l, l, pref, kAlgos, res, &found));
  const float alpha = 1.f, beta = 0.f;
  const double flop = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  double best = 0;
  for (int i = 0; i < found; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    const double ms = bench::time_ms(
        [&] {
          DISTILL_CHECK_CUBLAS(cublasLtMatmul(h, op, &alpha, a.data(), l, b.data(), l, &beta, c.data(), l, c.data(), l,
                                              &res[i].algo, ws, ws_bytes, cuda::stream()));
        },
        2, 10);
    best = std::max(best, tflops(flop, ms));
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(l);
  cublasLtMatmulDescDestroy(op);
  return best;
}

// Our gemm() at the ceiling's shape (heuristic top-1, cached plan).
double gemm_bf16(int64_t n) {
  auto a = random_dev<bf16>({n, n}, 3), b = random_dev<bf16>({n, n}, 4);
  auto c = Tensor<bf16, Cuda>::empty({n, n});
  const double ms = bench::time_ms(
      [&] { cuda::gemm<bf16>(a.data(), n, false, b.data(), n, false, c.data(), n, n, n, n, 1, 0, 0, 0); });
  return tflops(2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n), ms);
}

// The three products of one linear layer y = x·Wᵀ (x [T, in], W [out, in]) through cuda::matmul.
template <class T>
void linear_layer(int64_t tokens, int64_t in, int64_t out, double ceiling) {
  const auto x = random_dev<T>({tokens, in}, 5), w = random_dev<T>({out, in}, 6), dy = random_dev<T>({tokens, out}, 7);
  const double flop = 2.0 * static_cast<double>(tokens) * static_cast<double>(in) * static_cast<double>(out);
  const std::string dt = dtype_name_v<T>;
  const std::string shape = std::to_string(tokens) + "x" + std::to_string(in) + "->" + std::to_string(out);
  const auto before = cuda::detail::gemm_counters();
  struct Case {
    const char* name;
    Tensor<T, Cuda> a, b;
    bool ta, tb;
  };
  const Case cases[] = {
      {"fwd_y=x.wT", x, w, false, true}, {"bwd_dx=dy.w", dy, w, false, false}, {"bwd_dw=dyT.x", dy, x, true, false}};
  for (const auto& c : cases) {
    const double ms = bench::time_ms([&] { (void)cuda::matmul(c.a, c.b, c.ta, c.tb); });
    bench::report("matmul_" + dt + "_" + c.name, shape, tflops(flop, ms), "TFLOP/s", ceiling, "cublaslt_bf16_gemm");
  }
  if (cuda::detail::gemm_counters().tiled != before.tiled)
    std::printf("WARNING: %s %s took the tiled fallback kernel, not cuBLASLt\n", dt.c_str(), shape.c_str());
}

}  // namespace

int main() {
  if (!bench::gpu_or_skip("gpu_matmul")) return 0;
  const int64_t n = 8192;
  const double ceiling = cublaslt_bf16_ceiling(n);
  const std::string sq = std::to_string(n) + "^3";
  bench::report("cublaslt_bf16_gemm", sq, ceiling, "TFLOP/s", ceiling, "cublaslt_bf16_gemm");
  std::printf("CEILING|gemm_bf16_tflops|%.1f\n", ceiling);
  std::fflush(stdout);
  bench::report("gemm_bf16_ours", sq, gemm_bf16(n), "TFLOP/s", ceiling, "cublaslt_bf16_gemm");
  for (const auto& [in, out] : {std::pair<int64_t, int64_t>{1152, 6912}, std::pair<int64_t, int64_t>{2560, 9728}}) {
    linear_layer<bf16>(4096, in, out, ceiling);
    linear_layer<float>(4096, in, out, ceiling);
  }
  return 0;
}
