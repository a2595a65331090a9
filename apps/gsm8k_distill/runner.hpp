// A loaded model behind one small interface, so that the pipeline code (generate, eval, ask, demo) does not
// instantiate the Transformer templates: runner.cpp does, once, for Qwen3/Gemma3 x f32/bf16.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "distill/generate/generate.hpp"
#include "distill/text/chat.hpp"
#include "distill/text/tokenizer.hpp"

namespace distill::gsm8k_app {

struct ModelSpec {
  std::string model;           // a checkpoint directory (already resolved from a hub id)
  std::string adapter;         // optional PEFT LoRA adapter directory
  std::string dtype = "f32";   // f32 or bf16
  bool quantize = false;       // quantize the projections to NF4 on load (as transformers' load_in_4bit)
  std::string device = "cpu";  // cpu, cuda or cuda:N (GPU: bf16 only, KV cache sized from free memory)
};

class Runner {
 public:
  virtual ~Runner() = default;
  // Continuous batching (generate::generate_continuous): at most `slots` prompts decode together, a finished one
  // is replaced by the next; on_done(i, generation) as each prompt finishes.
  virtual generate::GenerateResult generate(const std::vector<std::vector<int32_t>>& prompts,
                                            const generate::GenerateOptions& o, int64_t slots,
                                            const generate::DoneCallback& on_done = {}) const = 0;
  virtual std::string describe() const = 0;  // e.g. "Gemma3 f32 NF4 + LoRA r=32"
};

// Loads spec.model (config.json + safetensors), quantized or not, with spec.adapter attached when given, on
// spec.device.
std::unique_ptr<Runner> load_runner(const ModelSpec& spec);
// -1 for "cpu", N for "cuda" (0) or "cuda:N"; anything else is an error naming the flag.
int parse_device(const std::string& device);
// The GPU half of load_runner (runner_cuda.cu; without CUDA, an error saying how to build with it).
std::unique_ptr<Runner> load_cuda_runner(const ModelSpec& spec, int device);

// A model's tokenizer and chat format, and the generation options of its generation_config.json.
struct ChatTokenizer {
  text::Tokenizer tok;
  text::ChatFormat format;
  static ChatTokenizer load(const std::string& dir) {
    return {text::Tokenizer::from_file(dir), text::detect_chat_format(dir)};
  }
  // The prompt of one user question: the chat template with the generation prompt (which writes <bos> itself).
  std::vector<int32_t> prompt(const std::string& question, const std::string& system = {}) const {
    std::vector<text::Message> m;
    if (!system.empty()) m.push_back(text::Message{"system", system});
    m.push_back(text::Message{"user", question});
    return tok.encode(text::render_chat(format, m, true).text, /*add_special_tokens=*/false);
  }
  std::string decode(const std::vector<int32_t>& ids) const { return tok.decode(ids, /*skip_special_tokens=*/true); }
};

}  // namespace distill::gsm8k_app
