// Random-weight checkpoints with the recipe models' real shapes (models/random.hpp) and the KV-cache sizing of
// GPU generation (models/kv_cache.hpp). The built-in configs are checked against the files downloaded from the
// hub (tests/golden/configs/hub/), the tensor lists against the published parameter counts (Qwen3-4B-Thinking-
// 2507: 4,022,468,096; gemma-3-1b-it: 999,885,952, both from the models' hub pages), and small written
// checkpoints load through the same strict loader as real ones.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/core/parallel.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/kv_cache.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/random.hpp"
#include "distill/models/transformer.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::models;
using nlohmann::json;
namespace fs = std::filesystem;
using test::TempDir;

namespace {

io::ModelConfig config_of(const json& j) { return io::parse_model_config(j, "preset config.json"); }

int64_t param_count(const std::vector<RandomTensor>& ts) {
  int64_t n = 0;
  for (const auto& t : ts) {
    int64_t k = 1;
    for (int64_t d : t.shape) k *= d;
    n += k;
  }
  return n;
}

std::vector<uint8_t> file_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct Stats {
  double mean = 0, std = 0, max_abs = 0;
};
Stats stats(const Tensor<float>& t) {
  Stats s;
  for (int64_t i = 0; i < t.numel(); ++i) s.mean += t.flat(i);
  s.mean /= static_cast<double>(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double d = t.flat(i) - s.mean;
    s.std += d * d;
    s.max_abs = std::max(s.max_abs, std::abs(static_cast<double>(t.flat(i))));
  }
  s.std = std::sqrt(s.std / static_cast<double>(t.numel()));
  return s;
}

}  // namespace

TEST_CASE("the built-in configs are the hub's config.json files") {
  for (const char* name : {"qwen3-4b-thinking-2507", "gemma-3-1b-it"}) {
    CAPTURE(name);
    const json hub = json::parse(std::ifstream(test::golden_path(std::string("configs/hub/") + name + ".json")));
    CHECK(preset_config(name) == hub);
  }
  CHECK_THROWS_WITH_AS(preset_config("llama"), doctest::Contains("unknown model preset"), Error);
}

TEST_CASE("full-size tensor lists: the exact specs resolve and the parameter counts are the published ones") {
  const io::ModelConfig q = config_of(preset_config("qwen3-4b-thinking-2507"));
  CHECK_NOTHROW(resolve<qwen3::k4B_Thinking_2507>(q, "qwen3"));
  CHECK(param_count(checkpoint_tensors(q)) == 4022468096LL);
  const io::ModelConfig g = config_of(preset_config("gemma-3-1b-it"));
  CHECK_NOTHROW(resolve<gemma3::k1B_it>(g, "gemma3"));
  CHECK(param_count(checkpoint_tensors(g)) == 999885952LL);
}

TEST_CASE("KV-cache bytes per row and the rows that fit in free memory") {
  // Qwen3-4B: 36 full-attention layers x (k, v) x 8 KV heads x 128 = 73,728 values per position.
  const ModelDims q = resolve<qwen3::kFamily>(config_of(preset_config("qwen3-4b-thinking-2507")), "q");
  CHECK(kv_cache_row_bytes(q, 32768, 2) == 32768LL * 36 * 2 * 8 * 128 * 2);
  // gemma-3-1b: 22 sliding layers keep 512 positions, 4 full layers keep them all; 1 KV head x 256.
  const ModelDims g = resolve<gemma3::kFamily>(config_of(preset_config("gemma-3-1b-it")), "g");
  CHECK(kv_cache_row_bytes(g, 2048, 2) == (22LL * 512 + 4LL * 2048) * 2 * 256 * 2);
  CHECK(kv_cache_row_bytes(g, 100, 2) == 26LL * 100 * 2 * 256 * 2);  // shorter than the window
  // The bytes KvCache really allocates per row agree (a small model: 2 layers of the gemma pattern).
  ModelDims small = g;
  small.layer.resize(2);
  small.layers = 2;
  small.layer[1].sliding = false;
  const KvCache<bf16> cache(small, 3, 700);
  CHECK(cache.bytes() == 3 * kv_cache_row_bytes(small, 700, 2));
  // Sizing: with 123 GiB free (an H200 after Qwen3-4B's 8 GB of bf16 weights) and 1 GiB of headroom, rows of
  // 32k positions take 4,831,838,208 + 2 x 151,936 x 4 bytes each: 122 GiB / 4,833,053,696 B = 27.1 -> 27 rows.
  const int64_t GiB = int64_t{1} << 30;
  const KvPlan p = plan_kv_cache(q, 32768, 2, 123 * GiB, 1024);
  CHECK(p.row_bytes == 4831838208LL);
  CHECK(p.per_row_bytes == 4833053696LL);
  CHECK(p.rows == 27);
  CHECK(plan_kv_cache(q, 32768, 2, 123 * GiB, 8).rows == 8);  // capped by the request
  CHECK(plan_kv_cache(q, 32768, 2, 2 * GiB, 8).rows == 0);    // not even one row fits
  CHECK(plan_kv_cache(q, 32768, 2, GiB / 2, 8).budget_bytes == 0);
}

TEST_CASE("a written random checkpoint loads, runs, is deterministic and has the stated distribution") {
  TempDir t("random_model");
  RandomModelOptions o;
  o.seed = 7;
  o.layers = 1;
  o.vocab = 512;
  const int64_t n = write_random_checkpoint(preset_config("qwen3-4b-thinking-2507"), t / "q", o);
  const io::ModelConfig c = io::load_model_config(t / "q");
  CHECK(c.num_hidden_layers == 1);
  CHECK(c.vocab_size == 512);
  CHECK(c.hidden_size == 2560);
  const auto ck = io::Checkpoint::open(t / "q");
  CHECK(ck.num_shards() == 2);
  CHECK(ck.total_parameters() == n);
  CHECK(n == param_count(checkpoint_tensors(c)));
  const json index = json::parse(std::ifstream(t / "q/model.safetensors.index.json"));
  CHECK(index["metadata"]["total_size"].get<int64_t>() == 2 * n);

  // Uniform(-a, a) with std 0.02: a = 0.0346; the norms are the identity (Qwen3: weight 1).
  const Stats s = stats(ck.load<float>("model.layers.0.mlp.down_proj.weight"));
  CHECK(std::abs(s.mean) < 2e-4);
  CHECK(s.std == doctest::Approx(0.02).epsilon(0.01));
  CHECK(s.max_abs <= 0.02 * std::sqrt(3.0) * (1 + 1.0 / 128));
  CHECK(s.max_abs > 0.034);
  const Stats nq = stats(ck.load<float>("model.layers.0.self_attn.q_norm.weight"));
  CHECK(nq.mean == 1.0);
  CHECK(nq.std == 0.0);

  const auto m = Transformer<qwen3::kFamily, float>::load(t / "q");
  const auto logits = m.forward(Tensor<int32_t>::from_vector({1, 4}, {1, 2, 300, 511})).value();
  CHECK(logits.shape()[2] == 512);
  bool finite = true;
  for (int64_t i = 0; i < logits.numel(); ++i) finite = finite && std::isfinite(logits.flat(i));
  CHECK(finite);

  // The same seed gives the same bytes whatever the thread count; another seed differs.
  const int saved = max_threads();
  set_max_threads(1);
  write_random_checkpoint(preset_config("qwen3-4b-thinking-2507"), t / "q1", o);
  set_max_threads(saved);
  const std::string shard = "model-00002-of-00002.safetensors";
  CHECK(file_bytes(t / ("q/" + shard)) == file_bytes(t / ("q1/" + shard)));
  o.seed = 8;
  write_random_checkpoint(preset_config("qwen3-4b-thinking-2507"), t / "q8", o);
  CHECK(file_bytes(t / ("q/" + shard)) != file_bytes(t / ("q8/" + shard)));
}

TEST_CASE("a random gemma-3-1b keeps the layer pattern and (1 + w) norms at the identity") {
  TempDir t("random_gemma");
  RandomModelOptions o;
  o.layers = 6;
  o.vocab = 512;
  write_random_checkpoint(preset_config("gemma-3-1b-it"), t / "g", o);
  const io::ModelConfig c = io::load_model_config(t / "g");
  const ModelDims d = resolve<gemma3::kFamily>(c, "g");
  for (int64_t l = 0; l < 6; ++l) CHECK(d.layer[static_cast<size_t>(l)].sliding == (l != 5));
  CHECK(d.max_window() == 512);
  const auto ck = io::Checkpoint::open(t / "g");
  const Stats nm = stats(ck.load<float>("model.layers.3.pre_feedforward_layernorm.weight"));
  CHECK(nm.max_abs == 0.0);
  const auto m = Transformer<gemma3::kFamily, bf16>::load(t / "g");
  const auto logits = m.forward(Tensor<int32_t>::from_vector({1, 3}, {2, 10, 20})).value();
  CHECK(logits.shape()[2] == 512);
}
