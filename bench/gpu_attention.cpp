// Fused attention on the GPU (kernels/attention_fwd.cu, kernels/attention_bwd.cu), bf16, causal, at the
// shapes of issue 3's target: B=1, H=16 query heads (KV = 4 and 8), T = S = 2048, head_dim 128 and 256.
// Times the forward, the backward, and forward + backward (what a training step runs), reports TFLOP/s
// with the flash-attention convention (forward 4 B H T S D, backward 2.5x that, both halved for the causal
// mask) and their share of the measured cuBLASLt bf16 GEMM rate. tools/bench_sdpa.py prints PyTorch's
// scaled_dot_product_attention at the same shapes (torch_sdpa_fwd / torch_sdpa_fwdbwd), so that
// scripts/device_check.sh shows the two side by side; the target is fwd+bwd >= 0.7x PyTorch.
#include <string>

#include "distill/cuda/attention.hpp"
#include "distill/cuda/matmul.hpp"
#include "gpu_bench.hpp"

using namespace distill;

namespace {

// cuBLASLt bf16 GEMM TFLOP/s at M = N = K = 8192: the tensor-core ceiling of this GPU.
double gemm_ceiling_tflops() {
  const int64_t n = 8192;
  auto a = Tensor<float>::uniform({n, n}, 1).cast<bf16>().to<Cuda>();
  auto b = Tensor<float>::uniform({n, n}, 2).cast<bf16>().to<Cuda>();
  auto c = Tensor<bf16, Cuda>::empty({n, n});
  const double ms = bench::time_ms(
      [&] { cuda::gemm(a.data(), n, false, b.data(), n, false, c.data(), n, n, n, n, 1, 0, 0, 0); }, 3, 10);
  return 2.0 * static_cast<double>(n) * n * n / (ms * 1e-3) / 1e12;
}

void run(int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D, double ceiling) {
  const int64_t S = T;
  const AttentionOptions o{true, 0, 0};
  auto q = Tensor<float>::uniform({B, T, H, D}, 11).cast<bf16>().to<Cuda>();
  auto k = Tensor<float>::uniform({B, S, KV, D}, 12).cast<bf16>().to<Cuda>();
  auto v = Tensor<float>::uniform({B, S, KV, D}, 13).cast<bf16>().to<Cuda>();
  auto dout = Tensor<float>::uniform({B, T, H, D}, 14).cast<bf16>().to<Cuda>();
  auto out = Tensor<bf16, Cuda>::empty(q.shape());
  auto lse = Tensor<float, Cuda>::empty({B, H, T});
  auto dq = Tensor<bf16, Cuda>::empty(q.shape());
  auto dk = Tensor<bf16, Cuda>::empty(k.shape());
  auto dv = Tensor<bf16, Cuda>::empty(v.shape());

  const double fwd_flops = 0.5 * 4.0 * static_cast<double>(B * H) * static_cast<double>(T) * S * D;  // causal
  const double bwd_flops = 2.5 * fwd_flops;
  const std::string shape = "B=" + std::to_string(B) + " H=" + std::to_string(H) + " KV=" + std::to_string(KV) +
                            " T=S=" + std::to_string(T) + " D=" + std::to_string(D) + " causal bf16";
  auto tflops = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };

  const double fwd_ms = bench::time_ms([&] { cuda::attention_forward(q, k, v, o, out, lse); });
  bench::report("attn_fwd", shape, tflops(fwd_flops, fwd_ms), "TFLOP/s", ceiling, "gemm_bf16");
  cuda::attention_forward(q, k, v, o, out, lse);
  const double bwd_ms = bench::time_ms([&] { cuda::attention_backward(q, k, v, out, lse, dout, o, dq, dk, dv); });
  bench::report("attn_bwd", shape, tflops(bwd_flops, bwd_ms), "TFLOP/s", ceiling, "gemm_bf16");
  const double both_ms = bench::time_ms([&] {
    cuda::attention_forward(q, k, v, o, out, lse);
    cuda::attention_backward(q, k, v, out, lse, dout, o, dq, dk, dv);
  });
  bench::report("attn_fwdbwd", shape, tflops(fwd_flops + bwd_flops, both_ms), "TFLOP/s", ceiling, "gemm_bf16");
  std::printf("  %s: fwd %.3f ms, bwd %.3f ms, fwd+bwd %.3f ms\n", shape.c_str(), fwd_ms, bwd_ms, both_ms);
}

}  // namespace

int main() {
  if (!bench::gpu_or_skip("gpu_attention")) return 0;
  const double ceiling = gemm_ceiling_tflops();
  std::printf("CEILING|gemm_bf16_tflops|%.1f\n", ceiling);
  for (int64_t D : {128, 256})
    for (int64_t KV : {8, 4}) run(1, 16, KV, 2048, D, ceiling);
  return 0;
}
