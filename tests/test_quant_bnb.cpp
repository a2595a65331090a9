// bitsandbytes / transformers serialization (include/distill/quant/bnb.hpp) against a checkpoint transformers
// 5.24 + bitsandbytes 0.50.2 wrote on the CPU (tests/golden/nf4/qwen3_bnb, tools/golden/nf4.py): the packed
// quant_state JSON byte for byte, the dequantized weights bit for bit, the whole model.safetensors rebuilt from
// the bf16 checkpoint with our quantizer byte for byte, config.json's quantization_config, and strict errors
// for malformed 4-bit weights.
#include <doctest/doctest.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/io/safetensors.hpp"
#include "distill/quant/bnb.hpp"
#include "distill/quant/nf4.hpp"
#include "shared_data.hpp"

using namespace distill;
using namespace distill::quant;
using nlohmann::json;

namespace {

const std::string& bnb_dir() {
  static const std::string d = test::golden_path("nf4/qwen3_bnb");
  return d;
}
json read_json(const std::string& p) { return json::parse(std::ifstream(p)); }
const json& reference() {
  static const json r = read_json(bnb_dir() + "/reference.json");
  return r;
}
const json& cases_meta() {
  static const json r = read_json(test::golden_path("nf4/cases.json"));
  return r;
}

std::string fnv1a64(const void* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string str(std::span<const uint8_t> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// An in-memory safetensors file of raw tensors, editable, and load_bnb over it.
struct MemTensor {
  io::StDtype dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
using MemFile = std::map<std::string, MemTensor>;

Quant4 load_mem(const MemFile& m, const std::string& weight = "w.weight") {
  std::vector<io::TensorRef> refs;
  for (const auto& [name, t] : m) refs.push_back({name, t.dtype, t.shape, std::span<const uint8_t>(t.bytes)});
  const auto bytes = io::serialize_safetensors(refs);
  const auto h = io::parse_safetensors(bytes, "mem.safetensors");
  return load_bnb(h, bytes, "mem.safetensors", weight);
}

MemFile mem_of(const Quant4& q, const std::string& weight = "w.weight") {
  io::SafetensorsWriter w;
  add_bnb_tensors(w, weight, q);
  const auto bytes = w.serialize();
  const auto h = io::parse_safetensors(bytes, "written");
  MemFile m;
  for (const auto& t : h.tensors) {
    const auto b = std::span<const uint8_t>(bytes).subspan(h.data_start + t.begin, t.nbytes());
    m[t.name] = {t.dtype, t.shape, {b.begin(), b.end()}};
  }
  return m;
}

std::vector<uint8_t> f32_bytes(std::vector<float> v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}
std::vector<uint8_t> text_bytes(const std::string& s) { return {s.begin(), s.end()}; }

Quant4 small_quant(QuantType t, bool dq) {
  std::vector<float> x(8 * 9);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<bf16>(std::sin(0.7 * i) * 0.3));
  return quantize_4bit(x.data(), {8, 9}, t, 32, dq);
}

}  // namespace

TEST_CASE("bnb: Python float repr (json.dumps of nested_offset)") {
  int n = 0;
  for (const auto& e : cases_meta()["float_repr"]) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(std::stoul(e[0].get<std::string>(), nullptr, 16)));
    CHECK(quant::detail::python_float_repr(static_cast<double>(f)) == e[1].get<std::string>());
    ++n;
  }
  CHECK(n >= 40);
  CHECK(quant::detail::python_float_repr(1e16) == "1e+16");
  CHECK(quant::detail::python_float_repr(-1e-5) == "-1e-05");
  CHECK(quant::detail::python_float_repr(123.0) == "123.0");
}

TEST_CASE("bnb: quant_state_json is byte-equal to bitsandbytes' packed quant_state") {
  // Every Linear4bit of the transformers-saved checkpoint.
  const auto ck = io::Checkpoint::open(bnb_dir());
  int n = 0;
  for (const auto& [module, info] : reference()["linear4bit"].items()) {
    const std::string w = module + ".weight";
    CAPTURE(w);
    REQUIRE(is_bnb_quantized(ck, w));
    const Quant4 q = load_bnb(ck, w);
    CHECK(q.nested);
    CHECK(q.shape == info["shape"].get<std::vector<int64_t>>());
    CHECK(quant_state_json(q) == str(ck.bytes(quant_state_key(w, QuantType::Nf4))));
    ++n;
  }
  CHECK(n == 21);
  CHECK_FALSE(is_bnb_quantized(ck, "model.embed_tokens.weight"));
  CHECK_FALSE(is_bnb_quantized(ck, "lm_head.weight"));
  // The fixture variants (FP4, no double quant, f32/bf16 dtypes, 1-D shapes), from our own quantizer.
  const auto cases = io::SafetensorsFile::open(test::golden_path("nf4/cases.safetensors"));
  int m = 0;
  for (const auto& c : cases_meta()["cases"]) {
    const auto x = cases.load<float>(c["name"].get<std::string>() + ".input").to_vector();
    const std::string dt = c["dtype"];
    const io::StDtype dtype = dt == "bfloat16" ? io::StDtype::BF16 : io::StDtype::F32;
    for (const auto& v : c["variants"]) {
      const Quant4 q = quantize_4bit(x.data(), c["shape"].get<std::vector<int64_t>>(),
                                     v["quant_type"] == "nf4" ? QuantType::Nf4 : QuantType::Fp4, c["blocksize"],
                                     v["double_quant"], dtype);
      CHECK(quant_state_json(q) == v["quant_state_json"].get<std::string>());
      ++m;
    }
  }
  CHECK(m >= 20);
}

TEST_CASE("bnb: load_bnb reproduces bitsandbytes' dequantized weights exactly") {
  const auto ck = io::Checkpoint::open(bnb_dir());
  const auto ref = io::SafetensorsFile::open(bnb_dir() + "/reference.safetensors");
  for (const auto& [module, info] : reference()["linear4bit"].items()) {
    CAPTURE(module);
    const Quant4 q = load_bnb(ck, module + ".weight");
    const auto f = dequantize_4bit<float>(q);
    const auto b = dequantize_4bit<bf16>(q);
    CHECK(fnv1a64(f.data(), f.numel() * 4) == info["fnv1a64_f32"].get<std::string>());
    CHECK(fnv1a64(b.data(), b.numel() * 2) == info["fnv1a64_bf16"].get<std::string>());
    if (ref.find("dequant_f32." + module)) {
      const auto want = ref.bytes("dequant_f32." + module);
      REQUIRE(want.size() == static_cast<size_t>(f.numel()) * 4);
      CHECK(std::memcmp(want.data(), f.data(), want.size()) == 0);
    }
  }
}

TEST_CASE("bnb: quantizing the bf16 checkpoint rebuilds transformers' model.safetensors byte for byte") {
  const auto bf16_ck = io::Checkpoint::open(test::golden_path("models/qwen3_tiny"));
  const auto saved = io::SafetensorsFile::open(bnb_dir() + "/model.safetensors");
  io::SafetensorsWriter w;
  for (const auto* t : bf16_ck.tensors()) {
    const std::string module = t->name.substr(0, t->name.size() - std::string(".weight").size());
    if (reference()["linear4bit"].contains(module)) {
      const Quant4 q = quantize_4bit(bf16_ck.load<bf16>(t->name), QuantType::Nf4, 64, true);
      // Per weight: the same names, dtypes, shapes and bytes as the transformers-saved file.
      const MemFile ours = mem_of(q, t->name);
      CHECK(ours.size() == 6);
      for (const auto& [name, mt] : ours) {
        CAPTURE(name);
        const io::TensorInfo* s = saved.find(name);
        REQUIRE(s != nullptr);
        CHECK(s->dtype == mt.dtype);
        CHECK(s->shape == mt.shape);
        const auto sb = saved.bytes(*s);
        CHECK(std::vector<uint8_t>(sb.begin(), sb.end()) == mt.bytes);
      }
      add_bnb_tensors(w, t->name, q);
    } else {
      const auto b = bf16_ck.bytes(t->name);
      w.add_bytes(t->name, t->dtype, t->shape, {b.begin(), b.end()});
    }
  }
  w.set_metadata("format", "pt");
  const auto ours = w.serialize();
  std::ifstream in(bnb_dir() + "/model.safetensors", std::ios::binary);
  const std::vector<uint8_t> theirs((std::istreambuf_iterator<char>(in)), {});
  CHECK(ours.size() == theirs.size());
  CHECK(ours == theirs);
}

TEST_CASE("bnb: add_bnb_tensors -> load_bnb round trip, every variant") {
  for (const QuantType t : {QuantType::Nf4, QuantType::Fp4})
    for (const bool dq : {false, true}) {
      const Quant4 q = small_quant(t, dq);
      const MemFile m = mem_of(q);
      CHECK(m.size() == (dq ? 6u : 4u));
      CHECK(m.at("w.weight").shape == std::vector<int64_t>{36, 1});
      CHECK(m.at("w.weight.absmax").dtype == (dq ? io::StDtype::U8 : io::StDtype::F32));
      CHECK(m.count(dq ? "w.weight.nested_quant_map" : "w.weight.quant_map") == 1);
      CHECK(m.count(std::string("w.weight.quant_state.bitsandbytes__") + quant_type_name(t)) == 1);
      const Quant4 r = load_mem(m);
      CHECK(r.type == t);
      CHECK(r.packed == q.packed);
      CHECK(r.absmax == q.absmax);
      CHECK(r.absmax_q == q.absmax_q);
      CHECK(r.nested_absmax == q.nested_absmax);
      CHECK(r.nested_offset == q.nested_offset);
      CHECK(r.shape == q.shape);
      CHECK(r.dtype == q.dtype);
      CHECK(quant_state_json(r) == quant_state_json(q));
    }
}

TEST_CASE("bnb: quantization_config as transformers writes it") {
  for (const auto& e : cases_meta()["quantization_configs"]) {
    const json got = bnb_quantization_config(e["quant_type"] == "nf4" ? QuantType::Nf4 : QuantType::Fp4,
                                             e["double_quant"], e["compute_dtype"]);
    CHECK(got == e["config"]);
    CHECK(got.dump(2) == e["config"].dump(2));
  }
  const json saved = read_json(bnb_dir() + "/config.json")["quantization_config"];
  CHECK(bnb_quantization_config(QuantType::Nf4, true) == saved);
  CHECK_THROWS_WITH_AS(bnb_quantization_config(QuantType::Nf4, true, "int8"), doctest::Contains("\"int8\""), Error);
}

TEST_CASE("bnb: malformed 4-bit weights give clear errors") {
  const MemFile good = mem_of(small_quant(QuantType::Nf4, true));
  const MemFile flat = mem_of(small_quant(QuantType::Fp4, false));
  const std::string qs = "w.weight.quant_state.bitsandbytes__nf4";
  const std::string json_good = str(good.at(qs).bytes);
  load_mem(good);
  load_mem(flat);
  auto expect = [](const MemFile& base, const std::function<void(MemFile&)>& edit, const char* needle) {
    MemFile m = base;
    edit(m);
    CHECK_THROWS_WITH_AS(load_mem(m), doctest::Contains(needle), Error);
  };
  auto with_json = [&](const std::string& j) {
    return [=](MemFile& m) {
      m[qs].bytes = text_bytes(j);
      m[qs].shape = {static_cast<int64_t>(j.size())};
    };
  };
  auto replace = [&](std::string from, std::string to) {
    std::string j = json_good;
    const size_t p = j.find(from);
    REQUIRE(p != std::string::npos);
    return with_json(j.replace(p, from.size(), to));
  };
  // Missing pieces.
  expect(
      good, [](MemFile& m) { m.erase("w.weight.absmax"); }, "tensor \"w.weight.absmax\": missing");
  expect(
      good, [](MemFile& m) { m.erase("w.weight.nested_absmax"); }, "\"w.weight.nested_absmax\": missing");
  expect(
      good, [](MemFile& m) { m.erase("w.weight.quant_map"); }, "\"w.weight.quant_map\": missing");
  expect(
      good, [](MemFile& m) { m.erase("w.weight"); }, "tensor \"w.weight\": missing");
  expect(
      good, [&](MemFile& m) { m.erase(qs); }, "no packed quant_state");
  // Wrong dtypes and sizes.
  expect(
      good,
      [](MemFile& m) {
        m["w.weight.absmax"] = {io::StDtype::F32, {3}, f32_bytes({1, 2, 3})};
      },
      "\"w.weight.absmax\": dtype F32, expected U8");
  expect(
      flat, [](MemFile& m) { m["w.weight.absmax"].dtype = io::StDtype::I32; }, "dtype I32, expected F32");
  expect(
      good,
      [](MemFile& m) {
        m["w.weight.absmax"] = {io::StDtype::U8, {4}, {1, 2, 3, 4}};
      },
      "shape [4], expected [3]");
  expect(
      good,
      [](MemFile& m) {
        m["w.weight.nested_absmax"] = {io::StDtype::F32, {2}, f32_bytes({1, 2})};
      },
      "shape [2], expected [1]");
  expect(
      good,
      [](MemFile& m) {
        m["w.weight"].bytes.pop_back(), m["w.weight"].shape = {35, 1};
      },
      "shape [8, 9] needs 36 bytes");
  expect(
      good, [](MemFile& m) { m["w.weight"].shape = {36}; }, "as [bytes / itemsize, 1]");
  expect(
      good,
      [](MemFile& m) {
        m["w.weight.nested_quant_map"].shape = {64, 4};
      },
      "shape [64, 4], expected [256]");
  expect(
      good, [](MemFile& m) { m["w.weight.quant_map"].bytes[0] ^= 1; }, "differs from bitsandbytes' nf4 table");
  expect(
      good, [&](MemFile& m) { m[qs].dtype = io::StDtype::I8; }, "must be a 1-D U8 tensor");
  // Bad JSON.
  expect(good, with_json("{\"quant_type\": \"nf4\""), "quant_state JSON is not valid JSON");
  expect(good, with_json("[1, 2]"), "quant_state JSON must be an object");
  expect(good, replace("\"blocksize\": 32", "\"blocksize\": 32, \"blocksize\": 32"), "has the key \"blocksize\" twice");
  expect(good, replace("\"quant_type\": \"nf4\"", "\"quant_type\": \"int4\""), "unknown quant_type \"int4\"");
  expect(good, replace("\"quant_type\": \"nf4\"", "\"quant_type\": \"fp4\""), "but its key names the other type");
  expect(good, replace("\"blocksize\": 32", "\"blocksize\": 48"), "blocksize 48 is not one of");
  expect(good, replace("\"blocksize\": 32", "\"blocksize\": 32.0"), "blocksize 32.0 is not one of");
  expect(good, replace("\"dtype\": \"bfloat16\"", "\"dtype\": \"int8\""), "dtype \"int8\" is not bfloat16");
  expect(good, replace("\"shape\": [8, 9]", "\"shape\": null"), "shape must be a non-empty array");
  expect(good, replace("\"shape\": [8, 9]", "\"shape\": [8, -9]"), "shape extents must be non-negative integers");
  expect(good, replace("\"shape\": [8, 9]", "\"shape\": [9, 9]"), "needs 41 bytes");
  expect(good, replace("\"shape\": [8, 9]", "\"shape\": [8, 9], \"extra\": 1"), "unexpected key \"extra\"");
  expect(good, replace(", \"nested_dtype\": \"float32\"", ""), "only some of nested_blocksize");
  expect(good, replace("\"nested_dtype\": \"float32\"", "\"nested_dtype\": \"float16\""), "nested_dtype \"float16\"");
  expect(good, replace("\"nested_blocksize\": 256", "\"nested_blocksize\": 0"), "nested_blocksize 0");
  expect(good, replace("\"nested_offset\": ", "\"nested_offset\": \"x\", \"y\": "), "unexpected key \"y\"");
  expect(good, replace("\"quant_type\": \"nf4\", ", ""), "lacks \"quant_type\"");
  // Inconsistent tensor sets.
  expect(
      good, [&](MemFile& m) { m["w.weight.quant_state.bitsandbytes__fp4"] = m[qs]; }, "has both");
  expect(
      good,
      [](MemFile& m) {
        m["w.weight.bias_absmax"] = {io::StDtype::F32, {1}, f32_bytes({1})};
      },
      "tensor \"w.weight.bias_absmax\": unexpected key under the 4-bit weight");
  expect(
      flat,
      [](MemFile& m) {
        m["w.weight.nested_absmax"] = {io::StDtype::F32, {1}, f32_bytes({1})};
      },
      "present, but the quant_state has no nested_* keys");
  expect(
      good,
      [](MemFile& m) {
        m["w.weight.nested_absmax"] = {io::StDtype::F32, {1}, f32_bytes({NAN})};
      },
      "nested_absmax[0]");
  // Errors name the file and the tensor through the Checkpoint path too.
  const auto ck = io::Checkpoint::open(bnb_dir());
  CHECK_THROWS_WITH_AS(load_bnb(ck, "lm_head.weight"), doctest::Contains("\"lm_head.weight\": no packed quant_state"),
                       Error);
}
