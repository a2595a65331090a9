// GPU benchmark of the loss and embedding kernels (kernels/cross_entropy.cu, kernels/embedding.cu):
//  - cross_entropy forward / backward / both over bf16 logits [4096, 262144] (Gemma3's vocabulary): GB/s of
//    the logits passes (forward reads the logits; backward reads them and read-modify-writes the gradient)
//    against the measured copy bandwidth;
//  - linear_cross_entropy forward / backward (N 4096, C 1152, V 262144, bf16): TFLOP/s (2NVC forward,
//    6NVC backward) against a cuBLASLt bf16 GEMM of the same class;
//  - the peak device memory during each fwd+bwd call beyond its inputs and gradients (reset_peak_memory()
//    first), against the size of an [N, V] f32 buffer: it shows that no such buffer exists;
//  - embedding gather and scatter-add at [8192 tokens, 2560] (Qwen3's hidden size, V 151936), bf16: GB/s.
// Inputs are filled from a random host block tiled over the device buffer (fast to set up, same timing).
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "distill/cuda/cross_entropy.hpp"
#include "distill/cuda/embedding.hpp"
#include "distill/cuda/matmul.hpp"
#include "distill/ops/cross_entropy.hpp"
#include "gpu_bench.hpp"

using namespace distill;

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// A device tensor of `shape` filled with uniform values in [lo, hi), tiled from a host block.
template <class T>
Tensor<T, Cuda> device_uniform(const Shape& shape, uint64_t seed, double lo, double hi) {
  auto d = Tensor<T, Cuda>::empty(shape);
  const int64_t n = d.numel(), block = std::min<int64_t>(n, int64_t{1} << 23);
  const auto h = Tensor<float>::uniform({block}, seed, lo, hi).cast<T>();
  for (int64_t off = 0; off < n; off += block) {
    const int64_t len = std::min(block, n - off);
    cuda::memcpy_host_to_device(d.data() + off, h.data(), sizeof(T) * static_cast<size_t>(len));
  }
  return d;
}

Tensor<int32_t> random_targets(int64_t N, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  auto t = Tensor<int32_t>::empty({N});
  for (int64_t i = 0; i < N; ++i) t.data()[i] = static_cast<int32_t>(g() % static_cast<uint64_t>(V));
  return t;
}

// Bytes handed out by the caching allocator at the peak of fn(), beyond what was in use before.
template <class F>
double peak_extra_mib(F&& fn) {
  cuda::synchronize();
  const size_t before = cuda::memory_stats().current_bytes;
  cuda::reset_peak_memory();
  fn();
  cuda::synchronize();
  return static_cast<double>(cuda::memory_stats().peak_bytes - before) / kMiB;
}

void bench_cross_entropy(double copy_gbps) {
  const int64_t N = 4096, V = 262144;
  const std::string shape = "[" + std::to_string(N) + ", " + std::to_string(V) + "] bf16";
  const auto x = device_uniform<bf16>({N, V}, 1, -4.0, 4.0);
  const auto t = random_targets(N, V, 2);
  auto dx = Tensor<bf16, Cuda>::zeros({N, V});
  const auto g = Tensor<bf16>::full(Shape(), bf16(1.0f)).to<Cuda>();
  const double bytes = static_cast<double>(N) * V * sizeof(bf16);

  auto ctx = cuda::cross_entropy_forward(x, t);
  const double fwd = bench::time_ms([&] { ctx = cuda::cross_entropy_forward(x, t); });
  const double bwd = bench::time_ms([&] { cuda::cross_entropy_backward(x, ctx, g, dx); });
  const double both = bench::time_ms([&] {
    const auto c = cuda::cross_entropy_forward(x, t);
    cuda::cross_entropy_backward(x, c, g, dx);
  });
  bench::report("cross_entropy_fwd", shape, bytes / (fwd * 1e-3) / 1e9, "GB/s", copy_gbps, "copy");
  bench::report("cross_entropy_bwd", shape, 3 * bytes / (bwd * 1e-3) / 1e9, "GB/s", copy_gbps, "copy");
  bench::report("cross_entropy_fwd_bwd", shape, 4 * bytes / (both * 1e-3) / 1e9, "GB/s", copy_gbps, "copy");
  bench::report("cross_entropy_fwd_bwd_time", shape, both, "ms", 0, "-");
  const double extra = peak_extra_mib([&] {
    const auto c = cuda::cross_entropy_forward(x, t);
    cuda::cross_entropy_backward(x, c, g, dx);
  });
  const double nv_f32 = static_cast<double>(N) * V * 4 / kMiB;
  bench::report("cross_entropy_peak_extra_mem", shape, extra, "MiB", nv_f32, "[N,V] f32 buffer");
}

void bench_linear_cross_entropy() {
  const int64_t N = 4096, C = 1152, V = 262144;
  const std::string shape =
      "N " + std::to_string(N) + ", C " + std::to_string(C) + ", V " + std::to_string(V) + " bf16";
  const auto h = device_uniform<bf16>({N, C}, 3, -1.0, 1.0);
  const auto w = device_uniform<bf16>({V, C}, 4, -0.05, 0.05);
  const auto t = random_targets(N, V, 5);
  auto dh = Tensor<bf16, Cuda>::zeros({N, C}), dw = Tensor<bf16, Cuda>::zeros({V, C});
  const auto g = Tensor<bf16>::full(Shape(), bf16(1.0f)).to<Cuda>();
  const double flop = 2.0 * N * V * C;

  // Ceiling: one cuBLASLt bf16 GEMM of the forward's shape ([N, C] @ [V, C]^T into a 32768-class chunk).
  const int64_t Vc = 32768;
  auto chunk = Tensor<bf16, Cuda>::empty({N, Vc});
  const double gemm_ms = bench::time_ms(
      [&] { cuda::gemm<bf16>(h.data(), C, false, w.data(), C, true, chunk.data(), Vc, N, Vc, C, 1, 0, 0, 0); });
  const double gemm_tflops = 2.0 * N * Vc * C / (gemm_ms * 1e-3) / 1e12;
  bench::report("gemm_bf16_ceiling", "[4096, 1152] x [32768, 1152]^T", gemm_tflops, "TFLOP/s", gemm_tflops, "gemm");

  auto ctx = cuda::linear_cross_entropy_forward(h, w, t);
  const double fwd = bench::time_ms([&] { ctx = cuda::linear_cross_entropy_forward(h, w, t); }, 2, 10);
  const double bwd = bench::time_ms([&] { cuda::linear_cross_entropy_backward(h, w, ctx, g, dh, dw); }, 2, 10);
  bench::report("linear_cross_entropy_fwd", shape, flop / (fwd * 1e-3) / 1e12, "TFLOP/s", gemm_tflops, "gemm");
  bench::report("linear_cross_entropy_bwd", shape, 3 * flop / (bwd * 1e-3) / 1e12, "TFLOP/s", gemm_tflops, "gemm");
  bench::report("linear_cross_entropy_fwd_bwd_time", shape, fwd + bwd, "ms", 0, "-");
  const double extra = peak_extra_mib([&] {
    const auto c = cuda::linear_cross_entropy_forward(h, w, t);
    cuda::linear_cross_entropy_backward(h, w, c, g, dh, dw);
  });
  const double nv_f32 = static_cast<double>(N) * V * 4 / kMiB;
  bench::report("linear_cross_entropy_peak_extra_mem", shape, extra, "MiB", nv_f32, "[N,V] f32 buffer");
}

void bench_embedding(double copy_gbps) {
  const int64_t n = 8192, C = 2560, V = 151936;
  const std::string shape =
      "[" + std::to_string(n) + " tokens, " + std::to_string(C) + "] bf16, V " + std::to_string(V);
  const auto w = device_uniform<bf16>({V, C}, 6, -1.0, 1.0);
  const auto ids = random_targets(n, V, 7).to<Cuda>();
  auto y = Tensor<bf16, Cuda>::empty({n, C});
  auto dw = Tensor<bf16, Cuda>::zeros({V, C});
  const auto g = device_uniform<bf16>({n, C}, 8, -1.0, 1.0);
  const double rows_bytes = static_cast<double>(n) * C * sizeof(bf16);

  const double fwd = bench::time_ms([&] { cuda::embedding_forward(w.data(), C, ids.data(), n, C, y.data(), C); });
  // Scatter: reads g, reads and writes the touched weight rows (random ids: nearly all distinct).
  const double bwd =
      bench::time_ms([&] { cuda::embedding_backward_accumulate(dw.data(), V, C, ids.data(), n, g.data()); });
  bench::report("embedding_gather", shape, 2 * rows_bytes / (fwd * 1e-3) / 1e9, "GB/s", copy_gbps, "copy");
  bench::report("embedding_scatter_add", shape, 3 * rows_bytes / (bwd * 1e-3) / 1e9, "GB/s", copy_gbps, "copy");
}

}  // namespace

int main() {
  if (!bench::gpu_or_skip("gpu_cross_entropy")) return 0;
  const double copy_gbps = bench::copy_bandwidth_gbps();
  bench::report("copy_d2d", "256 MiB", copy_gbps, "GB/s", copy_gbps, "copy");
  bench_cross_entropy(copy_gbps);
  cuda::empty_cache();
  bench_linear_cross_entropy();
  cuda::empty_cache();
  bench_embedding(copy_gbps);
  return 0;
}
