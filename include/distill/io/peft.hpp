// PEFT's adapter_config.json for LoRA (SPEC §7; peft/tuners/lora/config.py, peft/config.py).
//
// Writing: the keys PEFT 0.21 writes for a plain LoRA adapter, sorted, indent 2 (PEFT: json.dumps(indent=2,
// sort_keys=True)), so PeftModel.from_pretrained loads it without warnings.
// Reading: strict about what changes the math. peft_type must be "LORA"; DoRA, fan_in_fan_out, biases,
// modules_to_save, per-module rank/alpha patterns, layer selections and trainable tokens are refused with an
// error naming the key (we would otherwise silently compute something else); so is a regular-expression
// target_modules (only lists and "all-linear": a pattern from a file could make matching hang). Keys that only matter
// to Python (inference_mode, revision, ...) are read past.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/core/error.hpp"

namespace distill::io {

struct PeftLoraConfig {
  std::string base_model_name_or_path;
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0;
  bool use_rslora = false;
  std::vector<std::string> target_modules;  // names (suffix match), or {"all-linear"}
  std::string init_lora_weights = "true";   // "true" or "gaussian" (informational once weights exist)
  std::string task_type = "CAUSAL_LM";
};

inline nlohmann::ordered_json peft_config_json(const PeftLoraConfig& c, const std::string& peft_version = "0.21.2") {
  using J = nlohmann::ordered_json;
  // Inserted in sorted order (PEFT sorts the keys).
  J j;
  j["alora_invocation_tokens"] = nullptr;
  j["alpha_pattern"] = J::object();
  j["arrow_config"] = nullptr;
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = c.base_model_name_or_path;
  j["bias"] = "none";
  j["corda_config"] = nullptr;
  j["ensure_weight_tying"] = false;
  j["eva_config"] = nullptr;
  j["exclude_modules"] = nullptr;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  if (c.init_lora_weights == "gaussian")
    j["init_lora_weights"] = "gaussian";
  else
    j["init_lora_weights"] = true;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["loftq_config"] = J::object();
  if (std::abs(c.lora_alpha) < 9.0e15 && c.lora_alpha == std::floor(c.lora_alpha))
    j["lora_alpha"] = static_cast<int64_t>(c.lora_alpha);
  else
    j["lora_alpha"] = c.lora_alpha;
  j["lora_bias"] = false;
  j["lora_dropout"] = c.lora_dropout;
  j["lora_ga_config"] = nullptr;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["peft_version"] = peft_version;
  j["qalora_group_size"] = 16;
  j["r"] = c.r;
  j["rank_pattern"] = J::object();
  j["revision"] = nullptr;
  if (c.target_modules.size() == 1 && c.target_modules[0] == "all-linear") {
    j["target_modules"] = "all-linear";
  } else {
    // PEFT stores a set: the order it prints is not meaningful; sorted here for stable files.
    std::vector<std::string> t = c.target_modules;
    std::sort(t.begin(), t.end());
    j["target_modules"] = t;
  }
  j["target_parameters"] = nullptr;
  j["task_type"] = c.task_type;
  j["trainable_token_indices"] = nullptr;
  j["use_bdlora"] = nullptr;
  j["use_dora"] = false;
  j["use_qalora"] = false;
  j["use_rslora"] = c.use_rslora;
  return j;
}

inline PeftLoraConfig parse_peft_config(const nlohmann::json& j, const std::string& source) {
  auto fail = [&](const std::string& what) -> void { throw Error(source + ": " + what); };
  if (!j.is_object()) fail("adapter_config.json must be a JSON object");
  auto get = [&](const char* k) -> const nlohmann::json* {
    auto it = j.find(k);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  const auto* pt = get("peft_type");
  if (!pt || !pt->is_string()) fail("missing \"peft_type\"");
  if (pt->get<std::string>() != "LORA")
    fail("peft_type is \"" + pt->get<std::string>() + "\"; only LORA adapters are supported");
  PeftLoraConfig c;
  auto number = [&](const char* k, double def) {
    const auto* v = get(k);
    if (!v) return def;
    if (!v->is_number()) fail(std::string("\"") + k + "\" must be a number");
    return v->get<double>();
  };
  auto boolean = [&](const char* k, bool def) {
    const auto* v = get(k);
    if (!v) return def;
    if (!v->is_boolean()) fail(std::string("\"") + k + "\" must be true or false");
    return v->get<bool>();
  };
  const double r = number("r", 8);
  // Range first: converting a double outside int64's range is undefined behaviour (the fuzzer found r = 4.4e58).
  if (!(r >= 1 && r <= (1 << 20)) || r != std::floor(r)) fail("\"r\" must be a positive integer up to 2^20");
  c.r = static_cast<int64_t>(r);
  c.lora_alpha = number("lora_alpha", 8);
  if (!std::isfinite(c.lora_alpha)) fail("\"lora_alpha\" must be finite");
  c.lora_dropout = number("lora_dropout", 0);
  if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) fail("\"lora_dropout\" must be in [0, 1)");
  c.use_rslora = boolean("use_rslora", false);
  if (boolean("use_dora", false)) fail("use_dora is true: DoRA adapters are not supported");
  if (boolean("fan_in_fan_out", false)) fail("fan_in_fan_out is true: only nn.Linear layouts are supported");
  if (boolean("lora_bias", false)) fail("lora_bias is true: LoRA biases are not supported");
  if (boolean("use_qalora", false)) fail("use_qalora is true: QA-LoRA is not supported");
  if (const auto* b = get("bias"); b && (!b->is_string() || b->get<std::string>() != "none"))
    fail("\"bias\" must be \"none\" (bias training is not supported)");
  for (const char* k : {"modules_to_save", "layers_to_transform", "layers_pattern", "layer_replication",
                        "trainable_token_indices", "target_parameters", "alora_invocation_tokens"}) {
    const auto* v = get(k);
    if (v && !(v->is_array() && v->empty())) fail(std::string("\"") + k + "\" is set; it is not supported");
  }
  for (const char* k : {"rank_pattern", "alpha_pattern"}) {
    const auto* v = get(k);
    if (v && !(v->is_object() && v->empty()))
      fail(std::string("\"") + k + "\" is not empty; per-module ranks are not supported");
  }
  const auto* t = get("target_modules");
  if (!t) fail("missing \"target_modules\"");
  if (t->is_string()) {
    const std::string rx = t->get<std::string>();
    if (rx != "all-linear")
      fail("\"target_modules\" is the regular expression \"" + rx +
           "\"; Distill takes a list of module names or \"all-linear\" (a regular expression from a file could make "
           "matching hang); list the modules instead");
    c.target_modules = {"all-linear"};
  } else if (t->is_array()) {
    for (const auto& x : *t) {
      if (!x.is_string()) fail("\"target_modules\" must hold strings");
      c.target_modules.push_back(x.get<std::string>());
    }
    if (c.target_modules.empty()) fail("\"target_modules\" is empty");
  } else {
    fail("\"target_modules\" must be a list of names or a regular expression");
  }
  if (const auto* b = get("base_model_name_or_path"); b && b->is_string())
    c.base_model_name_or_path = b->get<std::string>();
  if (const auto* i = get("init_lora_weights"); i && i->is_string()) c.init_lora_weights = i->get<std::string>();
  if (const auto* tt = get("task_type"); tt && tt->is_string()) c.task_type = tt->get<std::string>();
  return c;
}

}  // namespace distill::io
