// Fuzz target: adapter_config.json -> io::PeftLoraConfig -> nn::LoraConfig (validated) and target matching on a
// few module names, on arbitrary bytes. Only distill::Error may escape.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "distill/io/peft.hpp"
#include "distill/models/adapter.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace distill;
  const auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    const io::PeftLoraConfig p = io::parse_peft_config(j, "fuzz/adapter_config.json");
    const nn::LoraConfig c = models::lora_config_from_peft(p);
    c.validate();
    for (const char* m : {"model.layers.0.self_attn.q_proj", "model.language_model.layers.3.mlp.down_proj", "lm_head"})
      (void)c.targets_module(m);
    (void)io::peft_config_json(p).dump(2);
  } catch (const Error&) {
  }
  return 0;
}
