// ModelRunner<Spec, T, D>: the Runner over one Transformer instantiation. Included only by runner.cpp (the CPU
// models) and runner_cuda.cu (the GPU models, compiled by nvcc), so the templates are instantiated there alone.
#pragma once
#include <algorithm>
#include <string>
#include <type_traits>

#include "distill/models/adapter.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/kv_cache.hpp"
#include "distill/models/qwen3.hpp"
#include "runner.hpp"

namespace distill::gsm8k_app {

// Rows of KV cache a GPU generation may use: as many as free memory holds (a
// note on stderr when that is fewer; an error naming the sizes when not even one row fits).
int64_t fit_gpu_slots(const models::ModelDims& d, int64_t max_len, int64_t elem_bytes,
                      int64_t slots);  // runner_cuda.cu

template <models::TransformerSpec Spec, class T, class D>
class ModelRunner final : public Runner {
 public:
  explicit ModelRunner(const ModelSpec& s) : model_(load(s)) {
    desc_ = std::string(models::family_name(Spec.family)) + " " + s.dtype + (s.quantize ? " NF4" : "");
    if (!s.adapter.empty()) desc_ += " + LoRA r=" + std::to_string(lora_.r);
    if (s.device != "cpu") desc_ += " on " + s.device;
  }
  generate::GenerateResult generate(const std::vector<std::vector<int32_t>>& prompts,
                                    const generate::GenerateOptions& o, int64_t slots,
                                    const generate::DoneCallback& on_done) const override {
    size_t longest = 0;
    for (const auto& p : prompts) longest = std::max(longest, p.size());
    int64_t rows = std::max<int64_t>(1, std::min<int64_t>(slots, static_cast<int64_t>(prompts.size())));
    if constexpr (!std::is_same_v<D, Cpu>)
      rows = fit_gpu_slots(model_.dims(), static_cast<int64_t>(longest) + o.max_new_tokens, sizeof(T), rows);
    return generate::generate_continuous(model_, prompts, o, rows, on_done);
  }
  std::string describe() const override { return desc_; }

 private:
  models::Transformer<Spec, T, D> load(const ModelSpec& s) {
    models::LoadOptions lo;
    lo.quantize = s.quantize;
    auto m = models::Transformer<Spec, T, D>::load(s.model, "model", lo);
    if (!s.adapter.empty()) lora_ = models::load_peft_adapter(m, s.adapter);
    return m;
  }
  nn::LoraConfig lora_;
  models::Transformer<Spec, T, D> model_;
  std::string desc_;
};

}  // namespace distill::gsm8k_app
