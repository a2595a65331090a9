// Loading a Transformer from a Hugging Face directory, and misusing one: every problem is one distill::Error
// whose message names what is wrong (the field, the tensor, both shapes, the limit). Each case builds its
// checkpoint in a fresh temporary directory from the tiny fixtures of tests/golden/models/ (copied, edited,
// re-sharded), and the exact specs are checked against the real hub configs in tests/golden/configs/hub/ with
// the numbers of SPEC §1.7 and §2.4/§2.7.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "distill/io/hf_config.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/transformer.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::models;
using nlohmann::json;
namespace fs = std::filesystem;

using test::TempDir;

namespace {

std::string model_dir(const std::string& name) { return test::golden_path("models/" + name); }

json read_json(const fs::path& p) { return json::parse(std::ifstream(p)); }
void write_json(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(2); }

// One tensor of a safetensors file, as raw bytes (so a rewrite keeps the file's dtype and values).
struct RawTensor {
  std::string name;
  io::StDtype dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<RawTensor> read_tensors(const std::string& file) {
  const auto f = io::SafetensorsFile::open(file);
  std::vector<RawTensor> out;
  for (const auto& t : f.tensors()) {
    const auto b = f.bytes(t);
    out.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(b.begin(), b.end())});
  }
  return out;
}

void write_tensors(const fs::path& file, const std::vector<RawTensor>& ts) {
  io::SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (const auto& t : ts) w.add_bytes(t.name, t.dtype, t.shape, t.bytes);
  w.save(file.string());
}

// A copy of fixture `name` in `dir`: its config.json passed through `edit_cfg`, its tensors through `edit`.
void copy_fixture(const std::string& name, const fs::path& dir, const std::function<void(json&)>& edit_cfg = {},
                  const std::function<void(std::vector<RawTensor>&)>& edit = {}) {
  json cfg = read_json(fs::path(model_dir(name)) / "config.json");
  if (edit_cfg) edit_cfg(cfg);
  write_json(dir / "config.json", cfg);
  auto ts = read_tensors(model_dir(name) + "/model.safetensors");
  if (edit) edit(ts);
  write_tensors(dir / "model.safetensors", ts);
}

RawTensor* find(std::vector<RawTensor>& ts, const std::string& name) {
  for (auto& t : ts)
    if (t.name == name) return &t;
  FAIL("fixture has no tensor " << name);
  return nullptr;
}

// The message of the one distill::Error that `f` throws; a failed check (and "") when it throws nothing or
// something else.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("expected a distill::Error, got another exception: " << e.what());
    return "";
  }
  FAIL_CHECK("expected a distill::Error, nothing was thrown");
  return "";
}

// `f` throws a distill::Error whose message holds every one of `parts`.
void check_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  const std::string msg = error_of(f);
  CAPTURE(msg);
  for (const auto& p : parts) {
    CAPTURE(p);
    CHECK(msg.find(p) != std::string::npos);
  }
}

Tensor<int32_t> ids_of(const std::vector<int32_t>& p) {
  return Tensor<int32_t>::from_vector({1, static_cast<int64_t>(p.size())}, p);
}
Tensor<int32_t> iota_ids(int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>(3 + 7 * i % 200);
  return ids_of(v);
}

// Bitwise equality of two float tensors of the same shape.
bool bit_equal(const Tensor<float>& a, const Tensor<float>& b) {
  if (a.shape() != b.shape()) return false;
  const auto ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data(), cb.data(), sizeof(float) * static_cast<size_t>(ca.numel())) == 0;
}

io::ModelConfig hub(const char* file) { return io::load_model_config(test::golden_path("configs/hub/") + file); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// 1. A config.json that does not fit the compiled spec.

TEST_CASE("load: a checkpoint of the other family is refused naming both") {
  check_error([] { (void)Transformer<gemma3::kFamily, float>::load(model_dir("qwen3_tiny")); },
              {"config.json", "Qwen3ForCausalLM", "Gemma3"});
  check_error([] { (void)Transformer<qwen3::kFamily, float>::load(model_dir("gemma3_tiny")); },
              {"config.json", "Gemma3ForCausalLM", "Qwen3"});
}

TEST_CASE("load: an exact spec refuses a checkpoint of another size, naming the field and the expected value") {
  check_error(
      [] { (void)Transformer<qwen3::k4B_Thinking_2507, float>::load(model_dir("qwen3_tiny"), "Qwen3-4B-Thinking"); },
      {"config.json", "num_hidden_layers is 3", "Qwen3-4B-Thinking", "expects 36"});
  check_error([] { (void)Transformer<gemma3::k1B_it, float>::load(model_dir("gemma3_tiny"), "gemma-3-1b-it"); },
              {"config.json", "num_hidden_layers is 4", "gemma-3-1b-it", "expects 26"});
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The exact specs against the real hub configs (numbers from SPEC §1.7, §2.4, §2.7).

TEST_CASE("resolve: the exact Qwen3-4B-Thinking-2507 spec accepts its hub config with the SPEC values") {
  const ModelDims d = resolve<qwen3::k4B_Thinking_2507>(hub("qwen3-4b-thinking-2507.json"), "qwen", "q4b");
  CHECK(d.family == Family::Qwen3);
  CHECK(d.layers == 36);
  CHECK(d.hidden == 2560);
  CHECK(d.heads == 32);
  CHECK(d.kv_heads == 8);
  CHECK(d.head_dim == 128);
  CHECK(d.ffn == 9728);
  CHECK(d.vocab == 151936);
  CHECK(d.max_positions == 262144);
  CHECK(d.eps == 1e-6);
  CHECK(d.tied);
  CHECK(d.final_softcap == 0);
  CHECK(d.embed_scale == 0);
  CHECK(d.attn_scale == doctest::Approx(1.0 / std::sqrt(128.0)).epsilon(1e-15));
  CHECK(d.q_dim() == 4096);  // q_proj [4096, 2560]
  CHECK(d.kv_dim() == 1024);
  CHECK(d.max_window() == 0);
  CHECK(d.eos_token_ids == std::vector<int64_t>{151645});
  CHECK(d.bos_token_id == std::optional<int64_t>(151643));
  REQUIRE(d.layer.size() == 36);
  for (const auto& l : d.layer) {
    CHECK_FALSE(l.sliding);
    CHECK(l.window == 0);
    CHECK(l.rope.theta == 5000000.0);
    CHECK(l.rope.linear_factor == 1.0);
  }
}

TEST_CASE("resolve: the exact gemma-3-1b-it spec accepts its hub config with the SPEC values") {
  const ModelDims d = resolve<gemma3::k1B_it>(hub("gemma-3-1b-it.json"), "gemma", "g1b");
  CHECK(d.family == Family::Gemma3);
  CHECK(d.layers == 26);
  CHECK(d.hidden == 1152);
  CHECK(d.heads == 4);
  CHECK(d.kv_heads == 1);
  CHECK(d.head_dim == 256);
  CHECK(d.ffn == 6912);
  CHECK(d.vocab == 262144);
  CHECK(d.max_positions == 32768);
  CHECK(d.eps == 1e-6);
  CHECK(d.tied);  // not in the file: Gemma3TextConfig's default
  CHECK(d.final_softcap == 0);
  CHECK(d.attn_scale == 0.0625);  // 256^-0.5, exact
  CHECK(d.embed_scale == doctest::Approx(std::sqrt(1152.0)).epsilon(1e-15));
  CHECK(d.max_window() == 512);
  CHECK(d.eos_token_ids == std::vector<int64_t>{1, 106});
  REQUIRE(d.layer.size() == 26);
  for (int64_t i = 0; i < 26; ++i) {
    CAPTURE(i);
    const LayerPlan& l = d.layer[static_cast<size_t>(i)];
    const bool full = i == 5 || i == 11 || i == 17 || i == 23;  // SPEC §2.4
    CHECK(l.sliding == !full);
    CHECK(l.window == (full ? 0 : 512));
    CHECK(l.rope.theta == (full ? 1000000.0 : 10000.0));
    CHECK(l.rope.linear_factor == 1.0);
  }
}

TEST_CASE("resolve: an exact spec refuses a hub config changed in one number, naming it") {
  auto parsed = [](const char* file, const std::function<void(json&)>& edit) {
    json j = read_json(test::golden_path("configs/hub/") + file);
    edit(j);
    return io::parse_model_config(j, "hub/config.json");
  };
  check_error(
      [&] {
        (void)resolve<qwen3::k4B_Thinking_2507>(
            parsed("qwen3-4b-thinking-2507.json", [](json& j) { j["rope_theta"] = 1000000; }), "hub/config.json");
      },
      {"hub/config.json", "rope_theta", "5000000"});
  check_error(
      [&] {
        (void)resolve<qwen3::k4B_Thinking_2507>(
            parsed("qwen3-4b-thinking-2507.json", [](json& j) { j["tie_word_embeddings"] = false; }),
            "hub/config.json");
      },
      {"tie_word_embeddings is false", "expects true"});
  check_error(
      [&] {
        (void)resolve<gemma3::k1B_it>(parsed("gemma-3-1b-it.json", [](json& j) { j["sliding_window"] = 1024; }),
                                      "hub/config.json");
      },
      {"sliding_window is 1024", "512"});
  check_error(
      [&] {
        (void)resolve<gemma3::k1B_it>(parsed("gemma-3-1b-it.json", [](json& j) { j["sliding_window_pattern"] = 4; }),
                                      "hub/config.json");
      },
      {"layer 3", "every 6 layers"});
  check_error(
      [&] {
        (void)resolve<gemma3::k1B_it>(parsed("gemma-3-1b-it.json", [](json& j) { j["rope_local_base_freq"] = 20000; }),
                                      "hub/config.json");
      },
      {"rope_local_base_freq is 20000", "10000"});
  check_error(
      [&] {
        (void)resolve<gemma3::k1B_it>(parsed("gemma-3-1b-it.json", [](json& j) { j["query_pre_attn_scalar"] = 144; }),
                                      "hub/config.json");
      },
      {"query_pre_attn_scalar is 144", "256"});
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Weights that do not fit the config.

TEST_CASE("load: a missing tensor is named with its expected shape") {
  TempDir tmp;
  copy_fixture("qwen3_tiny", tmp.path, {}, [](std::vector<RawTensor>& ts) {
    std::erase_if(ts, [](const RawTensor& t) { return t.name == "model.layers.1.self_attn.k_norm.weight"; });
  });
  check_error([&] { (void)Transformer<qwen3::kFamily, float>::load(tmp.str()); },
              {"model.safetensors", "missing tensor model.layers.1.self_attn.k_norm.weight", "[16]"});
}

TEST_CASE("load: an untied Qwen3 checkpoint without lm_head.weight is refused naming it") {
  TempDir tmp;
  copy_fixture("qwen3_tiny", tmp.path, {}, [](std::vector<RawTensor>& ts) {
    std::erase_if(ts, [](const RawTensor& t) { return t.name == "lm_head.weight"; });
  });
  check_error([&] { (void)Transformer<qwen3::kFamily, float>::load(tmp.str()); },
              {"missing tensor lm_head.weight", "[256, 64]"});
}

TEST_CASE("load: a tensor with the wrong shape is named with both shapes") {
  TempDir tmp;
  // Transposed: the same number of bytes, so only the shape check can catch it.
  copy_fixture("qwen3_tiny", tmp.path, {}, [](std::vector<RawTensor>& ts) {
    RawTensor* t = find(ts, "model.layers.2.mlp.up_proj.weight");
    REQUIRE(t->shape == std::vector<int64_t>{128, 64});
    t->shape = {64, 128};
  });
  check_error([&] { (void)Transformer<qwen3::kFamily, float>::load(tmp.str()); },
              {"model.layers.2.mlp.up_proj.weight", "[64, 128]", "[128, 64]"});
}

TEST_CASE("load: an unexpected extra tensor is named") {
  TempDir tmp;
  // A fourth layer's weight in a three-layer checkpoint: config and weights disagree.
  copy_fixture("qwen3_tiny", tmp.path, {}, [](std::vector<RawTensor>& ts) {
    RawTensor extra = *find(ts, "model.layers.2.input_layernorm.weight");
    extra.name = "model.layers.3.input_layernorm.weight";
    ts.push_back(extra);
  });
  check_error([&] { (void)Transformer<qwen3::kFamily, float>::load(tmp.str()); },
              {"unexpected tensor model.layers.3.input_layernorm.weight", "[64]"});
}

TEST_CASE("load: a tied Gemma3 checkpoint with an extra lm_head.weight loads and ignores it") {
  TempDir tmp;
  copy_fixture("gemma3_tiny", tmp.path, {}, [](std::vector<RawTensor>& ts) {
    // Different values from the embeddings, so using it by mistake would change the logits.
    RawTensor head = *find(ts, "model.embed_tokens.weight");
    head.name = "lm_head.weight";
    for (auto& b : head.bytes) b = static_cast<uint8_t>(b ^ 0x01);
    ts.push_back(head);
  });
  autograd::NoGradGuard no_grad;
  const auto ref = Transformer<gemma3::kFamily, float>::load(model_dir("gemma3_tiny"));
  const auto m = Transformer<gemma3::kFamily, float>::load(tmp.str());
  CHECK(m.dims().tied);
  const auto ids = iota_ids(9);
  CHECK(bit_equal(m.forward(ids).value(), ref.forward(ids).value()));
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Sharded checkpoints.

TEST_CASE("load: a checkpoint split into two shards with an index loads and gives the same logits exactly") {
  TempDir tmp;
  fs::copy_file(fs::path(model_dir("qwen3_tiny")) / "config.json", tmp.path / "config.json");
  const auto ts = read_tensors(model_dir("qwen3_tiny") + "/model.safetensors");
  REQUIRE(ts.size() > 2);
  // Alternate tensors between the shards, so every layer is split across both files.
  std::vector<RawTensor> a, b;
  json weight_map = json::object();
  uint64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const bool first = i % 2 == 0;
    (first ? a : b).push_back(ts[i]);
    weight_map[ts[i].name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    total += ts[i].bytes.size();
  }
  write_tensors(tmp.path / "model-00001-of-00002.safetensors", a);
  write_tensors(tmp.path / "model-00002-of-00002.safetensors", b);
  write_json(tmp.path / "model.safetensors.index.json",
             json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  REQUIRE_FALSE(fs::exists(tmp.path / "model.safetensors"));
  REQUIRE(io::Checkpoint::open(tmp.str()).num_shards() == 2);

  autograd::NoGradGuard no_grad;
  const auto ref = Transformer<qwen3::kFamily, float>::load(model_dir("qwen3_tiny"));
  const auto m = Transformer<qwen3::kFamily, float>::load(tmp.str());
  const auto ids = iota_ids(11);
  CHECK(bit_equal(m.forward(ids).value(), ref.forward(ids).value()));

  // And a shard that the index names but that is absent is one error naming it.
  fs::remove(tmp.path / "model-00002-of-00002.safetensors");
  check_error([&] { (void)Transformer<qwen3::kFamily, float>::load(tmp.str()); },
              {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing"});
}

// ---------------------------------------------------------------------------------------------------------------
// 5. bf16 weights are kept as they are in the file.

TEST_CASE("load: bf16 weights are bit-identical to the file's bf16 values") {
  const std::string file = model_dir("qwen3_tiny") + "/model.safetensors";
  const auto f = io::SafetensorsFile::open(file);
  const auto m = Transformer<qwen3::kFamily, bf16>::load(model_dir("qwen3_tiny"));
  const auto& w = m.weights();
  auto check_bits = [&](const std::string& name, const Var<bf16>& v) {
    CAPTURE(name);
    const io::TensorInfo& info = f.info(name);
    REQUIRE(info.dtype == io::StDtype::BF16);
    const auto raw = f.bytes(info);
    const Tensor<bf16> t = v.value().contiguous();
    REQUIRE(static_cast<size_t>(t.numel()) * 2 == raw.size());
    CHECK(std::memcmp(t.data(), raw.data(), raw.size()) == 0);
  };
  check_bits("model.embed_tokens.weight", w.embed);
  check_bits("model.norm.weight", w.final_norm);
  check_bits("lm_head.weight", w.lm_head);
  check_bits("model.layers.1.self_attn.q_proj.weight", w.blocks[1].q.weight);
  check_bits("model.layers.2.self_attn.k_norm.weight", w.blocks[2].k_norm);
  check_bits("model.layers.0.mlp.down_proj.weight", w.blocks[0].down.weight);
}

// ---------------------------------------------------------------------------------------------------------------
// 6. The context length.

TEST_CASE("context: sequences and caches longer than max_position_embeddings are refused") {
  TempDir tmp;
  fs::copy_file(fs::path(model_dir("qwen3_tiny")) / "model.safetensors", tmp.path / "model.safetensors");
  json cfg = read_json(fs::path(model_dir("qwen3_tiny")) / "config.json");
  cfg["max_position_embeddings"] = 8;
  write_json(tmp.path / "config.json", cfg);

  autograd::NoGradGuard no_grad;
  const auto m = Transformer<qwen3::kFamily, float>::load(tmp.str());
  CHECK(m.dims().max_positions == 8);
  CHECK(m.forward(iota_ids(8)).value().shape() == Shape{1, 8, 256});  // the limit itself is fine
  check_error([&] { (void)m.forward(iota_ids(13)); }, {"13", "8", "max_position_embeddings"});
  check_error([&] { (void)m.make_cache(1, 100); }, {"100", "8", "max_position_embeddings"});

  auto cache = m.make_cache(1, 6);
  const int64_t row = 0;
  const std::span<const int64_t> rows(&row, 1);
  (void)m.step(cache, iota_ids(4), rows);
  CHECK(cache.length(0) == 4);
  check_error([&] { (void)m.step(cache, iota_ids(3), rows); }, {"max_len of 6", "cache row 0"});
  CHECK(cache.length(0) == 4);  // a refused step leaves the cache as it was
  (void)m.step(cache, iota_ids(2), rows);
  CHECK(cache.length(0) == 6);
  check_error([&] { (void)m.step(cache, iota_ids(1), rows); }, {"max_len of 6"});
  CHECK(cache.length(0) == 6);
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Configs the models cannot run.

TEST_CASE("config: Qwen3 sliding-window layers are refused; use_sliding_window without sliding layers is not") {
  TempDir tmp;
  // transformers derives layer_types from max_window_layers when the config has none: layers >= 1 slide.
  copy_fixture("qwen3_tiny", tmp.path, [](json& j) {
    j["use_sliding_window"] = true;
    j["sliding_window"] = 4;
    j["max_window_layers"] = 1;
    j.erase("layer_types");
  });
  check_error([&] { (void)Transformer<qwen3::kFamily, float>::load(tmp.str()); },
              {"config.json", "layer 1", "sliding", "not supported"});

  // With explicit layer_types all full_attention, transformers runs no sliding layer (Qwen3Attention reads
  // the window only on sliding layers), so the checkpoint loads.
  TempDir ok;
  copy_fixture("qwen3_tiny", ok.path, [](json& j) {
    j["use_sliding_window"] = true;
    j["sliding_window"] = 4;
  });
  const auto m = Transformer<qwen3::kFamily, float>::load(ok.str());
  CHECK(m.dims().max_window() == 0);
}

TEST_CASE("config: attention logit softcapping on Gemma3 is refused") {
  TempDir tmp;
  copy_fixture("gemma3_tiny", tmp.path, [](json& j) { j["attn_logit_softcapping"] = 50.0; });
  check_error([&] { (void)Transformer<gemma3::kFamily, float>::load(tmp.str()); },
              {"config.json", "attn_logit_softcapping", "not supported"});
}

TEST_CASE("config: attention biases are refused") {
  TempDir tmp;
  copy_fixture("qwen3_tiny", tmp.path, [](json& j) { j["attention_bias"] = true; });
  check_error([&] { (void)Transformer<qwen3::kFamily, float>::load(tmp.str()); },
              {"config.json", "attention_bias", "not supported"});
  TempDir g;
  copy_fixture("gemma3_tiny", g.path, [](json& j) { j["attention_bias"] = true; });
  check_error([&] { (void)Transformer<gemma3::kFamily, float>::load(g.str()); },
              {"config.json", "attention_bias", "not supported"});
}

// ---------------------------------------------------------------------------------------------------------------
// 8. Misusing captures and masks.

TEST_CASE("capture: an uncaptured hidden state and an unknown hook name are errors naming them") {
  const auto m = Transformer<qwen3::kFamily, float>::load(model_dir("qwen3_tiny"));
  autograd::NoGradGuard no_grad;
  Capture<float> cap;
  cap.request(Hook::Block, 0);
  cap.request(Hook::FinalNorm);
  (void)m.forward(iota_ids(5), {}, &cap);
  CHECK(cap.at(Hook::Block, 0).value().shape() == Shape{1, 5, 64});
  CHECK(cap.at(Hook::FinalNorm).value().shape() == Shape{1, 5, 64});
  check_error([&] { (void)cap.at(Hook::Block, 1); }, {"(block, 1)", "not captured"});
  check_error([&] { (void)cap.at(Hook::MlpOut, 0); }, {"(mlp_out, 0)", "not captured"});
  check_error([&] { (void)cap.at(Hook::Embed); }, {"(embed, -1)", "not captured"});
  check_error([&] { (void)cap.at(Hook::Block); }, {"(block, -1)", "not captured"});  // block points need a layer

  for (const char* n : kHookNames) CHECK(std::string(hook_name(parse_hook(n))) == n);
  check_error([] { (void)parse_hook("nope"); },
              {"\"nope\"", "embed", "attn_norm", "attn_out", "mlp_norm", "mlp_out", "block", "final_norm"});
}

TEST_CASE("mask: values other than 0/1, two runs of ones, a wrong shape, and left padding under grad are errors") {
  const auto m = Transformer<qwen3::kFamily, float>::load(model_dir("qwen3_tiny"));
  const auto ids = iota_ids(6);
  {
    autograd::NoGradGuard no_grad;
    check_error(
        [&] {
          (void)m.forward(ids, Tensor<int32_t>::from_vector({1, 6}, {1, 1, 2, 1, 0, 0}));
        },
        {"attention_mask", "0 or 1", "found 2", "[0, 2]"});
    check_error(
        [&] {
          (void)m.forward(ids, Tensor<int32_t>::from_vector({1, 6}, {1, 1, 0, 1, 1, 0}));
        },
        {"attention_mask row 0", "more than one run"});
    check_error(
        [&] {
          (void)m.forward(ids, Tensor<int32_t>::from_vector({1, 5}, {1, 1, 1, 1, 1}));
        },
        {"attention_mask"});
    // Left padding is fine for inference.
    CHECK(m.forward(ids, Tensor<int32_t>::from_vector({1, 6}, {0, 0, 1, 1, 1, 1})).value().shape() == Shape{1, 6, 256});
  }
  REQUIRE(autograd::grad_enabled());
  check_error(
      [&] {
        (void)m.forward(ids, Tensor<int32_t>::from_vector({1, 6}, {0, 0, 1, 1, 1, 1}));
      },
      {"left padding", "NoGradGuard"});
  // Right padding trains.
  CHECK(m.forward(ids, Tensor<int32_t>::from_vector({1, 6}, {1, 1, 1, 1, 0, 0})).value().shape() == Shape{1, 6, 256});
}

TEST_CASE("step refuses a cache row listed twice") {
  autograd::NoGradGuard no_grad;
  const auto m = Transformer<qwen3::kFamily, float>::load(test::golden_path("models/qwen3_tiny"));
  auto cache = m.make_cache(1, 8);
  std::vector<int64_t> rows{0, 0};
  CHECK_THROWS_WITH_AS(m.step(cache, Tensor<int32_t>::from_vector({2, 2}, {5, 6, 9, 10}), rows),
                       doctest::Contains("listed twice"), distill::Error);
  CHECK(cache.length(0) == 0);
}
