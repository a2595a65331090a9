// Transformer<Spec, T, Cuda> against the CPU model and Hugging Face on the tiny checkpoints of
// tests/golden/models/: full-forward logits (f32 within 1e-4 of the CPU's relative to the largest logit; bf16
// within the bf16 tolerance of HF's bf16 logits), KV-cache decoding through the ring of Gemma3's sliding layers,
// and greedy generations equal to transformers' (f32); the same models quantized to NF4 on load (QLoRA's base)
// against the CPU's NF4 model, prefill and one-token decode (kernels/nf4.cu). Compiled by nvcc (the element-wise
// expressions become kernels here); skipped without a GPU.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/generate/generate.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/models/adapter.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/transformer.hpp"
#include "distill/train/loss.hpp"

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

// Cached decoding one token at a time against the full forward's logits `want` [1, T, V]: the largest difference.
template <TransformerSpec Spec>
double decode_worst(const Transformer<Spec, float, Cuda>& gpu, const std::vector<int32_t>& p,
                    const Tensor<float>& want) {
  auto cache = gpu.make_cache(1, static_cast<int64_t>(p.size()));
  const int64_t row = 0;
  double worst = 0;
  for (size_t t = 0; t < p.size(); ++t) {
    const auto one = Tensor<int32_t>::from_vector({1, 1}, {p[t]});
    const auto l = host_f32(gpu.step(cache, one, std::span<const int64_t>(&row, 1)));
    for (int64_t v = 0; v < l.dim(1); ++v)
      worst = std::max(worst, static_cast<double>(std::abs(l(0, v) - want(0, static_cast<int64_t>(t), v))));
  }
  return worst;
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
    CHECK(decode_worst(gpu, p, want) <= 1e-3);
  }
  // NF4 on load: the same 4-bit weights on both devices (bit-identical dequantization), so the GPU's f32 logits
  // match the CPU's NF4 model like the dense ones do; decoding runs the GEMV, prefill of more than 16 tokens the
  // dequantize + cuBLASLt path.
  {
    const LoadOptions q4{.quantize = true};
    const auto cpu4 = Transformer<Spec, float>::load(model_dir(name), "model", q4);
    const auto gpu4 = Transformer<Spec, float, Cuda>::load(model_dir(name), "model", q4);
    for (size_t i = 0; i < js["prompts"].size(); ++i) {
      const auto p = js["prompts"][i].get<std::vector<int32_t>>();
      const auto ids = Tensor<int32_t>::from_vector({1, static_cast<int64_t>(p.size())}, p);
      const auto want = cpu4.forward(ids).value();
      const double d = rel_diff(host_f32(gpu4.forward(ids).value()), want);
      MESSAGE(name << " NF4 prompt " << i << " (" << p.size() << " tokens): Cuda f32 vs CPU " << d);
      CHECK(d <= 1e-4);
      CHECK(decode_worst(gpu4, p, want) <= 1e-3);
    }
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

// QLoRA on the GPU: the model quantized to NF4 on load with LoRA adapters on every projection (same init, same
// non-zero B on both devices); the causal-LM loss of a two-row batch and every adapter gradient against the CPU.
template <TransformerSpec Spec>
void check_qlora(const std::string& name) {
  const LoadOptions q4{.quantize = true};
  auto cpu = Transformer<Spec, float>::load(model_dir(name), "model", q4);
  auto gpu = Transformer<Spec, float, Cuda>::load(model_dir(name), "model", q4);
  nn::LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  REQUIRE(attach_lora(cpu, lc) == attach_lora(gpu, lc));
  auto& cb = cpu.mutable_weights().blocks;
  auto& gb = gpu.mutable_weights().blocks;
  for (size_t l = 0; l < cb.size(); ++l)
    for (Role r : kProjectionRoles) {
      auto& a = *cb[l].proj(r).lora;
      auto& g = *gb[l].proj(r).lora;
      a.B = Var<float>::param(Tensor<float>::uniform(a.B.shape(), 99 + 8 * l + static_cast<int>(r), -0.05, 0.05));
      g.B = Var<float, Cuda>::param(a.B.value().template to<Cuda>());
      REQUIRE(rel_diff(host_f32(g.A.value()), a.A.value()) == 0);
    }
  const auto js = nlohmann::json::parse(std::ifstream(model_dir(name) + "/reference.json"));
  auto p = js["prompts"][0].get<std::vector<int32_t>>();
  const int64_t T = static_cast<int64_t>(p.size());
  std::vector<int32_t> rows(p);
  rows.insert(rows.end(), p.rbegin(), p.rend());
  const auto ids = Tensor<int32_t>::from_vector({2, T}, rows);
  auto labels = ids.clone();
  labels(0, 0) = -100;
  labels(1, 1) = -100;
  const auto mask = Tensor<int32_t>::full({2, T}, 1);
  const int64_t n = train::count_targets(labels);
  auto lcpu = train::causal_lm_loss(cpu, ids, labels, mask, n);
  auto lgpu = train::causal_lm_loss(gpu, ids, labels, mask, n);
  const double a = lcpu.value().data()[0], b = host_f32(lgpu.value()).data()[0];
  MESSAGE(name << " QLoRA loss: CPU " << a << ", Cuda " << b);
  CHECK(std::abs(a - b) <= 1e-5 * std::abs(a));
  lcpu.backward();
  lgpu.backward();
  const auto pc = named_lora_parameters(cpu);
  const auto pg = named_lora_parameters(gpu);
  REQUIRE(pc.size() == pg.size());
  double worst = 0;
  for (size_t i = 0; i < pc.size(); ++i)
    worst = std::max(worst, rel_diff(host_f32(pg[i].second.grad()), pc[i].second.grad()));
  MESSAGE(name << " QLoRA adapter gradients: worst relative difference " << worst);
  CHECK(worst <= 1e-4);
}

}  // namespace

TEST_CASE("cuda: QLoRA (NF4 on load + LoRA) loss and adapter gradients match the CPU") {
  check_qlora<qwen3::kFamily>("qwen3_tiny");
  check_qlora<gemma3::kFamily>("gemma3_tiny");
}

TEST_CASE("cuda: qwen3 tiny matches the CPU and transformers") { check<qwen3::kFamily>("qwen3_tiny"); }
TEST_CASE("cuda: gemma3 tiny (sliding window ring) matches the CPU and transformers") {
  check<gemma3::kFamily>("gemma3_tiny");
}
TEST_CASE("cuda: gemma3 tiny with a final softcap matches") { check<gemma3::kFamily>("gemma3_tiny_softcap"); }
