// Transformer<Spec, T, Cuda> against the CPU model and Hugging Face on the tiny checkpoints of
// tests/golden/models/: full-forward logits (f32 within 1e-4 of the CPU's relative to the largest logit; bf16
// within the bf16 tolerance of HF's bf16 logits), KV-cache decoding through the ring of Gemma3's sliding layers,
// and greedy generations equal to transformers' (f32). Compiled by nvcc (the element-wise expressions become
// kernels here); skipped without a GPU.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/generate/generate.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/transformer.hpp"

using namespace distill;
using namespace distill::models;

namespace {

std::string model_dir(const std::string& name) {
  return std::string(DISTILL_SOURCE_DIR) + "/tests/golden/models/" + name;
}

double rel_diff(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.numel() == b.numel());
  double m = 0, r = 1e-30;
  for (int64_t i = 0; i < a.numel(); ++i) {
    m = std::max(m, static_cast<double>(std::abs(a.flat(i) - b.flat(i))));
    r = std::max(r, static_cast<double>(std::abs(b.flat(i))));
  }
  return m / r;
}

template <class T>
Tensor<float> host_f32(const Tensor<T, Cuda>& t) {
  if constexpr (std::is_same_v<T, float>)
    return t.template to<Cpu>();
  else
    return t.template cast<float>().template to<Cpu>();
}

template <TransformerSpec Spec>
void check(const std::string& name) {
  autograd::NoGradGuard no_grad;
  const auto ref = io::SafetensorsFile::open(model_dir(name) + "/reference.safetensors");
  const auto js = nlohmann::json::parse(std::ifstream(model_dir(name) + "/reference.json"));
  const auto cpu = Transformer<Spec, float>::load(model_dir(name));
  const auto gpu = Transformer<Spec, float, Cuda>::load(model_dir(name));
  const auto gpu16 = Transformer<Spec, bf16, Cuda>::load(model_dir(name));
  for (size_t i = 0; i < js["prompts"].size(); ++i) {
    CAPTURE(i);
    const auto p = js["prompts"][i].get<std::vector<int32_t>>();
    const auto ids = Tensor<int32_t>::from_vector({1, static_cast<int64_t>(p.size())}, p);
    const auto want = cpu.forward(ids).value();
    const double d32 = rel_diff(host_f32(gpu.forward(ids).value()), want);
    const double d16 =
        rel_diff(host_f32(gpu16.forward(ids).value()), ref.load<float>("logits_bf16." + std::to_string(i)));
    MESSAGE(name << " prompt " << i << ": Cuda f32 vs CPU " << d32 << ", Cuda bf16 vs HF bf16 " << d16);
    CHECK(d32 <= 1e-4);
    CHECK(d16 <= 3e-2);
    // Cached decoding one token at a time equals the full forward at every position.
    auto cache = gpu.make_cache(1, static_cast<int64_t>(p.size()));
    const int64_t row = 0;
    double worst = 0;
    for (size_t t = 0; t < p.size(); ++t) {
      const auto one = Tensor<int32_t>::from_vector({1, 1}, {p[t]});
      const auto l = host_f32(gpu.step(cache, one, std::span<const int64_t>(&row, 1)));
      for (int64_t v = 0; v < l.dim(1); ++v)
        worst = std::max(worst, static_cast<double>(std::abs(l(0, v) - want(0, static_cast<int64_t>(t), v))));
    }
    CHECK(worst <= 1e-3);
  }
  for (const auto& g : js["generate"]) {
    if (g["dtype"] != "f32") continue;
    generate::GenerateOptions o;
    o.max_new_tokens = g["max_new_tokens"].get<int64_t>();
    o.stop_ids = g["eos_token_id"].get<std::vector<int64_t>>();
    const auto prompt = js["prompts"][g["prompt"].get<size_t>()].get<std::vector<int32_t>>();
    const auto r = generate::generate(gpu, {prompt}, o);
    CHECK(r.rows[0].tokens == g["output"].get<std::vector<int32_t>>());
  }
}

}  // namespace

TEST_CASE("cuda: qwen3 tiny matches the CPU and transformers") { check<qwen3::kFamily>("qwen3_tiny"); }
TEST_CASE("cuda: gemma3 tiny (sliding window ring) matches the CPU and transformers") {
  check<gemma3::kFamily>("gemma3_tiny");
}
TEST_CASE("cuda: gemma3 tiny with a final softcap matches") { check<gemma3::kFamily>("gemma3_tiny_softcap"); }
