// Fuzz target: config.json -> ModelConfig -> ModelDims (resolve against the Qwen3 and Gemma3 family specs and
// the exact specs) and generation_config.json parsing, on arbitrary bytes. Only distill::Error may escape.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "distill/generate/generate.hpp"
#include "distill/io/hf_config.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace distill;
  const auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    const io::ModelConfig c = io::parse_model_config(j, "fuzz/config.json");
    for (auto resolve_one :
         {+[](const io::ModelConfig& m) { (void)models::resolve<models::qwen3::kFamily>(m, "f"); },
          +[](const io::ModelConfig& m) { (void)models::resolve<models::gemma3::kFamily>(m, "f"); },
          +[](const io::ModelConfig& m) { (void)models::resolve<models::qwen3::k4B_Thinking_2507>(m, "f"); },
          +[](const io::ModelConfig& m) { (void)models::resolve<models::gemma3::k1B_it>(m, "f"); }}) {
      try {
        resolve_one(c);
      } catch (const Error&) {
      }
    }
  } catch (const Error&) {
  }
  try {
    (void)generate::parse_generation_config(j, "fuzz/generation_config.json");
  } catch (const Error&) {
  }
  return 0;
}
