// 4-bit checkpoints at the model level (tests/golden/nf4/qwen3_bnb: the tiny Qwen3 loaded by transformers 5.24
// with BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute bf16) and written by save_pretrained; see
// tools/golden/nf4.py):
//   - it loads as a Transformer, and its bf16 logits follow bitsandbytes' (logits_bnb) within the bf16 model
//     tolerance of the model tests;
//   - quantizing the bf16 checkpoint on load gives the very bytes transformers stored (packed codes, absmax,
//     nested absmax, offset), and `distill quantize` (quantize_checkpoint) writes a model.safetensors
//     byte-identical to transformers' and a config.json with its quantization_config;
//   - a merged export of a 4-bit model with no adapter is the dequantized weights in bf16.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "distill/models/export.hpp"
#include "distill/models/qwen3.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::models;
namespace fs = std::filesystem;

using test::TempDir;

namespace {

std::string bnb_dir() { return test::golden_path("nf4/qwen3_bnb"); }
std::string tiny_dir() { return test::golden_path("models/qwen3_tiny"); }

std::string bytes_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("a transformers-saved bitsandbytes NF4 checkpoint loads and runs like bitsandbytes") {
  const auto m = Transformer<qwen3::kFamily, bf16>::load(bnb_dir());
  for (const auto& b : m.weights().blocks) CHECK(b.q.quantized());
  CHECK(!m.weights().blocks[0].q_norm.requires_grad());
  const io::SafetensorsFile ref = io::SafetensorsFile::open(bnb_dir() + "/reference.safetensors");
  const Tensor<int64_t> prompt = ref.load<int64_t>("prompt");
  auto ids = Tensor<int32_t>::empty({1, prompt.numel()});
  for (int64_t i = 0; i < prompt.numel(); ++i) ids(0, i) = static_cast<int32_t>(prompt.data()[i]);
  autograd::NoGradGuard ng;
  const Tensor<float> got = m.forward(ids).value().cast<float>().reshape({prompt.numel(), -1});
  const Tensor<float> want = ref.load<float>("logits_bnb");
  double err = 0, big = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got.data()[i]) - want.data()[i]));
    big = std::max(big, std::abs(static_cast<double>(want.data()[i])));
  }
  MESSAGE("bf16 logits vs bitsandbytes: max |diff| / max |logit| = " << err / big);
  CHECK(err / big < 0.03);  // the bf16 tolerance of test_models_transformer.cpp (attention rounding points)
}

TEST_CASE("quantizing on load and `distill quantize` reproduce transformers' 4-bit bytes") {
  LoadOptions lo;
  lo.quantize = true;
  const auto ours = Transformer<qwen3::kFamily, bf16>::load(tiny_dir(), "model", lo);
  const auto theirs = Transformer<qwen3::kFamily, bf16>::load(bnb_dir());
  for (size_t l = 0; l < ours.weights().blocks.size(); ++l)
    for (Role r : kProjectionRoles) {
      CAPTURE(l);
      const quant::Quant4& a = *ours.weights().blocks[l].proj(r).q4;
      const quant::Quant4& b = *theirs.weights().blocks[l].proj(r).q4;
      CHECK(a.packed == b.packed);
      CHECK(a.absmax_q == b.absmax_q);
      CHECK(a.nested_absmax == b.nested_absmax);
      CHECK(a.nested_offset == b.nested_offset);
      CHECK(a.dtype == b.dtype);
    }
  TempDir d;
  CHECK(quantize_checkpoint(tiny_dir(), (d.path / "q").string()) == 21);
  CHECK(bytes_of(d.path / "q" / "model.safetensors") == bytes_of(fs::path(bnb_dir()) / "model.safetensors"));
  const auto cfg = nlohmann::json::parse(std::ifstream(d.path / "q" / "config.json"));
  const auto want = nlohmann::json::parse(std::ifstream(fs::path(bnb_dir()) / "config.json"));
  CHECK(cfg.at("quantization_config") == want.at("quantization_config"));
  CHECK(fs::exists(d.path / "q" / "generation_config.json"));
  CHECK_THROWS_WITH_AS(quantize_checkpoint(bnb_dir(), (d.path / "q2").string()), doctest::Contains("already quantized"),
                       Error);
  CHECK_THROWS_WITH_AS(quantize_checkpoint(tiny_dir(), tiny_dir()), doctest::Contains("is the source checkpoint"),
                       Error);
}

TEST_CASE("export_merged of a 4-bit model writes its dequantized weights in bf16 (adapters merged)") {
  const auto m = Transformer<qwen3::kFamily, float>::load(bnb_dir());
  TempDir d;
  export_merged(m, bnb_dir(), (d.path / "m").string());
  const auto back = Transformer<qwen3::kFamily, float>::load((d.path / "m").string());
  CHECK(!back.weights().blocks[1].down.quantized());
  const Tensor<float> want = m.weights().blocks[1].down.dense_weight();
  const Tensor<float> got = back.weights().blocks[1].down.weight.value();
  for (int64_t i = 0; i < want.numel(); ++i) CHECK(got.data()[i] == want.data()[i]);  // bf16 values, exact
  const auto cfg = nlohmann::json::parse(std::ifstream(d.path / "m" / "config.json"));
  CHECK(!cfg.contains("quantization_config"));
}
