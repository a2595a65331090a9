// The one translation unit that instantiates the CPU models for the gsm8k_distill app (see runner.hpp);
// runner_cuda.cu does the GPU ones.
#include "distill/io/hf_config.hpp"
#include "runner_impl.hpp"

namespace distill::gsm8k_app {

int parse_device(const std::string& device) {
  if (device == "cpu") return -1;
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) == 0) {
    const std::string n = device.substr(5);
    if (!n.empty() && n.size() < 4 && n.find_first_not_of("0123456789") == std::string::npos) return std::stoi(n);
  }
  throw Error("--device must be cpu, cuda or cuda:N, got \"" + device + "\"");
}

#ifndef DISTILL_WITH_CUDA
std::unique_ptr<Runner> load_cuda_runner(const ModelSpec& s, int) {
  throw Error("--device " + s.device +
              ": this gsm8k_distill was built without CUDA (configure with nvcc present, e.g. cmake --preset cuda)");
}
#endif

std::unique_ptr<Runner> load_runner(const ModelSpec& s) {
  if (s.dtype != "f32" && s.dtype != "bf16") throw Error("--dtype must be f32 or bf16, got \"" + s.dtype + "\"");
  const int device = parse_device(s.device);
  if (device >= 0) return load_cuda_runner(s, device);
  const io::ModelConfig cfg = io::load_model_config(s.model);
  const bool bf = s.dtype == "bf16";
  if (cfg.arch == io::ModelArch::Qwen3) {
    if (bf) return std::make_unique<ModelRunner<models::qwen3::kFamily, bf16, Cpu>>(s);
    return std::make_unique<ModelRunner<models::qwen3::kFamily, float, Cpu>>(s);
  }
  if (bf) return std::make_unique<ModelRunner<models::gemma3::kFamily, bf16, Cpu>>(s);
  return std::make_unique<ModelRunner<models::gemma3::kFamily, float, Cpu>>(s);
}

}  // namespace distill::gsm8k_app
