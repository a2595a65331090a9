// AdamW step bandwidth (kernels/adamw.cu). Per element the step reads p, g, m, v (16 bytes) and writes p, m, v
// (12 bytes); GB/s counts those 28 bytes, against the device-to-device copy bandwidth measured in the same run.
//   adamw_256MiB        one tensor of 64 Mi f32 parameters (256 MiB each of p, g, m, v), the raw launcher
//   adamw_lora_qwen3_4b the LoRA adapters of Qwen3-4B at r = 32 (36 layers x 7 projections x A, B: 504
//                       tensors, 66 M parameters) through AdamW<Cuda>::step, i.e. the multi-tensor launches
#include <cstdio>
#include <string>
#include <vector>

#include "distill/cuda/adamw.hpp"
#include "distill/train/adamw.hpp"
#include "gpu_bench.hpp"

using namespace distill;

namespace {

constexpr double kBytesPerElement = 28.0;  // 4 f32 read, 3 written

double gbps(double elements, double ms) { return kBytesPerElement * elements / (ms * 1e-3) / 1e9; }

}  // namespace

int main() {
  if (!bench::gpu_or_skip("gpu_adamw")) return 0;
  const double copy = bench::copy_bandwidth_gbps();
  std::printf("device-to-device copy: %.1f GB/s (read + write)\n", copy);
  AdamWConfig cfg;
  cfg.lr = 1e-4;

  {                                       // One large tensor.
    const int64_t n = int64_t{64} << 20;  // 256 MiB of f32
    const size_t bytes = static_cast<size_t>(n) * sizeof(float);
    float* p = static_cast<float*>(cuda::device_malloc(bytes));
    float* g = static_cast<float*>(cuda::device_malloc(bytes));
    float* m = static_cast<float*>(cuda::device_malloc(bytes));
    float* v = static_cast<float*>(cuda::device_malloc(bytes));
    cuda::fill(p, 0.5f, n);
    cuda::fill(g, 1e-2f, n);
    cuda::memset_device_zero(m, bytes);
    cuda::memset_device_zero(v, bytes);
    const AdamWScalars s = adamw_scalars(cfg, 1);
    const cuda::AdamWTensorArgs t{p, g, m, v, n, s.step_size, s.bc2_sqrt};
    const cuda::AdamWSharedArgs sh{s.decay, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.eps, s.grad_scale};
    const double ms = bench::time_ms([&] { cuda::adamw_step(&t, 1, sh); });
    bench::report("adamw_256MiB", "[67108864] f32", gbps(static_cast<double>(n), ms), "GB/s", copy, "copy");
    for (float* b : {p, g, m, v}) cuda::device_free(b);
  }

  {  // Qwen3-4B LoRA adapters, r = 32: A [r, in], B [out, r] for q, k, v, o, gate, up, down.
    const int64_t r = 32, hidden = 2560, q = 32 * 128, kv = 8 * 128, inter = 9728, layers = 36;
    const std::vector<std::pair<int64_t, int64_t>> proj{{hidden, q},     {hidden, kv},    {hidden, kv},   {q, hidden},
                                                        {hidden, inter}, {hidden, inter}, {inter, hidden}};
    std::vector<Var<float, Cuda>> params;
    int64_t total = 0;
    for (int64_t l = 0; l < layers; ++l)
      for (const auto& [in, out] : proj)
        for (const Shape& s : {Shape{r, in}, Shape{out, r}}) {
          params.push_back(Var<float, Cuda>::param(Tensor<float, Cuda>::full(s, 0.01f)));
          params.back().grad_buffer().fill_(1e-3f);
          total += s.numel();
        }
    AdamW<Cuda> opt(params, cfg);
    const double ms = bench::time_ms([&] { opt.step(); });
    bench::report("adamw_lora_qwen3_4b", std::to_string(params.size()) + " tensors, " + std::to_string(total) + " f32",
                  gbps(static_cast<double>(total), ms), "GB/s", copy, "copy");
  }
  return 0;
}
