// PEFT adapter files, malformed: adapter_config.json that PEFT would accept but that changes the math (DoRA,
// biases, rank patterns, ...) or that is not LoRA is refused naming the key; adapter_model.safetensors with a
// missing, extra or mis-shaped tensor is refused naming it; the config we write is PEFT's key set, sorted.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "distill/models/adapter.hpp"
#include "distill/models/qwen3.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::models;
using nlohmann::json;
namespace fs = std::filesystem;

using test::TempDir;

namespace {

json base_config() {
  return json{{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "v_proj"}}};
}

}  // namespace

TEST_CASE("adapter_config.json: what PEFT writes parses; what changes the math is refused by name") {
  const json written = json::parse(std::ifstream(test::golden_path("lora/qwen3_f32/adapter_init/adapter_config.json")));
  const io::PeftLoraConfig p = io::parse_peft_config(written, "peft");
  CHECK(p.r == 4);
  CHECK(p.lora_alpha == 8);
  CHECK(p.target_modules.size() == 7);
  // Our writer: every key PEFT 0.21 writes for LoRA except the three newest (null) ones, sorted.
  const json ours = json::parse(io::peft_config_json(p).dump(2));
  for (auto it = ours.begin(); it != ours.end(); ++it) CHECK_MESSAGE(written.contains(it.key()), it.key());
  CHECK(ours.at("target_modules") == written.at("target_modules"));
  CHECK(ours.at("r") == written.at("r"));

  const std::vector<std::pair<json, std::string>> bad{
      {json{{"peft_type", "IA3"}}, "only LORA"},
      {json::object(), "missing \"peft_type\""},
      {json{{"peft_type", "LORA"}, {"r", 4}}, "missing \"target_modules\""},
      {json::array(), "must be a JSON object"},
  };
  for (const auto& [j, msg] : bad)
    CHECK_THROWS_WITH_AS(io::parse_peft_config(j, "f"), doctest::Contains(msg.c_str()), Error);
  const std::vector<std::pair<std::pair<std::string, json>, std::string>> keys{
      {{"use_dora", true}, "DoRA"},
      {{"fan_in_fan_out", true}, "fan_in_fan_out"},
      {{"lora_bias", true}, "lora_bias"},
      {{"bias", "all"}, "\"bias\" must be \"none\""},
      {{"modules_to_save", {"lm_head"}}, "modules_to_save"},
      {{"rank_pattern", {{"q_proj", 8}}}, "rank_pattern"},
      {{"alpha_pattern", {{"q_proj", 8}}}, "alpha_pattern"},
      {{"layers_to_transform", {0, 1}}, "layers_to_transform"},
      {{"r", 0}, "positive integer"},
      {{"r", 2.5}, "positive integer"},
      {{"r", 4.4e58}, "positive integer"},  // the fuzzer's find: beyond int64, once converted before checking
      {{"r", 2097152}, "positive integer"},
      {{"r", "8"}, "\"r\" must be a number"},
      {{"lora_dropout", 1.0}, "[0, 1)"},
      {{"target_modules", 5}, "list of names or a regular expression"},
      {{"target_modules", json::array()}, "is empty"},
      {{"target_modules", "(unclosed"}, "list the modules instead"},
      {{"target_modules", R"(.*\.(q|v)_proj)"}, "list the modules instead"},
      {{"use_rslora", "yes"}, "true or false"},
  };
  for (const auto& [kv, msg] : keys) {
    json j = base_config();
    j[kv.first] = kv.second;
    CAPTURE(kv.first);
    CHECK_THROWS_WITH_AS(io::parse_peft_config(j, "cfg.json"), doctest::Contains(msg.c_str()), Error);
  }
  json all = base_config();
  all["target_modules"] = "all-linear";
  const nn::LoraConfig c = lora_config_from_peft(io::parse_peft_config(all, "f"));
  CHECK(c.targets_module("model.layers.0.self_attn.q_proj"));
  CHECK(io::peft_config_json(io::parse_peft_config(all, "f")).at("target_modules") == "all-linear");
}

TEST_CASE("adapter_model.safetensors: missing, extra and mis-shaped tensors are refused by name") {
  using Q = Transformer<qwen3::kFamily, float>;
  const std::string src = test::golden_path("lora/qwen3_f32/adapter_init");
  const io::SafetensorsFile f = io::SafetensorsFile::open(src + "/adapter_model.safetensors");
  const std::string qa = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
  auto write = [&](const fs::path& dir, const std::function<void(io::SafetensorsWriter&)>& extra,
                   const std::string& skip, const json& cfg) {
    fs::create_directories(dir);
    io::SafetensorsWriter w;
    for (const auto& t : f.tensors())
      if (t.name != skip) w.add(t.name, f.load<float>(t.name));
    extra(w);
    w.save((dir / "adapter_model.safetensors").string());
    std::ofstream(dir / "adapter_config.json") << cfg.dump(2);
  };
  const json cfg = json::parse(std::ifstream(src + "/adapter_config.json"));
  TempDir d;
  auto load = [&](const fs::path& dir) {
    Q m = Q::load(test::golden_path("models/qwen3_tiny"));
    load_peft_adapter(m, dir.string());
  };
  write(
      d.path / "missing", [](auto&) {}, qa, cfg);
  CHECK_THROWS_WITH_AS(load(d.path / "missing"), doctest::Contains(("missing " + qa).c_str()), Error);
  write(
      d.path / "extra",
      [](auto& w) {
        w.add("base_model.model.lm_head.lora_A.weight", Tensor<float>::zeros({4, 64}));
      },
      "", cfg);
  CHECK_THROWS_WITH_AS(load(d.path / "extra"), doctest::Contains("lm_head.lora_A.weight"), Error);
  write(
      d.path / "shape",
      [&](auto& w) {
        w.add(qa, Tensor<float>::zeros({4, 63}));
      },
      qa, cfg);
  CHECK_THROWS_WITH_AS(load(d.path / "shape"), doctest::Contains("expected [4, 64]"), Error);
  json only_q = cfg;
  only_q["target_modules"] = {"q_proj"};
  write(
      d.path / "untargeted", [](auto&) {}, "", only_q);
  CHECK_THROWS_WITH_AS(load(d.path / "untargeted"), doctest::Contains("is not a target module"), Error);
  fs::create_directories(d.path / "nofile");
  std::ofstream(d.path / "nofile" / "adapter_config.json") << cfg.dump();
  CHECK_THROWS_WITH_AS(load(d.path / "nofile"), doctest::Contains("adapter_model.safetensors: missing"), Error);
  CHECK_THROWS_WITH_AS(load(d.path / "nowhere"), doctest::Contains("not a PEFT adapter directory"), Error);
}
