// bitsandbytes-compatible 4-bit blockwise quantization (NF4 / FP4, optional double quantization), SPEC §6.
//
// Bit-exact with pip bitsandbytes 0.50.2 on the CPU — what transformers' `from_pretrained(...,
// BitsAndBytesConfig(load_in_4bit=True))` + `save_pretrained` writes when it runs on the CPU (checked
// against tests/golden/nf4, made by tools/golden/nf4.py):
//  - quantize (bnb's default torch backend): the weight is flattened; block b holds elements
//    [b·bs, (b+1)·bs). A full block scales x·(1/max(absmax, 1e-38)) and stores absmax; the trailing partial
//    block scales x/max(absmax, 1e-38) and stores the clamped absmax (so an all-zero tail stores f32(1e-38),
//    an all-zero full block stores 0). Scaled values are clamped to [-1, 1]; the code index is the number of
//    f32 midpoints (between sorted code values) strictly below the value (torch.bucketize: a tie goes to
//    the lower code); FP4 maps the sorted index back through argsort(code). All-zero blocks get the code of 0
//    (NF4 7, FP4 0) — the CUDA kernel would write 0b0000 there instead (NaN compare); both dequantize to 0.
//    FP4 values in (0, 0.0026·absmax] get code 8 (bnb's table holds +0 there), tiny negatives code 0.
//  - packing: element 2i is the HIGH nibble of byte i; an odd element count is padded with the code of 0.
//  - double quant: offset = torch's f32 mean of absmax (its cascade sum with 8-wide vectors, as one thread
//    runs it — torch may split sums over more than 32768 blocks across threads, so bnb's offset for such
//    tensors can depend on its thread count), then bnb's native CPU quantize_blockwise(absmax − offset, 256):
//    per 256-block absmax2 = max|v| (0 → codes 0), v·(1/absmax2) clamped to [-1, 1] mapped through a
//    65536-entry lookup table built from the dynamic map (not an exact nearest-value search; CUDA differs).
//  - dequantize: code[q]·scale in f32, scale = absmax (or dyn[qabs]·absmax2 + offset, two f32 roundings),
//    then rounded to the target dtype (RNE). bnb's native CPU dequant kernel mis-indexes absmax when the
//    last dimension is not a multiple of blocksize; we compute the formula (its default backend agrees).
// ref:: holds plain-loop versions; the others split blocks across threads. No FMA contraction is allowed
// to change a rounding (products that feed an addition go through double, which is exact).
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "distill/core/dtype.hpp"
#include "distill/core/error.hpp"
#include "distill/core/parallel.hpp"
#include "distill/io/safetensors_format.hpp"
#include "distill/tensor/tensor.hpp"

namespace distill::quant {

enum class QuantType : uint8_t { Nf4, Fp4 };

inline const char* quant_type_name(QuantType t) { return t == QuantType::Nf4 ? "nf4" : "fp4"; }

namespace detail {

// bitsandbytes.functional.get_4bit_type("nf4" / "fp4") as f32 bit patterns, index = 4-bit value.
inline constexpr std::array<uint32_t, 16> kNf4Bits{
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u};
inline constexpr std::array<uint32_t, 16> kFp4Bits{
    0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u,
    0x00000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u};
// torch.argsort(fp4 code): the ascending order bnb's default backend buckets FP4 values in (0 before 8).
inline constexpr std::array<uint8_t, 16> kFp4Order{11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};
// create_dynamic_map(signed=True, 7, 8) from bitsandbytes 0.50.2 with torch 2.15 (42 entries differ in the last
// bits from SPEC Appendix A, which was computed with torch 1.13's linspace).
inline constexpr std::array<uint32_t, 256> kDynamicBits{
    0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u, 0xbf616666u,
    0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u, 0xbf4bcccdu, 0xbf483333u, 0xbf44999au, 0xbf410000u,
    0xbf3d6666u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6666u, 0xbf27cccdu, 0xbf243334u, 0xbf20999au,
    0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au, 0xbf0b0000u, 0xbf076666u, 0xbf03ccccu, 0xbf003333u,
    0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au, 0xbedc6666u, 0xbed53333u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au,
    0xbeb86666u, 0xbeb13333u, 0xbeaa0000u, 0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u,
    0xbe6f3333u, 0xbe60cccdu, 0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u,
    0xbddb3334u, 0xbdc9eb85u, 0xbdc428f7u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c2au, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147bu, 0xbd728f5du, 0xbd670a3du, 0xbd5b851fu,
    0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u, 0xbcfeb852u, 0xbce7ae15u,
    0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u, 0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu,
    0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u, 0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au,
    0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du, 0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u,
    0xb9c7e283u, 0xb98ce705u, 0xb923d70bu, 0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u,
    0xb513a3b7u, 0x00000000u, 0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu,
    0x3923d70bu, 0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u, 0x3bcfdf3bu,
    0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u, 0x3c68f5c3u, 0x3c8b851fu,
    0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u, 0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u,
    0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du, 0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du,
    0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au, 0x3da75c2au, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u,
    0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u, 0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e35999au, 0x3e440000u,
    0x3e526666u, 0x3e60cccdu, 0x3e6f3333u, 0x3e7d9999u, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu,
    0x3eaa0000u, 0x3eb13333u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au, 0x3f123334u,
    0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243334u, 0x3f27cccdu, 0x3f2b6666u, 0x3f2f0000u, 0x3f32999au,
    0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, 0x3f44999au, 0x3f483333u, 0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u,
    0x3f56999au, 0x3f5a3333u, 0x3f5dcccdu, 0x3f616666u, 0x3f650000u, 0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u,
    0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u};

inline constexpr float kTinyAbsmax = std::bit_cast<float>(0x006ce3eeu);  // f32(1e-38), torch's clamp(min=1e-38)
inline constexpr int kLutSize = 65536;                                   // bnb's CPU quantize_blockwise lookup table
inline constexpr int64_t kNestedBlocksize = 256;

template <size_t N>
constexpr std::array<float, N> floats_from_bits(const std::array<uint32_t, N>& b) {
  std::array<float, N> f{};
  for (size_t i = 0; i < N; ++i) f[i] = std::bit_cast<float>(b[i]);
  return f;
}

// a·b rounded once to f32, immune to FMA contraction with a following addition (the double product of two
// floats is exact).
inline float mul_f32(float a, float b) { return static_cast<float>(static_cast<double>(a) * static_cast<double>(b)); }

// The 15 bucket bounds (f32 midpoints of the ascending code values), the sorted index -> 4-bit code map, and
// the code a scaled 0 gets (all-zero blocks and the odd-count pad).
struct Buckets {
  std::array<float, 15> bound{};
  std::array<uint8_t, 16> code_of{};
  uint8_t zero_code = 0;
};

// The 4-bit code of a scaled value s in [-1, 1]: the number of bounds strictly below s (torch.bucketize).
inline uint8_t bucket_code(const Buckets& b, float s) {
  int q = 0;
  for (int k = 0; k < 15; ++k) q += b.bound[k] < s ? 1 : 0;
  return b.code_of[q];
}

inline Buckets make_buckets(QuantType t) {
  Buckets b;
  const auto code = floats_from_bits(t == QuantType::Nf4 ? kNf4Bits : kFp4Bits);
  std::array<float, 16> sorted{};
  for (int i = 0; i < 16; ++i) {
    b.code_of[i] = t == QuantType::Nf4 ? static_cast<uint8_t>(i) : kFp4Order[i];
    sorted[i] = code[b.code_of[i]];
  }
  for (int i = 0; i < 15; ++i) b.bound[i] = (sorted[i] + sorted[i + 1]) / 2.0f;
  b.zero_code = bucket_code(b, 0.0f);
  return b;
}

inline const Buckets& buckets(QuantType t) {
  static const Buckets nf4 = make_buckets(QuantType::Nf4), fp4 = make_buckets(QuantType::Fp4);
  return t == QuantType::Nf4 ? nf4 : fp4;
}

// torch's f32 sum on the CPU (aten/src/ATen/native/cpu/SumKernel.cpp, cascade_sum) for a contiguous 1-D tensor
// as one thread computes it: rows of 4 "items" (8-float vectors, or scalars below 8 elements) summed into
// 4 levels of partial sums, then the partials, the scalar tail and the vector lanes in order.
inline int64_t torch_ceil_log2(int64_t x) {
  return x <= 2 ? 1 : static_cast<int64_t>(std::bit_width(static_cast<uint64_t>(x - 1)));
}

template <int L>
inline void torch_multi_row_sum(const float* data, int64_t rows, float (&out)[4][L]) {
  constexpr int kLevels = 4;
  const int64_t level_power = std::max<int64_t>(4, torch_ceil_log2(rows) / kLevels);
  const int64_t level_step = int64_t{1} << level_power;
  const int64_t level_mask = level_step - 1;
  float acc[kLevels][4][L] = {};
  auto add_row = [&](int64_t i) {
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < L; ++l) acc[0][k][l] += data[(i * 4 + k) * L + l];
  };
  int64_t i = 0;
  while (i + level_step <= rows) {
    for (int64_t j = 0; j < level_step; ++j, ++i) add_row(i);
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < L; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < rows; ++i) add_row(i);
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < L; ++l) acc[0][k][l] += acc[j][k][l];
  for (int k = 0; k < 4; ++k)
    for (int l = 0; l < L; ++l) out[k][l] = acc[0][k][l];
}

template <int L>
inline void torch_row_sum(const float* data, int64_t items, float (&out)[L]) {
  const int64_t rows = items / 4;
  float partial[4][L];
  torch_multi_row_sum<L>(data, rows, partial);
  for (int64_t i = rows * 4; i < items; ++i)
    for (int l = 0; l < L; ++l) partial[0][l] += data[i * L + l];
  for (int k = 1; k < 4; ++k)
    for (int l = 0; l < L; ++l) partial[0][l] += partial[k][l];
  for (int l = 0; l < L; ++l) out[l] = partial[0][l];
}

inline float torch_sum_f32(const float* x, int64_t n) {
  constexpr int kVec = 8;
  if (n < kVec) {
    float s[1];
    torch_row_sum<1>(x, n, s);
    return s[0];
  }
  const int64_t vecs = n / kVec;
  float lanes[kVec];
  torch_row_sum<kVec>(x, vecs, lanes);
  float acc = 0.0f;
  for (int64_t k = vecs * kVec; k < n; ++k) acc += x[k];
  for (int l = 0; l < kVec; ++l) acc += lanes[l];
  return acc;
}

// torch.mean: the sum divided by the element count, in f32.
inline float torch_mean_f32(const float* x, int64_t n) { return torch_sum_f32(x, n) / static_cast<float>(n); }

}  // namespace detail

// The 16 code values (bnb's quant_map), index = 4-bit value.
inline const std::array<float, 16>& code4(QuantType t) {
  static const auto nf4 = detail::floats_from_bits(detail::kNf4Bits), fp4 = detail::floats_from_bits(detail::kFp4Bits);
  return t == QuantType::Nf4 ? nf4 : fp4;
}

// bnb's signed dynamic map (nested_quant_map), create_dynamic_map(signed=True, 7, 8).
inline const std::array<float, 256>& dynamic_map() {
  static const auto m = detail::floats_from_bits(detail::kDynamicBits);
  return m;
}

inline constexpr bool is_allowed_blocksize(int64_t b) {
  return b == 32 || b == 64 || b == 128 || b == 256 || b == 512 || b == 1024 || b == 2048 || b == 4096;
}

namespace detail {

// bnb's CPU quantize_blockwise table: entry i covers the normalized value -1 + 2i/65535 and holds the number
// of dynamic-map midpoints (0.5·(c[k] + c[k+1])) below it.
inline const std::array<uint8_t, kLutSize>& dynamic_lut() {
  static const auto lut = [] {
    std::array<uint8_t, kLutSize> l{};
    const auto& c = dynamic_map();
    std::array<float, 255> mid{};
    for (int k = 0; k < 255; ++k) mid[k] = 0.5f * (c[k] + c[k + 1]);
    int k = 0;
    for (int i = 0; i < kLutSize; ++i) {
      const float val = -1.0f + (2.0f * static_cast<float>(i)) / static_cast<float>(kLutSize - 1);
      while (k < 255 && mid[k] < val) ++k;
      l[i] = static_cast<uint8_t>(k);
    }
    return l;
  }();
  return lut;
}

// One block of bnb's CPU quantize_blockwise (the double-quant step): absmax2 = max|v|, codes through the table.
inline float quantize_nested_block(const float* v, int64_t len, uint8_t* out) {
  float am = 0.0f;
  for (int64_t i = 0; i < len; ++i) am = std::max(am, std::fabs(v[i]));
  if (am == 0.0f) {
    std::fill_n(out, len, uint8_t{0});
    return am;
  }
  const float inv = 1.0f / am;
  const auto& lut = dynamic_lut();
  for (int64_t i = 0; i < len; ++i) {
    const float s = std::clamp(mul_f32(v[i], inv), -1.0f, 1.0f);
    const float t = mul_f32((s + 1.0f) * 0.5f, static_cast<float>(kLutSize - 1)) + 0.5f;
    out[i] = lut[static_cast<size_t>(static_cast<int32_t>(t))];
  }
  return am;
}

inline int64_t checked_numel(const std::vector<int64_t>& shape, std::string_view what) {
  DISTILL_CHECK(!shape.empty(), what, ": a 4-bit quantized tensor needs a shape of rank >= 1");
  int64_t n = 1;
  for (const int64_t d : shape) {
    DISTILL_CHECK(d >= 0, what, ": negative extent ", d, " in the shape");
    DISTILL_CHECK(d == 0 || n <= std::numeric_limits<int64_t>::max() / 2 / d, what, ": the shape overflows");
    n *= d;
  }
  DISTILL_CHECK(n > 0, what, ": a 4-bit quantized tensor needs at least one element");
  return n;
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

}  // namespace detail

// A 4-bit quantized tensor in bitsandbytes' layout (SPEC §6.6).
struct Quant4 {
  QuantType type = QuantType::Nf4;
  int64_t blocksize = 64;
  std::vector<int64_t> shape;             // original tensor shape (e.g. [out, in])
  io::StDtype dtype = io::StDtype::BF16;  // original dtype (the dtype bnb dequantizes to)
  std::vector<uint8_t> packed;            // (numel+1)/2 bytes, element 2i in the HIGH nibble
  std::array<float, 16> code{};           // quant_map
  std::vector<float> absmax;              // non-nested: f32 per block
  bool nested = false;
  std::vector<uint8_t> absmax_q;     // nested: uint8 per block
  std::vector<float> nested_absmax;  // nested: f32 per nested block
  int64_t nested_blocksize = 256;
  float nested_offset = 0.f;
  std::array<float, 256> nested_code{};  // nested_quant_map

  int64_t numel() const {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
  }
  int64_t blocks() const { return (numel() + blocksize - 1) / blocksize; }

  // The scale of block b: absmax[b], or dyn[absmax_q[b]]·nested_absmax[b / nested_blocksize] + nested_offset
  // rounded twice in f32 as bnb does (dequantize_blockwise, then += offset). No range checks.
  float block_scale(int64_t b) const {
    if (!nested) return absmax[static_cast<size_t>(b)];
    const float p = detail::mul_f32(nested_code[absmax_q[static_cast<size_t>(b)]],
                                    nested_absmax[static_cast<size_t>(b / nested_blocksize)]);
    return p + nested_offset;
  }
  // Per-block absmax, resolving double quant exactly as bnb (f32).
  std::vector<float> block_scales() const {
    std::vector<float> s(static_cast<size_t>(blocks()));
    for (int64_t b = 0; b < blocks(); ++b) s[static_cast<size_t>(b)] = block_scale(b);
    return s;
  }

  // Sizes consistent with shape/blocksize, blocksize allowed, a bnb dtype, finite statistics. Throws
  // distill::Error naming `what`.
  void validate(std::string_view what) const {
    DISTILL_CHECK(is_allowed_blocksize(blocksize), what, ": blocksize ", blocksize,
                  " is not one of bitsandbytes' 32, 64, 128, 256, 512, 1024, 2048, 4096");
    DISTILL_CHECK(dtype == io::StDtype::BF16 || dtype == io::StDtype::F16 || dtype == io::StDtype::F32, what,
                  ": dtype ", io::dtype_name(dtype), " is not one bitsandbytes quantizes (BF16, F16, F32)");
    const int64_t n = detail::checked_numel(shape, what);
    const int64_t nb = blocks();
    DISTILL_CHECK(static_cast<int64_t>(packed.size()) == (n + 1) / 2, what, ": ", packed.size(),
                  " packed bytes for shape ", detail::shape_str(shape), " (", n, " elements) which needs ",
                  (n + 1) / 2);
    for (const float c : code) DISTILL_CHECK(std::isfinite(c), what, ": the quant_map holds a non-finite value");
    if (!nested) {
      DISTILL_CHECK(static_cast<int64_t>(absmax.size()) == nb, what, ": ", absmax.size(), " absmax values for ", nb,
                    " blocks of ", blocksize);
      DISTILL_CHECK(absmax_q.empty() && nested_absmax.empty(), what,
                    ": nested statistics (absmax_q / nested_absmax) on a tensor without double quantization");
      for (size_t i = 0; i < absmax.size(); ++i)
        DISTILL_CHECK(std::isfinite(absmax[i]) && absmax[i] >= 0.0f, what, ": absmax[", i, "] = ", absmax[i],
                      " is not a finite non-negative number");
      return;
    }
    DISTILL_CHECK(absmax.empty(), what, ": f32 absmax on a double-quantized tensor (it holds absmax_q instead)");
    DISTILL_CHECK(nested_blocksize > 0 && nested_blocksize <= (int64_t{1} << 20), what, ": nested_blocksize ",
                  nested_blocksize, " is out of range");
    DISTILL_CHECK(static_cast<int64_t>(absmax_q.size()) == nb, what, ": ", absmax_q.size(),
                  " quantized absmax values for ", nb, " blocks of ", blocksize);
    const int64_t nb2 = (nb + nested_blocksize - 1) / nested_blocksize;
    DISTILL_CHECK(static_cast<int64_t>(nested_absmax.size()) == nb2, what, ": ", nested_absmax.size(),
                  " nested_absmax values for ", nb, " blocks in nested blocks of ", nested_blocksize, " (needs ", nb2,
                  ")");
    for (size_t i = 0; i < nested_absmax.size(); ++i)
      DISTILL_CHECK(std::isfinite(nested_absmax[i]) && nested_absmax[i] >= 0.0f, what, ": nested_absmax[", i,
                    "] = ", nested_absmax[i], " is not a finite non-negative number");
    DISTILL_CHECK(std::isfinite(nested_offset), what, ": nested_offset is not finite");
    for (const float c : nested_code)
      DISTILL_CHECK(std::isfinite(c), what, ": the nested_quant_map holds a non-finite value");
  }
};

namespace detail {

inline void check_quantize_args(const float* x, const std::vector<int64_t>& shape, int64_t blocksize,
                                io::StDtype dtype) {
  DISTILL_CHECK(is_allowed_blocksize(blocksize), "quantize_4bit: blocksize ", blocksize,
                " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096");
  DISTILL_CHECK(dtype == io::StDtype::BF16 || dtype == io::StDtype::F16 || dtype == io::StDtype::F32,
                "quantize_4bit: dtype ", io::dtype_name(dtype), " is not one bitsandbytes quantizes (BF16, F16, F32)");
  (void)checked_numel(shape, "quantize_4bit");
  DISTILL_CHECK(x != nullptr, "quantize_4bit: null input");
}

inline Quant4 empty_quant(std::vector<int64_t> shape, QuantType t, int64_t blocksize, io::StDtype dtype) {
  Quant4 q;
  q.type = t;
  q.blocksize = blocksize;
  q.shape = std::move(shape);
  q.dtype = dtype;
  q.code = code4(t);
  q.packed.resize(static_cast<size_t>((q.numel() + 1) / 2));
  q.absmax.resize(static_cast<size_t>(q.blocks()));
  return q;
}

[[noreturn]] inline void fail_non_finite(const std::vector<int64_t>& shape, int64_t i, float v) {
  throw Error("quantize_4bit: element " + std::to_string(i) + " of the " + shape_str(shape) + " input is " +
              std::to_string(v) + "; bitsandbytes' 4-bit format needs finite values");
}

// Double quantization of q.absmax (moved into absmax_q / nested_absmax / nested_offset).
template <bool kParallel>
inline void double_quantize(Quant4& q) {
  const int64_t nb = q.blocks();
  q.nested = true;
  q.nested_blocksize = kNestedBlocksize;
  q.nested_code = dynamic_map();
  q.nested_offset = torch_mean_f32(q.absmax.data(), nb);
  std::vector<float> centered(static_cast<size_t>(nb));
  for (int64_t i = 0; i < nb; ++i)
    centered[static_cast<size_t>(i)] = q.absmax[static_cast<size_t>(i)] - q.nested_offset;
  const int64_t nb2 = (nb + kNestedBlocksize - 1) / kNestedBlocksize;
  q.absmax_q.resize(static_cast<size_t>(nb));
  q.nested_absmax.resize(static_cast<size_t>(nb2));
  auto run = [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b = c * kNestedBlocksize, len = std::min(kNestedBlocksize, nb - b);
      q.nested_absmax[static_cast<size_t>(c)] = quantize_nested_block(centered.data() + b, len, q.absmax_q.data() + b);
    }
  };
  if constexpr (kParallel)
    parallel_for(nb2, 64, run);
  else
    run(0, nb2);
  q.absmax.clear();
}

// Block b of the 4-bit quantization (bnb's default backend), codes packed into q.packed.
inline void quantize_block(const float* x, int64_t n, int64_t b, Quant4& q, const Buckets& bk) {
  const int64_t bs = q.blocksize, begin = b * bs, end = std::min(n, begin + bs), len = end - begin;
  float am = 0.0f;
  for (int64_t i = begin; i < end; ++i) am = std::max(am, std::fabs(x[i]));
  std::array<float, 4096> s;
  if (len == bs) {  // full block: x * (1 / max(absmax, 1e-38)), absmax stored unclamped
    q.absmax[static_cast<size_t>(b)] = am;
    const float r = 1.0f / std::max(am, kTinyAbsmax);
    for (int64_t i = 0; i < len; ++i) s[static_cast<size_t>(i)] = std::clamp(x[begin + i] * r, -1.0f, 1.0f);
  } else {  // the trailing partial block: x / max(absmax, 1e-38), the clamped absmax stored
    const float a = std::max(am, kTinyAbsmax);
    q.absmax[static_cast<size_t>(b)] = a;
    for (int64_t i = 0; i < len; ++i) s[static_cast<size_t>(i)] = std::clamp(x[begin + i] / a, -1.0f, 1.0f);
  }
  std::array<uint8_t, 4096> c;
  for (int64_t i = 0; i < len; ++i) c[static_cast<size_t>(i)] = bucket_code(bk, s[static_cast<size_t>(i)]);
  uint8_t* out = q.packed.data() + begin / 2;  // blocksize is even: blocks start on a byte
  for (int64_t i = 0; i + 1 < len; i += 2)
    out[i / 2] = static_cast<uint8_t>(c[static_cast<size_t>(i)] << 4 | c[static_cast<size_t>(i + 1)]);
  if (len % 2) out[len / 2] = static_cast<uint8_t>(c[static_cast<size_t>(len - 1)] << 4 | bk.zero_code);
}

// Elements [lo, hi) of block b (inside one block) as O, written to out[0 .. hi-lo).
template <class O>
inline void dequantize_span(const Quant4& q, int64_t b, int64_t lo, int64_t hi, O* out) {
  const float scale = q.block_scale(b);
  O lut[16];
  for (int k = 0; k < 16; ++k) lut[k] = static_cast<O>(q.code[k] * scale);
  const uint8_t* p = q.packed.data();
  int64_t i = lo;
  if (i < hi && (i & 1)) *out++ = lut[p[i++ >> 1] & 15];
  for (; i + 1 < hi; i += 2) {
    const uint8_t v = p[i >> 1];
    out[0] = lut[v >> 4];
    out[1] = lut[v & 15];
    out += 2;
  }
  if (i < hi) *out = lut[p[i >> 1] >> 4];
}

// Cheap structural checks before dequantizing (validate() checks values too).
inline void check_dequant_sizes(const Quant4& q) {
  DISTILL_CHECK(q.blocksize > 0 && !q.shape.empty(), "dequantize_4bit: an empty or invalid Quant4 (blocksize ",
                q.blocksize, ", shape ", shape_str(q.shape), ")");
  const int64_t n = q.numel(), nb = q.blocks();
  DISTILL_CHECK(static_cast<int64_t>(q.packed.size()) == (n + 1) / 2, "dequantize_4bit: ", q.packed.size(),
                " packed bytes for ", n, " elements");
  if (q.nested)
    DISTILL_CHECK(
        static_cast<int64_t>(q.absmax_q.size()) == nb && q.nested_blocksize > 0 &&
            static_cast<int64_t>(q.nested_absmax.size()) == (nb + q.nested_blocksize - 1) / q.nested_blocksize,
        "dequantize_4bit: nested statistics do not match ", nb, " blocks");
  else
    DISTILL_CHECK(static_cast<int64_t>(q.absmax.size()) == nb, "dequantize_4bit: ", q.absmax.size(),
                  " absmax values for ", nb, " blocks");
}

template <class O>
inline void dequantize_range_as(const Quant4& q, int64_t begin, int64_t end, O* out) {
  check_dequant_sizes(q);
  DISTILL_CHECK(0 <= begin && begin <= end && end <= q.numel(), "dequantize_4bit_range: [", begin, ", ", end,
                ") is outside the ", q.numel(), " elements");
  const int64_t bs = q.blocksize;
  for (int64_t i = begin; i < end;) {
    const int64_t b = i / bs, hi = std::min(end, (b + 1) * bs);
    dequantize_span(q, b, i, hi, out + (i - begin));
    i = hi;
  }
}

template <class O>
inline void dequantize_all_as(const Quant4& q, O* out) {
  check_dequant_sizes(q);
  const int64_t n = q.numel(), bs = q.blocksize;
  parallel_for(q.blocks(), std::max<int64_t>(1, (int64_t{1} << 15) / bs), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) dequantize_span(q, b, b * bs, std::min(n, (b + 1) * bs), out + b * bs);
  });
}

}  // namespace detail

// Quantizes numel(shape) f32 values (row-major) as bnb.functional.quantize_4bit does on the CPU. `dtype` is
// the tensor's original dtype (recorded; bnb dequantizes to it): for BF16/F16 the values must already be
// exactly representable in it (bnb quantizes the 16-bit values upcast to f32). Non-finite values throw.
inline Quant4 quantize_4bit(const float* x, std::vector<int64_t> shape, QuantType t = QuantType::Nf4,
                            int64_t blocksize = 64, bool double_quant = true, io::StDtype dtype = io::StDtype::BF16) {
  detail::check_quantize_args(x, shape, blocksize, dtype);
  Quant4 q = detail::empty_quant(std::move(shape), t, blocksize, dtype);
  const int64_t n = q.numel();
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  parallel_for(n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      if (!std::isfinite(x[i])) {
        int64_t cur = first_bad.load();
        while (i < cur && !first_bad.compare_exchange_weak(cur, i)) {
        }
        return;
      }
  });
  if (const int64_t bad = first_bad.load(); bad != std::numeric_limits<int64_t>::max())
    detail::fail_non_finite(q.shape, bad, x[bad]);
  const auto& bk = detail::buckets(t);
  parallel_for(q.blocks(), std::max<int64_t>(1, (int64_t{1} << 14) / blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) detail::quantize_block(x, n, b, q, bk);
  });
  if (double_quant) detail::double_quantize<true>(q);
  return q;
}

// The same for a tensor of a dtype bnb quantizes (f32, bf16, f16); the dtype is recorded from T.
template <class T>
Quant4 quantize_4bit(const Tensor<T>& w, QuantType t = QuantType::Nf4, int64_t blocksize = 64,
                     bool double_quant = true) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "quantize_4bit takes f32, bf16 or f16 tensors (the dtypes bitsandbytes quantizes)");
  const io::StDtype dtype = std::is_same_v<T, float>  ? io::StDtype::F32
                            : std::is_same_v<T, bf16> ? io::StDtype::BF16
                                                      : io::StDtype::F16;
  std::vector<int64_t> shape(w.shape().begin(), w.shape().end());
  if constexpr (std::is_same_v<T, float>) {
    const Tensor<float> c = w.contiguous();
    return quantize_4bit(c.data(), std::move(shape), t, blocksize, double_quant, dtype);
  } else {
    const Tensor<float> c = w.template cast<float>();
    return quantize_4bit(c.data(), std::move(shape), t, blocksize, double_quant, dtype);
  }
}

// All elements in f32: code[q]·scale.
inline void dequantize_4bit(const Quant4& q, float* out) { detail::dequantize_all_as<float>(q, out); }

// Elements [begin, end) in f32 (row tiles: begin = row·in_features), written to out[0 .. end-begin).
inline void dequantize_4bit_range(const Quant4& q, int64_t begin, int64_t end, float* out) {
  detail::dequantize_range_as<float>(q, begin, end, out);
}

// A tensor shaped q.shape: f32 products rounded once to T (nearest even), as bnb's dequantize_4bit.
template <class T>
Tensor<T> dequantize_4bit(const Quant4& q) {
  static_assert(is_floating_dtype_v<T>, "dequantize_4bit<T> needs a floating dtype (f32, f64, bf16, f16)");
  DISTILL_CHECK(q.shape.size() <= static_cast<size_t>(kMaxRank), "dequantize_4bit: rank ", q.shape.size(),
                " exceeds the maximum of ", kMaxRank);
  auto out = Tensor<T>::empty(Shape::from_range(q.shape.begin(), q.shape.end()));
  detail::dequantize_all_as<T>(q, out.data());
  return out;
}

// Plain loops: the definition the paths above are tested against.
namespace ref {

inline Quant4 quantize_4bit(const float* x, std::vector<int64_t> shape, QuantType t = QuantType::Nf4,
                            int64_t blocksize = 64, bool double_quant = true, io::StDtype dtype = io::StDtype::BF16) {
  detail::check_quantize_args(x, shape, blocksize, dtype);
  Quant4 q = detail::empty_quant(std::move(shape), t, blocksize, dtype);
  const int64_t n = q.numel(), nb = q.blocks();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) detail::fail_non_finite(q.shape, i, x[i]);
  const auto& bk = detail::buckets(t);
  std::vector<uint8_t> codes(static_cast<size_t>(n + 1), bk.zero_code);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    float am = 0.0f;
    for (int64_t i = begin; i < end; ++i) am = std::max(am, std::fabs(x[i]));
    const bool full = end - begin == blocksize;
    const float a = std::max(am, detail::kTinyAbsmax);
    q.absmax[static_cast<size_t>(b)] = full ? am : a;
    for (int64_t i = begin; i < end; ++i) {
      const float s = full ? x[i] * (1.0f / a) : x[i] / a;
      codes[static_cast<size_t>(i)] = detail::bucket_code(bk, std::clamp(s, -1.0f, 1.0f));
    }
  }
  for (int64_t i = 0; i < (n + 1) / 2; ++i)
    q.packed[static_cast<size_t>(i)] =
        static_cast<uint8_t>(codes[static_cast<size_t>(2 * i)] << 4 | codes[static_cast<size_t>(2 * i + 1)]);
  if (double_quant) detail::double_quantize<false>(q);
  return q;
}

inline void dequantize_4bit(const Quant4& q, float* out) {
  detail::check_dequant_sizes(q);
  const int64_t n = q.numel();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = i / q.blocksize;
    float scale = 0.0f;
    if (q.nested) {
      const float p = detail::mul_f32(q.nested_code[q.absmax_q[static_cast<size_t>(b)]],
                                      q.nested_absmax[static_cast<size_t>(b / q.nested_blocksize)]);
      scale = p + q.nested_offset;
    } else {
      scale = q.absmax[static_cast<size_t>(b)];
    }
    const uint8_t byte = q.packed[static_cast<size_t>(i / 2)];
    out[i] = q.code[i % 2 == 0 ? byte >> 4 : byte & 15] * scale;
  }
}

}  // namespace ref

}  // namespace distill::quant
