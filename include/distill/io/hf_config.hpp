// Hugging Face config.json -> ModelConfig, the runtime description of a Qwen3ForCausalLM or Gemma3ForCausalLM
// (also a Gemma3ForConditionalGeneration's "text_config"). Defaults and derived values follow transformers
// 5.24 (Qwen3Config, Gemma3TextConfig, modeling_rope_utils; SPEC §1.6, §2.9): per-layer attention types
// (Gemma3: every `sliding_window_pattern`-th layer is full; Qwen3: sliding from `max_window_layers` when
// `use_sliding_window`), and RoPE per layer type from either the hub's keys (rope_theta, rope_local_base_freq,
// rope_scaling) or transformers v5's `rope_parameters` (flat for Qwen3, keyed by layer type for Gemma3).
// Anything the models cannot run (other architectures, yarn/dynamic RoPE, partial rotary, attention biases,
// bidirectional attention, other activations) is one clear error naming the file and the key.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/io/file.hpp"

namespace distill::io {

enum class ModelArch { Qwen3, Gemma3 };
enum class LayerType : uint8_t { FullAttention, SlidingAttention };
enum class Activation { Silu, GeluTanh };  // silu / gelu_pytorch_tanh
enum class RopeType { Default, Linear };

struct RopeParams {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;  // linear: inv_freq is divided by factor
  friend bool operator==(const RopeParams&, const RopeParams&) = default;
};

struct ModelConfig {
  ModelArch arch = ModelArch::Qwen3;
  std::string architecture;         // "Qwen3ForCausalLM", "Gemma3ForCausalLM" or "Gemma3ForConditionalGeneration"
  std::string model_type;           // of the text model: "qwen3" or "gemma3_text"
  bool nested_text_config = false;  // read from "text_config" (weights live under a language_model prefix)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  Activation hidden_act = Activation::Silu;
  std::string hidden_act_name;  // as written: "silu", "gelu_pytorch_tanh"
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::string dtype;  // "bfloat16", ... ("dtype" or the older "torch_dtype"); empty when absent

  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_ids;  // eos_token_id may be one id or a list

  std::vector<LayerType> layer_types;     // one per layer
  std::optional<int64_t> sliding_window;  // window of the sliding layers (each query sees this many positions)
  double query_pre_attn_scalar = 0;       // scores are scaled by query_pre_attn_scalar^-0.5 (Qwen3: head_dim)
  std::optional<double> final_logit_softcapping, attn_logit_softcapping;
  RopeParams rope_full, rope_sliding;  // RoPE of full and sliding layers (equal for Qwen3)

  bool is_sliding(int64_t layer) const {
    return layer_types.at(static_cast<size_t>(layer)) == LayerType::SlidingAttention;
  }
  const RopeParams& rope(int64_t layer) const { return is_sliding(layer) ? rope_sliding : rope_full; }
  // The attention score scale, computed as transformers does (Python's x ** -0.5).
  double attention_scale() const { return std::pow(query_pre_attn_scalar, -0.5); }
  int64_t num_kv_groups() const { return num_attention_heads / num_key_value_heads; }
};

namespace detail {

// Typed access to one config object; every error names the file and the key (with its "text_config." path).
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& j, std::string_view source, std::string prefix)
      : j_(j), source_(source), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return j_.contains(key); }
  bool present(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const nlohmann::json& at(const char* key) const { return j_[key]; }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(std::string(source_) + ": " + prefix_ + key + " " + what);
  }
  static std::string shown(const nlohmann::json& v) {
    std::string s = v.dump();
    return s.size() > 80 ? s.substr(0, 77) + "..." : s;
  }

  // A positive integer; `def` when the key is absent.
  int64_t positive_int(const char* key, int64_t def) const {
    if (!has(key)) return def;
    const auto& v = j_[key];
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX) || v.get<int64_t>() <= 0)
      fail(key, "must be a positive integer, found " + shown(v));
    return v.get<int64_t>();
  }
  // An integer or null.
  std::optional<int64_t> opt_int(const char* key, std::optional<int64_t> def) const {
    if (!has(key)) return def;
    const auto& v = j_[key];
    if (v.is_null()) return std::nullopt;
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX))
      fail(key, "must be an integer or null, found " + shown(v));
    return v.get<int64_t>();
  }
  double positive_number(const char* key, double def) const {
    if (!has(key)) return def;
    return positive_number_value(key, j_[key]);
  }
  double positive_number_value(const std::string& key, const nlohmann::json& v) const {
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>()))
      fail(key, "must be a positive number, found " + shown(v));
    return v.get<double>();
  }
  std::optional<double> opt_positive_number(const char* key) const {
    if (!has(key) || j_[key].is_null()) return std::nullopt;
    return positive_number_value(key, j_[key]);
  }
  bool boolean(const char* key, bool def) const {
    if (!has(key)) return def;
    const auto& v = j_[key];
    if (!v.is_boolean()) fail(key, "must be true or false, found " + shown(v));
    return v.get<bool>();
  }
  std::string string(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    const auto& v = j_[key];
    if (!v.is_string()) fail(key, "must be a string, found " + shown(v));
    return v.get<std::string>();
  }

 private:
  const nlohmann::json& j_;
  std::string_view source_;
  std::string prefix_;
};

// One RoPE dict ({"rope_type" | "type", "rope_theta", "factor", ...}) after transformers' defaults.
inline RopeParams parse_rope_dict(const ConfigReader& r, const std::string& key, const nlohmann::json& d,
                                  std::optional<double> theta_default) {
  if (!d.is_object()) r.fail(key, "must be an object, found " + ConfigReader::shown(d));
  std::string type = "default";
  const bool has_rt = d.contains("rope_type"), has_t = d.contains("type");
  if (has_rt && !d["rope_type"].is_string()) r.fail(key + ".rope_type", "must be a string");
  if (has_t && !d["type"].is_string()) r.fail(key + ".type", "must be a string");
  if (has_rt)
    type = d["rope_type"].get<std::string>();
  else if (has_t)
    type = d["type"].get<std::string>();
  if (has_rt && has_t && d["type"].get<std::string>() != type)
    r.fail(key, "has rope_type \"" + type + "\" and the legacy type \"" + d["type"].get<std::string>() +
                    "\", which disagree");
  RopeParams p;
  if (d.contains("rope_theta")) {
    p.theta = r.positive_number_value(key + ".rope_theta", d["rope_theta"]);
  } else {
    if (!theta_default) r.fail(key, "has no rope_theta");
    p.theta = *theta_default;
  }
  if (d.contains("partial_rotary_factor") &&
      !(d["partial_rotary_factor"].is_number() && d["partial_rotary_factor"].get<double>() == 1.0))
    r.fail(key + ".partial_rotary_factor",
           "is " + ConfigReader::shown(d["partial_rotary_factor"]) + ": partial rotary embeddings are not supported");
  if (type == "default") {
    p.type = RopeType::Default;
  } else if (type == "linear") {
    p.type = RopeType::Linear;
    if (!d.contains("factor")) r.fail(key, "has rope_type \"linear\" but no factor");
    p.factor = r.positive_number_value(key + ".factor", d["factor"]);
  } else {
    r.fail(key, "has rope_type \"" + type + "\", which is not supported (supported: default, linear)");
  }
  return p;
}

inline std::vector<LayerType> parse_layer_types(const ConfigReader& r, const nlohmann::json& v) {
  if (!v.is_array()) r.fail("layer_types", "must be a list, found " + ConfigReader::shown(v));
  std::vector<LayerType> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const auto& e = v[i];
    const std::string s = e.is_string() ? e.get<std::string>() : e.dump();
    if (s == "full_attention" || s == "attention")  // "attention": transformers' legacy name
      out.push_back(LayerType::FullAttention);
    else if (s == "sliding_attention")
      out.push_back(LayerType::SlidingAttention);
    else
      r.fail("layer_types[" + std::to_string(i) + "]",
             "is " + s + ", which is not supported (supported: full_attention, sliding_attention)");
  }
  return out;
}

inline Activation parse_activation(const ConfigReader& r, const char* key, const std::string& s) {
  if (s == "silu" || s == "swish") return Activation::Silu;
  if (s == "gelu_pytorch_tanh") return Activation::GeluTanh;
  r.fail(key, "is \"" + s + "\", which is not supported (supported: silu, gelu_pytorch_tanh)");
}

inline bool has_architecture(const nlohmann::json& top, const char* name) {
  if (!top.contains("architectures") || !top["architectures"].is_array()) return false;
  for (const auto& a : top["architectures"])
    if (a.is_string() && a.get<std::string>() == name) return true;
  return false;
}

}  // namespace detail

// `source_name` (usually the file's path) is used in messages.
inline ModelConfig parse_model_config(const nlohmann::json& top, std::string_view source_name) {
  using detail::ConfigReader;
  const std::string src(source_name);
  if (!top.is_object()) throw Error(src + ": config must be a JSON object, found " + std::string(top.type_name()));
  const ConfigReader tr(top, src, "");
  if (!tr.has("model_type")) throw Error(src + ": no model_type (not a transformers config.json?)");
  const std::string top_type = tr.string("model_type", "");

  ModelConfig c;
  const nlohmann::json* text = &top;
  std::string prefix;
  if (top_type == "qwen3") {
    c.arch = ModelArch::Qwen3;
    c.architecture = "Qwen3ForCausalLM";
  } else if (top_type == "gemma3_text") {
    c.arch = ModelArch::Gemma3;
    c.architecture = "Gemma3ForCausalLM";
  } else if (top_type == "gemma3") {
    // Gemma3ForConditionalGeneration: the text model is described by "text_config" alone (transformers builds
    // a Gemma3TextConfig from that dict with its own defaults).
    c.arch = ModelArch::Gemma3;
    c.architecture = "Gemma3ForConditionalGeneration";
    c.nested_text_config = true;
    if (!top.contains("text_config") || !top["text_config"].is_object())
      tr.fail("text_config", "must be an object describing the text model (model_type \"gemma3\")");
    text = &top["text_config"];
    prefix = "text_config.";
    const ConfigReader r(*text, src, prefix);
    const std::string inner = r.string("model_type", "gemma3_text");
    if (inner != "gemma3_text")
      r.fail("model_type", "is \"" + inner + "\"; a gemma3 text_config must be \"gemma3_text\"");
  } else {
    tr.fail("model_type",
            "is \"" + top_type +
                "\", which is not supported (supported: qwen3, gemma3_text, and gemma3 with a text_config)");
  }
  if (tr.has("architectures") && !tr.at("architectures").is_null()) {
    const auto& a = tr.at("architectures");
    if (!a.is_array() || a.empty())
      tr.fail("architectures", "must be a non-empty list, found " + ConfigReader::shown(a));
    if (!detail::has_architecture(top, c.architecture.c_str()))
      throw Error(src + ": unsupported architecture " + ConfigReader::shown(a) + " for model_type \"" + top_type +
                  "\" (supported: " + c.architecture + ")");
  }

  const ConfigReader r(*text, src, prefix);
  const bool qwen = c.arch == ModelArch::Qwen3;
  c.model_type = qwen ? "qwen3" : "gemma3_text";
  // Defaults: Qwen3Config / Gemma3TextConfig (transformers 5.24).
  c.vocab_size = r.positive_int("vocab_size", qwen ? 151936 : 262208);
  c.hidden_size = r.positive_int("hidden_size", qwen ? 4096 : 2304);
  c.intermediate_size = r.positive_int("intermediate_size", qwen ? 22016 : 9216);
  c.num_hidden_layers = r.positive_int("num_hidden_layers", qwen ? 32 : 26);
  if (c.num_hidden_layers > 100000)  // per-layer tables are built from this; no real model comes close
    r.fail("num_hidden_layers", std::to_string(c.num_hidden_layers) + " is implausibly large (limit 100000)");
  c.num_attention_heads = r.positive_int("num_attention_heads", qwen ? 32 : 8);
  if (qwen && r.has("num_key_value_heads") && r.at("num_key_value_heads").is_null())
    c.num_key_value_heads = c.num_attention_heads;  // Qwen3Config: None means "as many as query heads"
  else
    c.num_key_value_heads = r.positive_int("num_key_value_heads", qwen ? 32 : 4);
  c.head_dim = r.positive_int("head_dim", qwen ? 128 : 256);
  c.max_position_embeddings = r.positive_int("max_position_embeddings", qwen ? 32768 : 131072);
  c.rms_norm_eps = r.positive_number("rms_norm_eps", 1e-6);
  const char* act_key = qwen ? "hidden_act" : "hidden_activation";
  c.hidden_act_name = r.string(act_key, qwen ? "silu" : "gelu_pytorch_tanh");
  c.hidden_act = detail::parse_activation(r, act_key, c.hidden_act_name);
  c.tie_word_embeddings =
      c.nested_text_config ? tr.boolean("tie_word_embeddings", true) : r.boolean("tie_word_embeddings", !qwen);
  c.attention_bias = r.boolean("attention_bias", false);
  if (c.attention_bias) r.fail("attention_bias", "is true: attention biases are not supported");
  for (const auto* reader : {&r, &tr}) {  // "dtype" wins over "torch_dtype"; a text_config's own wins
    if (!c.dtype.empty()) break;
    for (const char* k : {"dtype", "torch_dtype"})
      if (reader->present(k) && c.dtype.empty()) c.dtype = reader->string(k, "");
  }
  c.bos_token_id = r.opt_int("bos_token_id", qwen ? std::nullopt : std::optional<int64_t>(2));
  c.pad_token_id = r.opt_int("pad_token_id", qwen ? std::nullopt : std::optional<int64_t>(0));
  if (!r.has("eos_token_id")) {
    if (!qwen) c.eos_token_ids = {1};
  } else if (const auto& e = r.at("eos_token_id"); e.is_array()) {
    for (const auto& x : e) {
      if (!x.is_number_integer() || (x.is_number_unsigned() && x.get<uint64_t>() > INT64_MAX))
        r.fail("eos_token_id", "must be an integer or a list of integers, found " + ConfigReader::shown(e));
      c.eos_token_ids.push_back(x.get<int64_t>());
    }
  } else if (const auto id = r.opt_int("eos_token_id", std::nullopt)) {
    c.eos_token_ids = {*id};
  }

  // Shapes the attention needs.
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_attention_heads", std::to_string(c.num_attention_heads) + " is not divisible by num_key_value_heads " +
                                      std::to_string(c.num_key_value_heads));
  if (c.head_dim % 2 != 0) r.fail("head_dim", std::to_string(c.head_dim) + " must be even for rotary embeddings");
  if (!qwen && c.hidden_size % c.num_attention_heads != 0)  // Gemma3TextConfig.validate_architecture
    r.fail("hidden_size", std::to_string(c.hidden_size) + " is not divisible by num_attention_heads " +
                              std::to_string(c.num_attention_heads));

  // Layer types and the sliding window.
  if (qwen) {
    const bool use_sw = r.boolean("use_sliding_window", false);
    c.sliding_window = use_sw ? r.opt_int("sliding_window", 4096) : std::nullopt;  // nulled when not used
    const int64_t max_window_layers = r.opt_int("max_window_layers", 28).value_or(28);
    if (r.present("layer_types")) {
      c.layer_types = detail::parse_layer_types(r, r.at("layer_types"));
    } else {
      for (int64_t i = 0; i < c.num_hidden_layers; ++i)
        c.layer_types.push_back(c.sliding_window && i >= max_window_layers ? LayerType::SlidingAttention
                                                                           : LayerType::FullAttention);
    }
    c.query_pre_attn_scalar = static_cast<double>(c.head_dim);
  } else {
    if (r.boolean("use_bidirectional_attention", false))
      r.fail("use_bidirectional_attention", "is true: bidirectional (embedding) Gemma3 models are not supported");
    c.sliding_window = r.opt_int("sliding_window", 4096);
    if (r.present("layer_types")) {
      c.layer_types = detail::parse_layer_types(r, r.at("layer_types"));
    } else {
      const int64_t pattern = r.positive_int("sliding_window_pattern", 6);
      for (int64_t i = 0; i < c.num_hidden_layers; ++i)
        c.layer_types.push_back((i + 1) % pattern ? LayerType::SlidingAttention : LayerType::FullAttention);
    }
    c.query_pre_attn_scalar = r.positive_number("query_pre_attn_scalar", 256);
    c.final_logit_softcapping = r.opt_positive_number("final_logit_softcapping");
    c.attn_logit_softcapping = r.opt_positive_number("attn_logit_softcapping");
  }
  if (static_cast<int64_t>(c.layer_types.size()) != c.num_hidden_layers)
    r.fail("layer_types", "has " + std::to_string(c.layer_types.size()) + " entries but num_hidden_layers is " +
                              std::to_string(c.num_hidden_layers));
  const bool any_sliding =
      std::find(c.layer_types.begin(), c.layer_types.end(), LayerType::SlidingAttention) != c.layer_types.end();
  if (any_sliding && !c.sliding_window)
    r.fail("sliding_window", "is null but layer_types has sliding_attention layers");
  if (c.sliding_window && *c.sliding_window <= 0)
    r.fail("sliding_window", "must be a positive integer, found " + std::to_string(*c.sliding_window));

  // RoPE (modeling_rope_utils.convert_rope_params_to_dict / Gemma3TextConfig.convert_rope_params_to_dict).
  auto theta_key = [&](const char* key, double def) -> double {
    if (!r.has(key)) return def;
    return r.positive_number_value(key, r.at(key));
  };
  const nlohmann::json empty = nlohmann::json::object();
  const nlohmann::json& scaling = r.present("rope_scaling") ? r.at("rope_scaling") : empty;
  const nlohmann::json& params = r.present("rope_parameters") ? r.at("rope_parameters") : empty;
  if (!scaling.is_object()) r.fail("rope_scaling", "must be an object or null, found " + ConfigReader::shown(scaling));
  if (!params.is_object()) r.fail("rope_parameters", "must be an object or null, found " + ConfigReader::shown(params));
  if (r.has("partial_rotary_factor") &&
      !(r.at("partial_rotary_factor").is_number() && r.at("partial_rotary_factor").get<double>() == 1.0))
    r.fail("partial_rotary_factor", "is " + ConfigReader::shown(r.at("partial_rotary_factor")) +
                                        ": partial rotary embeddings are not supported");
  const bool nested = params.contains("full_attention") || params.contains("sliding_attention");
  if (qwen) {
    // rope_scaling (legacy) replaces rope_parameters; top-level rope_theta fills in a missing theta.
    const double theta = theta_key("rope_theta", 10000.0);
    if (scaling.empty() && nested)  // Qwen3's rotary embedding reads one flat dict
      r.fail("rope_parameters",
             "must be one dict ({\"rope_type\", \"rope_theta\"}) for Qwen3, not keyed by layer type");
    const nlohmann::json& d = !scaling.empty() ? scaling : params;
    c.rope_full = c.rope_sliding =
        detail::parse_rope_dict(r, !scaling.empty() ? "rope_scaling" : "rope_parameters", d, theta);
  } else {
    if (!params.empty() && !nested)
      r.fail("rope_parameters", "must be keyed by layer type (full_attention, sliding_attention) for Gemma3");
    auto layer = [&](const char* lt, const char* theta_name, double theta_def, bool scaled) {
      nlohmann::json d =
          params.contains(lt) && !params[lt].is_null() ? params[lt] : nlohmann::json{{"rope_type", "default"}};
      if (!d.is_object()) r.fail(std::string("rope_parameters.") + lt, "must be an object");
      if (scaled) d.update(scaling);  // legacy rope_scaling applies to the full-attention (global) layers only
      const std::string key =
          scaled && !scaling.empty() ? std::string("rope_scaling") : std::string("rope_parameters.") + lt;
      return detail::parse_rope_dict(r, key, d, theta_key(theta_name, theta_def));
    };
    c.rope_full = layer("full_attention", "rope_theta", 1'000'000.0, true);
    c.rope_sliding = layer("sliding_attention", "rope_local_base_freq", 10'000.0, false);
  }
  return c;
}

// A JSON file (config.json, generation_config.json, adapter_config.json, trainer state), parsed; a missing or
// malformed file is one distill::Error naming it. J = nlohmann::ordered_json keeps the key order for rewriting.
template <class J = nlohmann::json>
J read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return J::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
}

// Reads `path_or_dir` (a config.json, or a directory holding one).
inline ModelConfig load_model_config(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string path =
      fs::is_directory(path_or_dir, ec) ? (fs::path(path_or_dir) / "config.json").string() : path_or_dir;
  return parse_model_config(read_json_file(path), path);
}

}  // namespace distill::io
