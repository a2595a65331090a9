// dtypes: f32 -> bf16/f16 rounding against fixtures exported from ml_dtypes / numpy
// (tools/export_dtype_fixtures.py): round-to-nearest-even, NaN and Inf preserved.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "distill/core/dtype.hpp"
#include "distill/tensor/tensor.hpp"

using namespace distill;

namespace {
float f32_from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
}  // namespace

TEST_CASE("dtype: f32 -> bf16 and f16 round to nearest even like the reference implementations") {
  std::ifstream in(std::string(DISTILL_SOURCE_DIR) + "/tests/golden/dtype_rounding.txt");
  REQUIRE_MESSAGE(in.good(), "missing tests/golden/dtype_rounding.txt");
  std::string line;
  int cases = 0, nans = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    uint32_t fb = 0, bb = 0, hb = 0;
    ss >> std::hex >> fb >> bb >> hb;
    const float f = f32_from_bits(fb);
    const bf16 b = static_cast<bf16>(f);
    const f16 h = static_cast<f16>(f);
    ++cases;
    if (std::isnan(f)) {
      ++nans;
      CHECK(std::isnan(static_cast<float>(b)));
      CHECK(std::isnan(static_cast<float>(h)));
      continue;
    }
    INFO("f32 bits 0x" << std::hex << fb);
    CHECK(bits_of(b) == bb);
    CHECK(bits_of(h) == hb);
  }
  CHECK(cases > 900);
  CHECK(nans >= 4);
}

TEST_CASE("dtype: widening is exact and Inf survives the round trip") {
  for (uint32_t b = 0; b < 0x10000; b += 7) {
    const bf16 x = bf16_from_bits(static_cast<uint16_t>(b));
    const float w = static_cast<float>(x);
    if (std::isnan(w)) continue;
    CHECK(bits_of(static_cast<bf16>(w)) == b);  // bf16 -> f32 -> bf16 is the identity
  }
  CHECK(std::isinf(static_cast<float>(static_cast<bf16>(INFINITY))));
  CHECK(std::isinf(static_cast<float>(static_cast<f16>(-INFINITY))));
  CHECK(std::string(dtype_name_v<bf16>) == "bf16");
  CHECK(std::is_same_v<compute_t<f16>, float>);
}

TEST_CASE("dtype: Tensor::cast rounds each element") {
  auto t = Tensor<float>::from_vector({3}, {1.0f, f32_from_bits(0x3F808000), f32_from_bits(0x3F818000)});
  auto b = t.cast<bf16>();
  CHECK(bits_of(b.data()[0]) == 0x3F80);
  CHECK(bits_of(b.data()[1]) == 0x3F80);
  CHECK(bits_of(b.data()[2]) == 0x3F82);
  auto back = b.cast<float>();
  CHECK(back.data()[2] == doctest::Approx(1.015625));
}

TEST_CASE("dtype: casting f64 to bf16/f16 rounds once (no double rounding through f32)") {
  // 1 + 2^-8 + 2^-30 is just above the bf16 tie between 1 and 1 + 2^-7: correct rounding goes up. Via f32
  // (RNE) it becomes exactly the tie 1 + 2^-8, which then rounds to even (down).
  const double x = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30);
  auto t = Tensor<double>::from_vector({2}, {x, -x});
  auto b = t.cast<bf16>();
  CHECK(static_cast<float>(b.data()[0]) == 1.0078125f);
  CHECK(static_cast<float>(b.data()[1]) == -1.0078125f);
  const double y = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);  // the same for f16 (tie at 2^-11)
  auto h = Tensor<double>::from_vector({1}, {y}).cast<f16>();
  CHECK(static_cast<float>(h.data()[0]) == 1.0009765625f);
  CHECK(std::isinf(static_cast<float>(Tensor<double>::from_vector({1}, {1e300}).cast<bf16>().data()[0])));
  CHECK(std::isnan(static_cast<float>(Tensor<double>::from_vector({1}, {NAN}).cast<f16>().data()[0])));
}
