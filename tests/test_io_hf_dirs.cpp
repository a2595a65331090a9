// Checkpoint directories written by transformers' save_pretrained (tests/golden/models/, made by
// tools/golden/models.py): config.json and model.safetensors load together, every tensor SPEC §3.3 names is
// present with the shape the config implies, and the reference tensors (F32 logits, I64 prompts) read back.
#include <doctest/doctest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "distill/io/hf_config.hpp"
#include "distill/io/safetensors.hpp"
#include "shared_data.hpp"

using namespace distill;
using namespace distill::io;

namespace {

// The tensor names and shapes SPEC §3.3 lists for a Qwen3/Gemma3 causal LM with this config.
std::map<std::string, std::vector<int64_t>> expected_tensors(const ModelConfig& c) {
  std::map<std::string, std::vector<int64_t>> e;
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  e["model.embed_tokens.weight"] = {c.vocab_size, h};
  e["model.norm.weight"] = {h};
  if (!c.tie_word_embeddings) e["lm_head.weight"] = {c.vocab_size, h};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    e[p + "input_layernorm.weight"] = {h};
    e[p + "post_attention_layernorm.weight"] = {h};
    if (c.arch == ModelArch::Gemma3) {
      e[p + "pre_feedforward_layernorm.weight"] = {h};
      e[p + "post_feedforward_layernorm.weight"] = {h};
    }
    e[p + "self_attn.q_proj.weight"] = {q, h};
    e[p + "self_attn.k_proj.weight"] = {kv, h};
    e[p + "self_attn.v_proj.weight"] = {kv, h};
    e[p + "self_attn.o_proj.weight"] = {h, q};
    e[p + "self_attn.q_norm.weight"] = {c.head_dim};
    e[p + "self_attn.k_norm.weight"] = {c.head_dim};
    e[p + "mlp.gate_proj.weight"] = {c.intermediate_size, h};
    e[p + "mlp.up_proj.weight"] = {c.intermediate_size, h};
    e[p + "mlp.down_proj.weight"] = {h, c.intermediate_size};
  }
  return e;
}

}  // namespace

TEST_CASE("io: transformers-saved checkpoint directories load with the tensors their config implies") {
  for (const char* name : {"qwen3_tiny", "gemma3_tiny", "gemma3_tiny_softcap"}) {
    CAPTURE(name);
    const std::string dir = test::golden_path(std::string("models/") + name);
    const auto cfg = load_model_config(dir);
    const auto ck = Checkpoint::open(dir);
    const auto want = expected_tensors(cfg);
    std::set<std::string> seen;
    for (const auto* t : ck.tensors()) {
      CAPTURE(t->name);
      seen.insert(t->name);
      const auto it = want.find(t->name);
      REQUIRE_MESSAGE(it != want.end(), "unexpected tensor");
      CHECK(t->shape == it->second);
      CHECK(t->dtype == StDtype::BF16);  // save_pretrained of a bf16 model
    }
    CHECK(seen.size() == want.size());
    // bf16 -> f32 load is exact; the norm weights the exporter drew are finite and not all equal.
    const auto w = ck.load<float>("model.norm.weight");
    CHECK(w.numel() == cfg.hidden_size);
    CHECK(w.data()[0] != w.data()[1]);

    const auto ref = SafetensorsFile::open(dir + "/reference.safetensors");
    const auto logits = ref.load<float>("logits_f32.2");
    const auto prompt = ref.info("prompt.2");
    CHECK(prompt.dtype == StDtype::I64);
    REQUIRE(logits.shape().rank() == 2);
    CHECK(logits.shape()[0] == prompt.shape[0]);
    CHECK(logits.shape()[1] == cfg.vocab_size);
  }
}
