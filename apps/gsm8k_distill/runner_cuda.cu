// The GPU models of the gsm8k_distill app (nvcc: the element-wise expressions of the forward become kernels
// here). bf16 weights and activations only: the teacher's and the student's own dtype (--dtype f32 on a GPU is
// refused rather than compiled, to keep this file's build time down).
#include <cstdio>

#include "distill/cuda/runtime.hpp"
#include "distill/io/hf_config.hpp"
#include "runner_impl.hpp"

namespace distill::gsm8k_app {

int64_t fit_gpu_slots(const models::ModelDims& d, int64_t max_len, int64_t elem_bytes, int64_t slots) {
  const cuda::DeviceMemoryInfo mem = cuda::device_memory_info();
  const models::KvPlan p = models::plan_kv_cache(d, max_len, elem_bytes, static_cast<int64_t>(mem.available()), slots);
  const double gib = 1024.0 * 1024.0 * 1024.0;
  if (p.rows == 0) {
    char b[256];
    std::snprintf(b, sizeof b,
                  "one generation row of %lld positions needs %.2f GiB of KV cache and logits, but only "
                  "%.2f GiB of the GPU's %.2f GiB is free (1 GiB is kept back): lower --max-new-tokens",
                  static_cast<long long>(max_len), static_cast<double>(p.per_row_bytes) / gib,
                  static_cast<double>(mem.available()) / gib, static_cast<double>(mem.total_bytes) / gib);
    throw Error(b);
  }
  if (p.rows < slots)
    std::fprintf(stderr,
                 "note: KV cache sized from free GPU memory: %lld of %lld rows of %lld positions (%.2f GiB each)\n",
                 static_cast<long long>(p.rows), static_cast<long long>(slots), static_cast<long long>(max_len),
                 static_cast<double>(p.per_row_bytes) / gib);
  return p.rows;
}

std::unique_ptr<Runner> load_cuda_runner(const ModelSpec& s, int device) {
  if (cuda::device_count() == 0)
    throw Error("--device " + s.device + ": no usable GPU (" + cuda::probe_message() + ")");
  if (device >= cuda::device_count())
    throw Error("--device " + s.device + ": this machine has " + std::to_string(cuda::device_count()) + " GPU(s)");
  if (s.dtype != "bf16") throw Error("--device " + s.device + " runs bf16 models; pass --dtype bf16");
  cuda::set_device(device);
  const io::ModelConfig cfg = io::load_model_config(s.model);
  if (cfg.arch == io::ModelArch::Qwen3) return std::make_unique<ModelRunner<models::qwen3::kFamily, bf16, Cuda>>(s);
  return std::make_unique<ModelRunner<models::gemma3::kFamily, bf16, Cuda>>(s);
}

}  // namespace distill::gsm8k_app
