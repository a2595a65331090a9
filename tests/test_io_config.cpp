// config.json -> ModelConfig: the hub configs of Qwen3-4B-Thinking-2507 and gemma-3-1b-it, variants, and the
// same configs re-saved by transformers 5.24 (rope_parameters form) all resolve to what transformers resolves;
// unsupported or malformed configs give one clear error naming the file and key.
// Fixtures: tools/golden/export_config_fixtures.py -> tests/golden/configs/.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "distill/io/hf_config.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::io;
using nlohmann::json;

using test::TempDir;

namespace {

const json& resolved() {
  static const json r = json::parse(read_file(test::golden_path("configs/resolved.json")));
  return r;
}

std::string rope_type_name(RopeType t) { return t == RopeType::Linear ? "linear" : "default"; }

void check_matches(const ModelConfig& c, const json& v) {
  if (!v["architecture"].is_null()) CHECK(c.architecture == v["architecture"].get<std::string>());
  CHECK(c.model_type == v["model_type"].get<std::string>());
  CHECK(c.arch == (c.model_type == "qwen3" ? ModelArch::Qwen3 : ModelArch::Gemma3));
  CHECK(c.nested_text_config == v["nested_text_config"].get<bool>());
  CHECK(c.vocab_size == v["vocab_size"].get<int64_t>());
  CHECK(c.hidden_size == v["hidden_size"].get<int64_t>());
  CHECK(c.intermediate_size == v["intermediate_size"].get<int64_t>());
  CHECK(c.num_hidden_layers == v["num_hidden_layers"].get<int64_t>());
  CHECK(c.num_attention_heads == v["num_attention_heads"].get<int64_t>());
  CHECK(c.num_key_value_heads == v["num_key_value_heads"].get<int64_t>());
  CHECK(c.head_dim == v["head_dim"].get<int64_t>());
  CHECK(c.max_position_embeddings == v["max_position_embeddings"].get<int64_t>());
  CHECK(c.rms_norm_eps == v["rms_norm_eps"].get<double>());
  CHECK(c.hidden_act_name == v["hidden_act"].get<std::string>());
  CHECK(c.hidden_act == (c.hidden_act_name == "silu" ? Activation::Silu : Activation::GeluTanh));
  CHECK(c.tie_word_embeddings == v["tie_word_embeddings"].get<bool>());
  CHECK(c.attention_bias == v["attention_bias"].get<bool>());
  CHECK(c.dtype == v["dtype"].get<std::string>());
  CHECK(c.bos_token_id ==
        (v["bos_token_id"].is_null() ? std::nullopt : std::optional(v["bos_token_id"].get<int64_t>())));
  CHECK(c.pad_token_id ==
        (v["pad_token_id"].is_null() ? std::nullopt : std::optional(v["pad_token_id"].get<int64_t>())));
  CHECK(c.eos_token_ids == v["eos_token_ids"].get<std::vector<int64_t>>());
  REQUIRE(c.layer_types.size() == v["layer_types"].size());
  for (size_t i = 0; i < c.layer_types.size(); ++i) {
    CAPTURE(i);
    CHECK(c.is_sliding(static_cast<int64_t>(i)) == (v["layer_types"][i] == "sliding_attention"));
  }
  CHECK(c.sliding_window ==
        (v["sliding_window"].is_null() ? std::nullopt : std::optional(v["sliding_window"].get<int64_t>())));
  CHECK(c.query_pre_attn_scalar == v["query_pre_attn_scalar"].get<double>());
  CHECK(c.attention_scale() == v["attention_scale"].get<double>());  // bitwise: same pow as Python's ** -0.5
  auto opt = [](const json& x) { return x.is_null() ? std::nullopt : std::optional(x.get<double>()); };
  CHECK(c.final_logit_softcapping == opt(v["final_logit_softcapping"]));
  CHECK(c.attn_logit_softcapping == opt(v["attn_logit_softcapping"]));
  for (const auto& item : v["rope"].items()) {
    const std::string lt = item.key();
    const auto& rp = item.value();
    CAPTURE(lt);
    const RopeParams& p = lt == "full_attention" ? c.rope_full : c.rope_sliding;
    CHECK(rope_type_name(p.type) == rp["rope_type"].get<std::string>());
    CHECK(p.theta == rp["rope_theta"].get<double>());
    CHECK(p.factor == rp["factor"].get<double>());
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    CHECK(&c.rope(i) == (c.is_sliding(i) ? &c.rope_sliding : &c.rope_full));
}

// The message of the distill::Error that parse_model_config throws for `j` ("" and a failed check otherwise).
std::string error_for(const json& j) {
  try {
    parse_model_config(j, "cfg/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  FAIL_CHECK("expected a distill::Error for " << j.dump());
  return "";
}

json qwen_hub() { return json::parse(read_file(test::golden_path("configs/hub/qwen3-4b-thinking-2507.json"))); }
json gemma_hub() { return json::parse(read_file(test::golden_path("configs/hub/gemma-3-1b-it.json"))); }

}  // namespace

TEST_CASE("config: hub files and their transformers v5 re-saves resolve as transformers does") {
  REQUIRE(resolved()["configs"].size() >= 8);
  for (const auto& item : resolved()["configs"].items()) {
    const std::string name = item.key();
    const auto& entry = item.value();
    CAPTURE(name);
    const auto& v = entry["values"];
    const auto old_form = load_model_config(test::golden_path("configs/" + entry["input"].get<std::string>()));
    check_matches(old_form, v);
    const auto new_form = load_model_config(test::golden_path("configs/" + entry["v5"].get<std::string>()));
    check_matches(new_form, v);
  }
}

TEST_CASE("config: the two models' values (SPEC §1.7, §2.7)") {
  const auto q = parse_model_config(qwen_hub(), "qwen/config.json");
  CHECK(q.arch == ModelArch::Qwen3);
  CHECK(q.hidden_size == 2560);
  CHECK(q.num_key_value_heads == 8);
  CHECK(q.num_kv_groups() == 4);
  CHECK(q.head_dim == 128);
  CHECK(q.tie_word_embeddings);
  CHECK(q.rope_full == RopeParams{RopeType::Default, 5e6, 1.0});
  CHECK(q.rope_sliding == q.rope_full);
  CHECK(q.eos_token_ids == std::vector<int64_t>{151645});
  CHECK(q.attention_scale() == 0.08838834764831845);
  CHECK_FALSE(q.sliding_window);
  CHECK(q.dtype == "bfloat16");

  const auto g = parse_model_config(gemma_hub(), "gemma/config.json");
  CHECK(g.arch == ModelArch::Gemma3);
  CHECK(g.hidden_act == Activation::GeluTanh);
  CHECK(g.head_dim == 256);
  CHECK(g.tie_word_embeddings);  // not in the file: Gemma3TextConfig's default
  CHECK(g.sliding_window == 512);
  CHECK(g.attention_scale() == 0.0625);
  CHECK(g.eos_token_ids == std::vector<int64_t>{1, 106});
  CHECK(g.pad_token_id == 0);
  std::vector<int64_t> full;
  for (int64_t i = 0; i < g.num_hidden_layers; ++i)
    if (!g.is_sliding(i)) full.push_back(i);
  CHECK(full == std::vector<int64_t>{5, 11, 17, 23});
  CHECK(g.rope(0).theta == 10000.0);
  CHECK(g.rope(5).theta == 1e6);
  CHECK_FALSE(g.final_logit_softcapping);
}

TEST_CASE("config: load_model_config takes a directory or a file and names it in errors") {
  TempDir tmp;
  std::filesystem::copy_file(test::golden_path("configs/hub/gemma-3-1b-it.json"), tmp.path / "config.json");
  CHECK(load_model_config(tmp.path.string()).num_hidden_layers == 26);
  CHECK(load_model_config((tmp.path / "config.json").string()).num_hidden_layers == 26);
  std::ofstream(tmp.path / "bad.json") << "{\"model_type\": \"qwen3\",";
  CHECK_THROWS_WITH_AS(load_model_config((tmp.path / "bad.json").string()),
                       doctest::Contains("bad.json: not valid JSON"), Error);
  std::ofstream(tmp.path / "wrong.json") << R"({"model_type": "qwen3", "num_attention_heads": 0})";
  CHECK_THROWS_WITH_AS(load_model_config((tmp.path / "wrong.json").string()),
                       doctest::Contains("wrong.json: num_attention_heads must be a positive integer, found 0"), Error);
  CHECK_THROWS_WITH_AS(load_model_config((tmp.path / "missing").string()), doctest::Contains("missing: cannot open"),
                       Error);
}

TEST_CASE("config: unsupported and malformed configs give one clear error naming the file and key") {
  struct Case {
    const char* what;
    json patch;  // keys set in the base config (the string "<erase>" removes a key)
    bool gemma;
    const char* expect;
  };
  const Case cases[] = {
      {"unknown model type", {{"model_type", "llama"}}, false, "model_type is \"llama\", which is not supported"},
      {"no model type", {{"model_type", "<erase>"}}, false, "no model_type"},
      {"other architecture",
       {{"architectures", {"Qwen3ForSequenceClassification"}}},
       false,
       "unsupported architecture [\"Qwen3ForSequenceClassification\"]"},
      {"architectures not a list",
       {{"architectures", "Qwen3ForCausalLM"}},
       false,
       "architectures must be a non-empty list"},
      {"zero heads", {{"num_attention_heads", 0}}, false, "num_attention_heads must be a positive integer, found 0"},
      {"negative layers", {{"num_hidden_layers", -2}}, false, "num_hidden_layers must be a positive integer, found -2"},
      {"absurd layer count",
       {{"num_hidden_layers", 1000000000000}},
       true,
       "num_hidden_layers 1000000000000 is implausibly large"},
      {"eos beyond int64",
       {{"eos_token_id", json::array({json(uint64_t{18446744073709551615u})})}},
       false,
       "eos_token_id must be an integer"},
      {"float size", {{"hidden_size", 2560.5}}, false, "hidden_size must be a positive integer, found 2560.5"},
      {"string size", {{"vocab_size", "151936"}}, false, "vocab_size must be a positive integer"},
      {"kv not dividing heads",
       {{"num_key_value_heads", 6}},
       false,
       "num_attention_heads 32 is not divisible by num_key_value_heads 6"},
      {"odd head_dim", {{"head_dim", 127}}, false, "head_dim 127 must be even"},
      {"gemma hidden not divisible",
       {{"hidden_size", 1150}},
       true,
       "hidden_size 1150 is not divisible by num_attention_heads 4"},
      {"eps zero", {{"rms_norm_eps", 0}}, false, "rms_norm_eps must be a positive number"},
      {"activation", {{"hidden_act", "relu"}}, false, "hidden_act is \"relu\", which is not supported"},
      {"gemma activation",
       {{"hidden_activation", "gelu"}},
       true,
       "hidden_activation is \"gelu\", which is not supported"},
      {"attention bias", {{"attention_bias", true}}, false, "attention_bias is true"},
      {"bool as string", {{"tie_word_embeddings", "true"}}, false, "tie_word_embeddings must be true or false"},
      {"yarn",
       {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}}}},
       false,
       "rope_scaling has rope_type \"yarn\", which is not supported (supported: default, linear)"},
      {"dynamic v5",
       {{"rope_parameters", {{"rope_type", "dynamic"}, {"factor", 2.0}, {"rope_theta", 1e4}}}},
       false,
       "rope_parameters has rope_type \"dynamic\""},
      {"gemma yarn",
       {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 8.0}}}},
       true,
       "rope_scaling has rope_type \"yarn\""},
      {"gemma llama3 per layer",
       {{"rope_parameters", {{"full_attention", {{"rope_type", "llama3"}, {"rope_theta", 1e6}}}}}},
       true,
       "rope_parameters.full_attention has rope_type \"llama3\""},
      {"linear without factor",
       {{"rope_scaling", {{"rope_type", "linear"}}}},
       false,
       "has rope_type \"linear\" but no factor"},
      {"negative factor",
       {{"rope_scaling", {{"rope_type", "linear"}, {"factor", -2}}}},
       false,
       "rope_scaling.factor must be a positive number"},
      {"type disagreement",
       {{"rope_scaling", {{"type", "linear"}, {"factor", 8.0}}}},
       true,
       "has rope_type \"default\" and the legacy type \"linear\", which disagree"},
      {"partial rotary",
       {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e4}, {"partial_rotary_factor", 0.5}}}},
       false,
       "rope_parameters.partial_rotary_factor is 0.5: partial rotary embeddings are not supported"},
      {"top-level partial rotary", {{"partial_rotary_factor", 0.25}}, false, "partial_rotary_factor is 0.25"},
      {"bad theta", {{"rope_theta", "big"}}, false, "rope_theta must be a positive number, found \"big\""},
      {"null local base", {{"rope_local_base_freq", nullptr}}, true, "rope_local_base_freq must be a positive number"},
      {"qwen nested rope",
       {{"rope_parameters", {{"full_attention", {{"rope_type", "default"}}}}}, {"rope_scaling", nullptr}},
       false,
       "rope_parameters must be one dict"},
      {"gemma flat rope",
       {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}}}},
       true,
       "rope_parameters must be keyed by layer type"},
      {"rope_scaling not object", {{"rope_scaling", 8}}, false, "rope_scaling must be an object or null, found 8"},
      {"layer_types length",
       {{"layer_types", {"full_attention"}}},
       false,
       "layer_types has 1 entries but num_hidden_layers is 36"},
      {"layer type unknown",
       {{"layer_types", json::array({"full_attention", "linear_attention"})}, {"num_hidden_layers", 2}},
       false,
       "layer_types[1] is linear_attention, which is not supported"},
      {"sliding without window",
       {{"sliding_window", nullptr}},
       true,
       "sliding_window is null but layer_types has sliding"},
      {"zero pattern", {{"sliding_window_pattern", 0}}, true, "sliding_window_pattern must be a positive integer"},
      {"bidirectional", {{"use_bidirectional_attention", true}}, true, "use_bidirectional_attention is true"},
      {"eos strings", {{"eos_token_id", {"</s>"}}}, false, "eos_token_id must be an integer or a list of integers"},
      {"bos float", {{"bos_token_id", 1.5}}, false, "bos_token_id must be an integer or null"},
      {"softcap negative",
       {{"final_logit_softcapping", -30.0}},
       true,
       "final_logit_softcapping must be a positive number"},
      {"dtype not string", {{"torch_dtype", 16}}, false, "torch_dtype must be a string"},
      {"gemma3 without text_config", {{"model_type", "gemma3"}}, true, "text_config must be an object"},
  };
  for (const auto& c : cases) {
    const std::string what = c.what;
    CAPTURE(what);
    json j = c.gemma ? gemma_hub() : qwen_hub();
    for (const auto& [k, v] : c.patch.items()) {
      if (v == "<erase>")
        j.erase(k);
      else
        j[k] = v;
    }
    const std::string msg = error_for(j);
    CHECK(msg.rfind("cfg/config.json: ", 0) == 0);
    CHECK_MESSAGE(msg.find(c.expect) != std::string::npos, msg);
  }
  CHECK(error_for(json::array()).find("config must be a JSON object") != std::string::npos);
  // A Gemma3ForConditionalGeneration whose text_config is not a Gemma3 text model; keys are shown with their path.
  json mm = {{"model_type", "gemma3"},
             {"architectures", {"Gemma3ForConditionalGeneration"}},
             {"text_config", {{"model_type", "gemma2"}}}};
  CHECK(error_for(mm).find("text_config.model_type is \"gemma2\"") != std::string::npos);
  mm["text_config"] = {{"num_attention_heads", -1}};
  CHECK(error_for(mm).find("cfg/config.json: text_config.num_attention_heads must be a positive integer") !=
        std::string::npos);
}

TEST_CASE("config: tolerated variations") {
  // Unknown keys are ignored; legacy "attention" layer type; eos null; Qwen3 kv heads null -> heads.
  json j = qwen_hub();
  j["quantization_config"] = {{"load_in_4bit", true}};
  j["eos_token_id"] = nullptr;
  j["num_key_value_heads"] = nullptr;
  j["layer_types"] = json::array();
  for (int i = 0; i < 36; ++i) j["layer_types"].push_back(i % 2 ? "attention" : "full_attention");
  const auto c = parse_model_config(j, "x");
  CHECK(c.eos_token_ids.empty());
  CHECK(c.num_key_value_heads == 32);
  CHECK_FALSE(c.is_sliding(1));
  // rope_parameters' own theta wins over a top-level rope_theta; rope_scaling wins over rope_parameters.
  j = qwen_hub();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 123.0}};
  CHECK(parse_model_config(j, "x").rope_full.theta == 123.0);
  j.erase("rope_theta");
  CHECK(parse_model_config(j, "x").rope_full.theta == 123.0);
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  const auto s = parse_model_config(j, "x");
  CHECK(s.rope_full == RopeParams{RopeType::Linear, 10000.0, 2.0});
}
