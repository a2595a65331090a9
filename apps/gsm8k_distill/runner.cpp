// The one translation unit that instantiates the models for the gsm8k_distill app (see runner.hpp).
#include "runner.hpp"

#include "distill/io/hf_config.hpp"
#include "distill/models/adapter.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"

namespace distill::gsm8k_app {

namespace {

template <models::TransformerSpec Spec, class T>
class ModelRunner final : public Runner {
 public:
  explicit ModelRunner(const ModelSpec& s) : model_(load(s)) {
    desc_ = std::string(models::family_name(Spec.family)) + " " + s.dtype + (s.quantize ? " NF4" : "");
    if (!s.adapter.empty()) desc_ += " + LoRA r=" + std::to_string(lora_.r);
  }
  generate::GenerateResult generate(const std::vector<std::vector<int32_t>>& prompts,
                                    const generate::GenerateOptions& o, int64_t slots,
                                    const generate::DoneCallback& on_done) const override {
    return generate::generate_continuous(model_, prompts, o, slots, on_done);
  }
  std::string describe() const override { return desc_; }

 private:
  models::Transformer<Spec, T> load(const ModelSpec& s) {
    models::LoadOptions lo;
    lo.quantize = s.quantize;
    auto m = models::Transformer<Spec, T>::load(s.model, "model", lo);
    if (!s.adapter.empty()) lora_ = models::load_peft_adapter(m, s.adapter);
    return m;
  }
  nn::LoraConfig lora_;
  models::Transformer<Spec, T> model_;
  std::string desc_;
};

}  // namespace

std::unique_ptr<Runner> load_runner(const ModelSpec& s) {
  const io::ModelConfig cfg = io::load_model_config(s.model);
  if (s.dtype != "f32" && s.dtype != "bf16") throw Error("--dtype must be f32 or bf16, got \"" + s.dtype + "\"");
  const bool bf = s.dtype == "bf16";
  if (cfg.arch == io::ModelArch::Qwen3) {
    if (bf) return std::make_unique<ModelRunner<models::qwen3::kFamily, bf16>>(s);
    return std::make_unique<ModelRunner<models::qwen3::kFamily, float>>(s);
  }
  if (bf) return std::make_unique<ModelRunner<models::gemma3::kFamily, bf16>>(s);
  return std::make_unique<ModelRunner<models::gemma3::kFamily, float>>(s);
}

}  // namespace distill::gsm8k_app
