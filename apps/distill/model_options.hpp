// What the model-running subcommands share: which checkpoint (and adapter), in which dtype, on how many threads,
// and the dispatch from a config.json's family to the Transformer template.
#pragma once
#include <string>

#include "distill/core/parallel.hpp"
#include "distill/io/hf_config.hpp"
#include "distill/models/adapter.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"

namespace distill::app {

struct ModelOptions {
  std::string model;          // checkpoint directory (config.json, safetensors; tokenizer files for text)
  std::string adapter;        // optional PEFT LoRA adapter directory applied on top
  std::string dtype = "f32";  // activations and weights in memory: f32 or bf16
  int threads = 0;            // 0: all cores
};

namespace detail {

// Calls fn.template operator()<Spec, T>() for the checkpoint's family and the requested dtype.
template <class F>
void with_model_type(const ModelOptions& o, F&& fn) {
  const io::ModelConfig cfg = io::load_model_config(o.model);
  if (o.dtype != "f32" && o.dtype != "bf16") throw Error("--dtype must be f32 or bf16, got \"" + o.dtype + "\"");
  const bool bf = o.dtype == "bf16";
  if (cfg.arch == io::ModelArch::Qwen3) {
    if (bf)
      fn.template operator()<models::qwen3::kFamily, bf16>();
    else
      fn.template operator()<models::qwen3::kFamily, float>();
  } else {
    if (bf)
      fn.template operator()<models::gemma3::kFamily, bf16>();
    else
      fn.template operator()<models::gemma3::kFamily, float>();
  }
}

// The model of o.model (dense or bitsandbytes 4-bit as stored), with o.adapter's LoRA adapters attached.
template <models::TransformerSpec Spec, class T>
models::Transformer<Spec, T> load_model(const ModelOptions& o) {
  auto model = models::Transformer<Spec, T>::load(o.model);
  if (!o.adapter.empty()) models::load_peft_adapter(model, o.adapter);
  return model;
}

}  // namespace detail

}  // namespace distill::app
