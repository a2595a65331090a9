// 4-bit quantization (include/distill/quant/nf4.hpp) against pip bitsandbytes 0.50.2 on the CPU: the fixtures
// of tests/golden/nf4/cases.* (tools/golden/nf4.py) hold bnb's packed codes, absmax (f32, or u8 + nested absmax +
// offset), resolved scales and dequantized outputs for odd shapes, all-zero blocks, exact midpoints and
// blocksizes 32…4096. Quantize must match byte for byte, dequantize bit for bit; ref:: and the threaded paths
// must agree on random inputs; malformed Quant4s are rejected.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "distill/io/safetensors.hpp"
#include "distill/quant/nf4.hpp"
#include "shared_data.hpp"

using namespace distill;
using namespace distill::quant;
using nlohmann::json;

namespace {

struct Fixtures {
  io::SafetensorsFile file;
  json meta;
};

const Fixtures& fixtures() {
  static const Fixtures f{io::SafetensorsFile::open(test::golden_path("nf4/cases.safetensors")),
                          json::parse(std::ifstream(test::golden_path("nf4/cases.json")))};
  return f;
}

std::vector<uint8_t> raw(const std::string& name) {
  const auto b = fixtures().file.bytes(name);
  return {b.begin(), b.end()};
}
std::vector<float> f32s(const std::string& name) { return fixtures().file.load<float>(name).to_vector(); }
std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = std::bit_cast<uint32_t>(v[i]);
  return b;
}
template <size_t N>
std::vector<uint32_t> bits(const std::array<float, N>& v) {
  return bits(std::vector<float>(v.begin(), v.end()));
}

io::StDtype dtype_of(const std::string& torch_name) {
  if (torch_name == "bfloat16") return io::StDtype::BF16;
  if (torch_name == "float16") return io::StDtype::F16;
  REQUIRE(torch_name == "float32");
  return io::StDtype::F32;
}
QuantType type_of(const std::string& s) { return s == "nf4" ? QuantType::Nf4 : QuantType::Fp4; }

// A Quant4 assembled from bnb's own tensors (not from our quantizer).
Quant4 from_fixture(const json& c, const json& v) {
  const std::string p = c["name"].get<std::string>() + "." + v["name"].get<std::string>() + ".";
  Quant4 q;
  q.type = type_of(v["quant_type"]);
  q.blocksize = c["blocksize"];
  q.shape = c["shape"].get<std::vector<int64_t>>();
  q.dtype = dtype_of(c["dtype"]);
  q.packed = raw(p + "packed");
  q.code = code4(q.type);
  if (v["double_quant"]) {
    q.nested = true;
    q.absmax_q = raw(p + "absmax_q");
    q.nested_absmax = f32s(p + "nested_absmax");
    q.nested_offset = f32s(p + "nested_offset").at(0);
    q.nested_code = dynamic_map();
  } else {
    q.absmax = f32s(p + "absmax");
  }
  q.validate(p);
  return q;
}

void check_same_quant(const Quant4& a, const Quant4& b) {
  CHECK(a.packed == b.packed);
  CHECK(bits(a.absmax) == bits(b.absmax));
  CHECK(a.nested == b.nested);
  CHECK(a.absmax_q == b.absmax_q);
  CHECK(bits(a.nested_absmax) == bits(b.nested_absmax));
  CHECK(std::bit_cast<uint32_t>(a.nested_offset) == std::bit_cast<uint32_t>(b.nested_offset));
}

// The deterministic inputs of the torch_mean fixtures.
std::vector<float> mean_input(int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t u = ((static_cast<uint64_t>(i) * 2654435761ull + 12345ull) % (1ull << 32)) >> 8;
    x[static_cast<size_t>(i)] = static_cast<float>(static_cast<double>(u) / static_cast<double>(1 << 24));
  }
  return x;
}

std::vector<float> random_weights(std::mt19937_64& g, int64_t n, bool bf16_values) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale(-4.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  const float s = std::pow(10.0f, scale(g));
  for (auto& v : x) {
    v = nd(g) * s;
    if (bf16_values) v = static_cast<float>(static_cast<bf16>(v));
  }
  return x;
}

}  // namespace

TEST_CASE("quant: code tables are bitsandbytes' quant maps") {
  CHECK(bits(code4(QuantType::Nf4)) == bits(f32s("quant_map.nf4")));
  CHECK(bits(code4(QuantType::Fp4)) == bits(f32s("quant_map.fp4")));
  CHECK(bits(dynamic_map()) == bits(f32s("nested_quant_map")));
  CHECK(std::string(quant_type_name(QuantType::Nf4)) == "nf4");
  CHECK(std::string(quant_type_name(QuantType::Fp4)) == "fp4");
  // SPEC §6.1 spot values.
  CHECK(std::bit_cast<uint32_t>(code4(QuantType::Nf4)[1]) == 0xbf3239b1u);
  CHECK(code4(QuantType::Nf4)[7] == 0.0f);
}

TEST_CASE("quant: torch's f32 mean (double quant's offset) bit for bit") {
  for (const auto& e : fixtures().meta["torch_mean"]) {
    const int64_t n = e["n"];
    const auto x = mean_input(n);
    CAPTURE(n);
    CHECK(std::bit_cast<uint32_t>(quant::detail::torch_sum_f32(x.data(), n)) ==
          std::stoul(e["sum_bits"].get<std::string>(), nullptr, 16));
    CHECK(std::bit_cast<uint32_t>(quant::detail::torch_mean_f32(x.data(), n)) ==
          std::stoul(e["mean_bits"].get<std::string>(), nullptr, 16));
  }
}

TEST_CASE("quant: double quant's blockwise step at the lookup table's bin edges") {
  // bnb's CPU quantize_blockwise maps v/absmax2 through a 65536-entry table; these values sit within a few ulps
  // of the bin edges where the code changes, so the exact f32 rounding sequence decides every one of them.
  const auto x = f32s("lut_edges.input");
  const auto want_codes = raw("lut_edges.codes");
  const auto want_absmax = f32s("lut_edges.absmax");
  std::vector<uint8_t> codes(x.size());
  std::vector<float> absmax;
  for (size_t b = 0; b < x.size(); b += 256)
    absmax.push_back(
        quant::detail::quantize_nested_block(x.data() + b, std::min<int64_t>(256, x.size() - b), codes.data() + b));
  CHECK(codes == want_codes);
  CHECK(bits(absmax) == bits(want_absmax));
}

TEST_CASE("quant: quantize_4bit matches bitsandbytes byte for byte") {
  int variants = 0;
  for (const auto& c : fixtures().meta["cases"]) {
    const std::string name = c["name"];
    const auto shape = c["shape"].get<std::vector<int64_t>>();
    const io::StDtype dtype = dtype_of(c["dtype"]);
    const auto x = f32s(name + ".input");  // bf16 inputs upcast exactly
    for (const auto& v : c["variants"]) {
      CAPTURE(name);
      CAPTURE(v["name"].get<std::string>());
      const Quant4 want = from_fixture(c, v);
      const QuantType t = type_of(v["quant_type"]);
      const bool dq = v["double_quant"];
      const Quant4 q = quantize_4bit(x.data(), shape, t, c["blocksize"], dq, dtype);
      check_same_quant(q, want);
      CHECK(q.shape == want.shape);
      CHECK(q.dtype == dtype);
      CHECK(bits(q.code) == bits(want.code));
      if (dq) CHECK(bits(q.nested_code) == bits(dynamic_map()));
      // The per-block scales bnb resolves when it dequantizes.
      const std::string p = name + "." + v["name"].get<std::string>() + ".";
      CHECK(bits(q.block_scales()) == bits(f32s(p + "absmax_f32")));
      check_same_quant(ref::quantize_4bit(x.data(), shape, t, c["blocksize"], dq, dtype), want);
      if (dtype == io::StDtype::BF16) {
        const auto w = fixtures().file.load<bf16>(name + ".input");
        const Quant4 qt = quantize_4bit(w, t, c["blocksize"], dq);
        check_same_quant(qt, want);
        CHECK(qt.dtype == io::StDtype::BF16);
      } else if (dtype == io::StDtype::F32) {
        check_same_quant(quantize_4bit(fixtures().file.load<float>(name + ".input"), t, c["blocksize"], dq), want);
      }
      ++variants;
    }
  }
  CHECK(variants >= 20);
}

TEST_CASE("quant: dequantize_4bit matches bitsandbytes bit for bit") {
  int checked = 0;
  for (const auto& c : fixtures().meta["cases"]) {
    for (const auto& v : c["variants"]) {
      const std::string p = c["name"].get<std::string>() + "." + v["name"].get<std::string>() + ".";
      if (!fixtures().file.find(p + "dequant")) continue;
      CAPTURE(p);
      const Quant4 q = from_fixture(c, v);
      const int64_t n = q.numel();
      std::vector<float> out(static_cast<size_t>(n)), out_ref(static_cast<size_t>(n));
      dequantize_4bit(q, out.data());
      ref::dequantize_4bit(q, out_ref.data());
      CHECK(bits(out) == bits(out_ref));
      if (q.dtype == io::StDtype::BF16) {
        const auto want = fixtures().file.load<bf16>(p + "dequant");
        const auto got = dequantize_4bit<bf16>(q);
        CHECK(got.shape() == want.shape());
        bool same = true;
        for (int64_t i = 0; i < n; ++i) same = same && bits_of(got.data()[i]) == bits_of(want.data()[i]);
        CHECK(same);
        if (fixtures().file.find(p + "dequant_f32")) CHECK(bits(out) == bits(f32s(p + "dequant_f32")));
      } else {
        CHECK(bits(out) == bits(f32s(p + "dequant")));
        const auto t = dequantize_4bit<float>(q);
        CHECK(bits(t.to_vector()) == bits(out));
      }
      // Row tiles and odd windows give the same values as the whole tensor.
      for (const auto& [b, e] : std::vector<std::pair<int64_t, int64_t>>{
               {0, n}, {1, n}, {0, n - 1}, {n / 3, n / 2 + 1}, {n - 1, n}, {n / 2, n / 2}}) {
        if (b > e) continue;
        std::vector<float> part(static_cast<size_t>(e - b));
        dequantize_4bit_range(q, b, e, part.data());
        CHECK(bits(part) == bits(std::vector<float>(out.begin() + b, out.begin() + e)));
      }
      ++checked;
    }
  }
  CHECK(checked >= 15);
}

TEST_CASE("quant: SPEC §6.5 vectors (checked against bitsandbytes)") {
  const auto& s = fixtures().meta["spec_6_5"];
  std::vector<float> x(64);
  for (int k = 0; k < 64; ++k) x[k] = static_cast<float>(static_cast<bf16>((k - 31.5f) / 31.5f * 0.5f));
  const Quant4 q = quantize_4bit(x.data(), {64}, QuantType::Nf4, 64, false);
  static const char* hex = "0123456789abcdef";
  std::string h;
  for (const uint8_t b : q.packed) h += std::string{hex[b >> 4], hex[b & 15]};
  CHECK(h == "00000111111112222233344445556667788899aaabbbccccddddeeeeeeefffff");
  CHECK(h == s["nf4_packed_hex"].get<std::string>());
  CHECK(q.absmax == std::vector<float>{0.5f});

  std::vector<float> y(256, 0.0f);
  const float am[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  for (int b = 0; b < 4; ++b) y[b * 64] = am[b];
  const Quant4 d = quantize_4bit(y.data(), {256}, QuantType::Nf4, 64, true, io::StDtype::F32);
  CHECK(d.absmax_q == std::vector<uint8_t>{255, 176, 41, 25});
  CHECK(d.nested_offset == 0.234375f);
  CHECK(d.nested_absmax == std::vector<float>{0.265625f});
  const auto scales = d.block_scales();
  const auto want = s["dq_reconstructed"].get<std::vector<double>>();  // bnb's values (SPEC's last two differ)
  for (int b = 0; b < 4; ++b) CHECK(scales[b] == static_cast<float>(want[b]));
}

TEST_CASE("quant: all-zero blocks, pads and ties as bitsandbytes' CPU backend") {
  // 2 full blocks of zeros then a 10-element zero tail: absmax 0, 0, f32(1e-38); every code is that of 0.
  std::vector<float> z(138, 0.0f);
  z[64] = -2.0f;  // block 1 is not all zero
  const Quant4 n = quantize_4bit(z.data(), {138}, QuantType::Nf4, 64, false, io::StDtype::F32);
  REQUIRE(n.absmax.size() == 3);
  CHECK(n.absmax[0] == 0.0f);
  CHECK(n.absmax[1] == 2.0f);
  CHECK(std::bit_cast<uint32_t>(n.absmax[2]) == 0x006ce3eeu);
  CHECK(n.packed[0] == 0x77);
  CHECK(n.packed[32] == 0x07);  // -1 then 0
  CHECK(n.packed[68] == 0x77);
  const Quant4 f = quantize_4bit(z.data(), {138}, QuantType::Fp4, 64, false, io::StDtype::F32);
  CHECK(f.packed[0] == 0x00);
  CHECK(f.packed[32] == 0xb0);  // FP4 -1 is code 0b1011
  // Odd count: the pad nibble is the code of a scaled 0 (NF4 7, FP4 0).
  const float odd[3] = {1.0f, -1.0f, 1.0f};
  CHECK(quantize_4bit(odd, {3}, QuantType::Nf4, 64, false).packed == std::vector<uint8_t>{0xf0, 0xf7});
  CHECK(quantize_4bit(odd, {3}, QuantType::Fp4, 64, false).packed == std::vector<uint8_t>{0x3b, 0x30});
  // An exact NF4 midpoint goes to the lower code; one ulp above goes up.
  const float mid = (code4(QuantType::Nf4)[10] + code4(QuantType::Nf4)[11]) / 2.0f;
  const float t[4] = {1.0f, mid, std::nextafter(mid, 1.0f), 0.0f};
  CHECK(quantize_4bit(t, {4}, QuantType::Nf4, 64, false).packed == std::vector<uint8_t>{0xfa, 0xb7});
  // FP4: tiny positive values take code 8 (bnb's argsort puts code 0 before code 8), tiny negatives code 0.
  const float u[4] = {1.0f, 1e-4f, -1e-4f, 0.0f};
  CHECK(quantize_4bit(u, {4}, QuantType::Fp4, 64, false).packed == std::vector<uint8_t>{0x38, 0x00});
}

TEST_CASE("quant: threaded paths agree with ref:: on random inputs") {
  std::mt19937_64 g(20260101);
  const int64_t sizes[][2] = {{1, 1}, {1, 2}, {3, 5}, {17, 63}, {64, 64}, {33, 257}, {129, 128}, {300, 70}, {2, 4097}};
  const int64_t blocksizes[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
  int i = 0;
  for (const auto& s : sizes) {
    for (const QuantType t : {QuantType::Nf4, QuantType::Fp4}) {
      for (const bool dq : {false, true}) {
        const int64_t bs = blocksizes[(i++) % 8];
        const bool bf = i % 2 == 0;
        auto x = random_weights(g, s[0] * s[1], bf);
        if (i % 5 == 0) std::fill(x.begin(), x.begin() + static_cast<int64_t>(x.size()) / 2, 0.0f);
        const auto dtype = bf ? io::StDtype::BF16 : io::StDtype::F32;
        CAPTURE(s[0]);
        CAPTURE(s[1]);
        CAPTURE(bs);
        const Quant4 a = quantize_4bit(x.data(), {s[0], s[1]}, t, bs, dq, dtype);
        const Quant4 b = ref::quantize_4bit(x.data(), {s[0], s[1]}, t, bs, dq, dtype);
        check_same_quant(a, b);
        a.validate("random");
        std::vector<float> da(x.size()), db(x.size());
        dequantize_4bit(a, da.data());
        ref::dequantize_4bit(a, db.data());
        CHECK(bits(da) == bits(db));
        const auto tb = dequantize_4bit<bf16>(a);
        bool same = true;
        for (size_t k = 0; k < x.size(); ++k) same = same && bits_of(tb.data()[k]) == bits_of(static_cast<bf16>(da[k]));
        CHECK(same);
      }
    }
  }
}

TEST_CASE("quant: quantize -> dequantize error bounds") {
  std::mt19937_64 g(7);
  for (const QuantType t : {QuantType::Nf4, QuantType::Fp4}) {
    // The largest half-gap between neighbouring code values bounds the error relative to the block absmax.
    auto c = code4(t);
    std::sort(c.begin(), c.end());
    float half_gap = 0.0f;
    for (int k = 0; k < 15; ++k) half_gap = std::max(half_gap, (c[k + 1] - c[k]) / 2.0f);
    for (const bool dq : {false, true}) {
      const int64_t rows = 96, cols = 200, bs = 64;
      const auto x = random_weights(g, rows * cols, true);
      const Quant4 q = quantize_4bit(x.data(), {rows, cols}, t, bs, dq);
      const Quant4 plain = quantize_4bit(x.data(), {rows, cols}, t, bs, false);
      std::vector<float> d(x.size());
      dequantize_4bit(q, d.data());
      const auto scales = q.block_scales();
      double se = 0.0, sx = 0.0;
      float worst = 0.0f;
      for (size_t i = 0; i < x.size(); ++i) {
        const float am = plain.absmax[i / bs];
        // Double quant perturbs the scale by at most half a dynamic-map step (0.007) plus one table bin.
        const float scale_err = dq ? std::fabs(scales[i / bs] - am) : 0.0f;
        worst = std::max(worst, std::fabs(d[i] - x[i]) - (half_gap * am + scale_err + 1e-6f * am));
        se += (d[i] - x[i]) * static_cast<double>(d[i] - x[i]);
        sx += x[i] * static_cast<double>(x[i]);
      }
      CHECK(worst <= 0.0f);
      if (dq) {
        float max_scale_err = 0.0f;
        for (size_t b = 0; b < scales.size(); ++b)
          max_scale_err = std::max(max_scale_err, std::fabs(scales[b] - plain.absmax[b]) / q.nested_absmax[b / 256]);
        CHECK(max_scale_err <= 0.0071f + 2.0f / 65535.0f);
      }
      // Gaussian weights: NF4's relative RMS error is about 0.1, FP4's somewhat larger.
      CHECK(std::sqrt(se / sx) < (t == QuantType::Nf4 ? 0.12 : 0.2));
    }
  }
}

TEST_CASE("quant: malformed Quant4 and arguments are rejected") {
  const float x[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const Quant4 good = quantize_4bit(x, {2, 5}, QuantType::Nf4, 64, true);
  good.validate("good");
  const Quant4 flat = quantize_4bit(x, {2, 5}, QuantType::Fp4, 64, false);
  flat.validate("flat");
  auto bad = [](Quant4 q, auto&& edit, const char* needle) {
    edit(q);
    CHECK_THROWS_WITH_AS(q.validate("w.weight"), doctest::Contains(needle), Error);
  };
  bad(
      good, [](Quant4& q) { q.packed.pop_back(); }, "packed bytes for shape [2, 5]");
  bad(
      good, [](Quant4& q) { q.blocksize = 48; }, "blocksize 48");
  bad(
      good, [](Quant4& q) { q.dtype = io::StDtype::I32; }, "dtype I32");
  bad(
      good, [](Quant4& q) { q.shape = {}; }, "rank >= 1");
  bad(
      good,
      [](Quant4& q) {
        q.shape = {2, -5};
      },
      "negative extent");
  bad(
      good,
      [](Quant4& q) {
        q.shape = {0, 5};
      },
      "at least one element");
  bad(
      good, [](Quant4& q) { q.absmax_q.push_back(0); }, "quantized absmax values for 1 blocks");
  bad(
      good, [](Quant4& q) { q.nested_absmax.clear(); }, "nested_absmax values");
  bad(
      good, [](Quant4& q) { q.nested_absmax[0] = NAN; }, "nested_absmax[0]");
  bad(
      good, [](Quant4& q) { q.nested_offset = INFINITY; }, "nested_offset is not finite");
  bad(
      good, [](Quant4& q) { q.nested_blocksize = 0; }, "nested_blocksize 0");
  bad(
      good, [](Quant4& q) { q.absmax = {1.0f}; }, "f32 absmax on a double-quantized tensor");
  bad(
      good, [](Quant4& q) { q.nested_code[3] = NAN; }, "nested_quant_map");
  bad(
      flat, [](Quant4& q) { q.absmax.push_back(1.0f); }, "2 absmax values for 1 blocks");
  bad(
      flat, [](Quant4& q) { q.absmax[0] = -1.0f; }, "absmax[0] = -1");
  bad(
      flat, [](Quant4& q) { q.absmax_q = {3}; }, "nested statistics");
  bad(
      flat, [](Quant4& q) { q.code[0] = NAN; }, "quant_map");
  Quant4 named = good;
  named.packed.clear();
  CHECK_THROWS_WITH_AS(named.validate("model.layers.0.self_attn.q_proj.weight"),
                       doctest::Contains("model.layers.0.self_attn.q_proj.weight: 0 packed bytes"), Error);

  // Arguments of quantize / dequantize.
  CHECK_THROWS_WITH_AS(quantize_4bit(x, {2, 5}, QuantType::Nf4, 100), doctest::Contains("blocksize 100"), Error);
  CHECK_THROWS_WITH_AS(quantize_4bit(x, {2, 5}, QuantType::Nf4, 64, true, io::StDtype::I8),
                       doctest::Contains("dtype I8"), Error);
  CHECK_THROWS_WITH_AS(quantize_4bit(x, {}, QuantType::Nf4), doctest::Contains("rank >= 1"), Error);
  const float with_nan[4] = {1.0f, NAN, 2.0f, INFINITY};
  CHECK_THROWS_WITH_AS(quantize_4bit(with_nan, {4}), doctest::Contains("element 1 of the [4] input"), Error);
  CHECK_THROWS_WITH_AS(ref::quantize_4bit(with_nan, {4}), doctest::Contains("element 1 of the [4] input"), Error);
  std::vector<float> out(10);
  CHECK_THROWS_WITH_AS(dequantize_4bit_range(good, 4, 11, out.data()), doctest::Contains("outside the 10 elements"),
                       Error);
  CHECK_THROWS_WITH_AS(dequantize_4bit_range(good, 5, 4, out.data()), doctest::Contains("[5, 4)"), Error);
  Quant4 short_packed = good;
  short_packed.packed.pop_back();
  CHECK_THROWS_WITH_AS(dequantize_4bit(short_packed, out.data()), doctest::Contains("packed bytes for 10 elements"),
                       Error);
  CHECK_THROWS_AS(dequantize_4bit<bf16>(short_packed), Error);
  Quant4 short_nested = good;
  short_nested.absmax_q.clear();
  CHECK_THROWS_WITH_AS(ref::dequantize_4bit(short_nested, out.data()), doctest::Contains("nested statistics"), Error);
}
