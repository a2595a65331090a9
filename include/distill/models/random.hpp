// Random-weight checkpoints with a released model's exact shapes, for benchmarking where the weights are not
// available (a GPU machine that cannot reach the hub): the model's own config.json (the two recipe models are
// built in, as published on the hub), weights drawn uniformly with standard deviation `std` (projections and
// embeddings; HF's initializer_range is 0.02) and norms at the identity (Qwen3's weight 1; Gemma3's (1 + w) with
// w = 0), written in bf16 as a sharded Hugging Face checkpoint that transformers and Distill both load.
//
//   write_random_checkpoint(preset_config("qwen3-4b-thinking-2507"), "/tmp/qwen3-4b-random", {.seed = 1});
//
// Layout: model-00000-of-NNNNN.safetensors (embeddings, final norm, untied head), then one shard per layer, and
// model.safetensors.index.json written last, each file atomically: a killed run leaves no index, and is redone.
// Values depend on (seed, tensor name, position) only, not on the thread count. `layers` and `vocab` override
// the config for small tests (the config's layer pattern is kept for the first `layers` layers).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/io/file.hpp"
#include "distill/io/hf_config.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/weights.hpp"

namespace distill::models {

// config.json of the recipe's models exactly as the hub serves them (tests/golden/configs/hub/ holds the
// downloaded files; a test checks these strings against them).
inline nlohmann::json preset_config(const std::string& name) {
  if (name == "qwen3-4b-thinking-2507")
    return nlohmann::json::parse(R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560,
  "initializer_range": 0.02, "intermediate_size": 9728, "max_position_embeddings": 262144, "max_window_layers": 36,
  "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 5000000, "sliding_window": null,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})");
  if (name == "gemma-3-1b-it")
    return nlohmann::json::parse(R"({
  "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "attn_logit_softcapping": null, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
  "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
  "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
  "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
  "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16", "transformers_version": "4.52.4", "use_cache": true, "vocab_size": 262144})");
  throw Error("unknown model preset \"" + name + "\"; expected qwen3-4b-thinking-2507 or gemma-3-1b-it");
}

struct RandomModelOptions {
  uint64_t seed = 0;
  double std = 0.02;   // of the projections and embeddings
  int64_t layers = 0;  // 0: the config's num_hidden_layers
  int64_t vocab = 0;   // 0: the config's vocab_size
};

struct RandomTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool norm = false;  // an RMSNorm weight (identity value) rather than a random matrix
};

namespace detail {

inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

// bf16 values of one tensor: uniform in [-a, a] with a = std * sqrt(3), or the norm's identity value.
inline std::vector<uint16_t> random_bf16(const RandomTensor& t, uint64_t seed, double std, bool gemma) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  std::vector<uint16_t> out(static_cast<size_t>(n));
  if (t.norm) {
    std::fill(out.begin(), out.end(), bits_of(bf16(gemma ? 0.0f : 1.0f)));
    return out;
  }
  const float a = static_cast<float>(std * std::sqrt(3.0));
  const uint64_t base = seed * 0x2545F4914F6CDD1DULL ^ name_hash(t.name);
  constexpr int64_t kBlock = 1 << 14;  // values per independently seeded block
  parallel_for((n + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      // A hashed start per block: splitmix64 walks its state in steps of the golden ratio, so starts that
      // differ by a multiple of that step would replay each other's values shifted by one.
      uint64_t t = base ^ (static_cast<uint64_t>(b) * 0xD1B54A32D192ED03ULL);
      uint64_t s = splitmix64(t);
      const int64_t e = std::min(n, (b + 1) * kBlock);
      for (int64_t i = b * kBlock; i < e; ++i) {
        const float u = static_cast<float>(splitmix64(s) >> 40) * (1.0f / 16777216.0f);  // [0, 1)
        out[static_cast<size_t>(i)] = bits_of(bf16((2.0f * u - 1.0f) * a));
      }
    }
  });
  return out;
}

}  // namespace detail

// The config with the overrides applied (fewer layers keep the first `layers` entries of the layer pattern).
inline nlohmann::json random_model_config(nlohmann::json cfg, const RandomModelOptions& o) {
  if (o.layers > 0) {
    cfg["num_hidden_layers"] = o.layers;
    if (cfg.contains("layer_types") && cfg["layer_types"].is_array()) {
      auto lt = cfg["layer_types"];
      lt.erase(lt.begin() + std::min<int64_t>(o.layers, static_cast<int64_t>(lt.size())), lt.end());
      cfg["layer_types"] = lt;
    }
    if (cfg.contains("max_window_layers") && cfg["max_window_layers"].is_number_integer())
      cfg["max_window_layers"] = std::min<int64_t>(cfg["max_window_layers"].get<int64_t>(), o.layers);
  }
  if (o.vocab > 0) cfg["vocab_size"] = o.vocab;
  return cfg;
}

// Every tensor of a Qwen3/Gemma3 text checkpoint with `c`'s shapes, in file order: model-level first (layer -1),
// then each layer's. `layer_of[i]` says which shard tensor i goes to. Names and shapes are the loader's own
// (hf_name, role_shape of weights.hpp), from the config resolved with the family spec.
inline std::vector<RandomTensor> checkpoint_tensors(const io::ModelConfig& c,
                                                    std::vector<int64_t>* layer_of = nullptr) {
  const ModelDims d = c.arch == io::ModelArch::Qwen3 ? resolve<qwen3::kFamily>(c, "config.json")
                                                     : resolve<gemma3::kFamily>(c, "config.json");
  std::vector<RandomTensor> ts;
  std::vector<int64_t> where;
  const auto add = [&](std::string n, Role r, int64_t layer) {
    const Shape sh = role_shape(d, r);
    ts.push_back({std::move(n), std::vector<int64_t>(sh.begin(), sh.end()),
                  !is_projection(r) && r != Role::Embed && r != Role::LmHead});
    where.push_back(layer);
  };
  add(std::string("model.") + hf_name(d.family, Role::Embed), Role::Embed, -1);
  add(std::string("model.") + hf_name(d.family, Role::FinalNorm), Role::FinalNorm, -1);
  if (!d.tied) add("lm_head.weight", Role::LmHead, -1);
  for (int64_t l = 0; l < d.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (Role r : kBlockRoles)
      if (const char* n = hf_name(d.family, r)) add(p + n, r, l);  // Qwen3 has no sandwich norms
  }
  if (layer_of) *layer_of = std::move(where);
  return ts;
}

// Writes config.json and the random weights to `out` (created); returns the number of parameters written.
// `on_shard(done, total)` reports progress after each shard.
template <class OnShard = void (*)(int64_t, int64_t)>
int64_t write_random_checkpoint(
    const nlohmann::json& config, const std::string& out, const RandomModelOptions& o = {},
    OnShard&& on_shard = [](int64_t, int64_t) {}) {
  namespace fs = std::filesystem;
  const nlohmann::json cfg = random_model_config(config, o);
  const std::string cfg_path = (fs::path(out) / "config.json").string();
  const io::ModelConfig c = io::parse_model_config(cfg, cfg_path);  // the overrides checked as a loader would
  const bool gemma = c.arch != io::ModelArch::Qwen3;
  std::vector<int64_t> layer_of;
  const std::vector<RandomTensor> ts = checkpoint_tensors(c, &layer_of);
  fs::create_directories(out);
  io::atomic_write(cfg_path, std::string_view(cfg.dump(2) + "\n"));
  const int64_t shards = c.num_hidden_layers + 1;
  const auto shard_name = [&](int64_t s) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05lld-of-%05lld.safetensors", static_cast<long long>(s + 1),
                  static_cast<long long>(shards));
    return std::string(buf);
  };
  nlohmann::json weight_map = nlohmann::json::object();
  int64_t params = 0, bytes = 0;
  for (int64_t s = 0; s < shards; ++s) {
    std::vector<std::vector<uint16_t>> data;
    std::vector<io::TensorRef> refs;
    for (size_t i = 0; i < ts.size(); ++i) {
      if (layer_of[i] != s - 1) continue;
      data.push_back(detail::random_bf16(ts[i], o.seed, o.std, gemma));
      const auto& d = data.back();
      refs.push_back({ts[i].name, io::StDtype::BF16, ts[i].shape,
                      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(d.data()), d.size() * 2)});
      weight_map[ts[i].name] = shard_name(s);
      params += static_cast<int64_t>(d.size());
      bytes += static_cast<int64_t>(d.size()) * 2;
    }
    io::save_safetensors((fs::path(out) / shard_name(s)).string(), std::move(refs), {{"format", "pt"}});
    on_shard(s + 1, shards);
  }
  const nlohmann::json index = {{"metadata", {{"total_size", bytes}}}, {"weight_map", weight_map}};
  io::atomic_write((fs::path(out) / "model.safetensors.index.json").string(), std::string_view(index.dump(2) + "\n"));
  return params;
}

}  // namespace distill::models
