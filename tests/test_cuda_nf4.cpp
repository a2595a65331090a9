// The 4-bit kernels (kernels/nf4.cu) against the CPU: dequantize bit for bit against quant::dequantize_4bit (+ the
// casts of nn::nf4_weight) for NF4/FP4, with and without double quant, f32/bf16/f16 checkpoints into f32/bf16/f16;
// the GEMV for M = 1..16 and every K partition count, the training path (dequantize + cuBLASLt) forward and
// backward, the routing between them and the unsupported-layout message. Odd shapes and the model shapes
// (Gemma3-1B, Qwen3-4B; [out, in]); fresh random inputs each run (the seed is printed); every output is
// poisoned with NaN before the launch, so an element the kernel does not write fails.
// Tolerance of the products (named): f32 accumulation over K is checked against the exact sum with a bound of
// 1e-5·Σ|w·x| (kAccum), plus, for 16-bit outputs, one rounding of the result (2^-8 relative for bf16, 2^-11 for
// f16). The weights themselves are exact: the reference multiplies the very values nf4_weight returns.
// Also built for the CPU emulator (kernels/dev/nf4/, DISTILL_KERNEL_EMULATION): smaller shapes there.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/cuda/elementwise.hpp"
#include "distill/cuda/nf4.hpp"
#include "distill/nn/nf4_linear.hpp"

using namespace distill;
using namespace distill::test;

namespace {

constexpr double kAccum = 1e-5;

// Fresh inputs every run; DISTILL_TEST_SEED=<n> replays a run (its seed is printed).
uint64_t fresh_seed() {
  static const uint64_t base = [] {
    uint64_t s = 0;
    if (const char* e = std::getenv("DISTILL_TEST_SEED"))
      s = std::strtoull(e, nullptr, 10);
    else
      s = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
    MESSAGE("random seed of this run: ", s, " (DISTILL_TEST_SEED replays it)");
    return s;
  }();
  static uint64_t k = 0;
  return base + 7919 * ++k;
}

// A weight like a trained projection's (normal-ish, std ~0.02 with some outliers), quantized as bnb does.
quant::Quant4 make_weight(int64_t rows, int64_t cols, quant::QuantType t, bool nested, io::StDtype dtype,
                          int64_t blocksize = 64) {
  const uint64_t seed = fresh_seed();
  Tensor<float> w = Tensor<float>::uniform({rows, cols}, seed, -0.05, 0.05);
  float* p = w.data();
  for (int64_t i = 0; i < w.numel(); i += 97) p[i] *= 6.0f;  // outliers set some blocks' absmax
  if (dtype == io::StDtype::BF16) w = w.cast<bf16>().cast<float>();
  if (dtype == io::StDtype::F16) w = w.cast<f16>().cast<float>();
  return quant::quantize_4bit(w.data(), {rows, cols}, t, blocksize, nested, dtype);
}

template <class T>
T nan_value() {
  return static_cast<T>(std::numeric_limits<float>::quiet_NaN());
}

template <class T>
Tensor<T, Cuda> poisoned(const Shape& s) {
  auto t = Tensor<T, Cuda>::empty(s);
  cuda::fill<T>(t.data(), nan_value<T>(), t.numel());
  return t;
}

template <class T>
const char* tname() {
  return std::is_same_v<T, float> ? "f32" : std::is_same_v<T, bf16> ? "bf16" : "f16";
}

// y = x·Wᵀ against the exact sum of the products of the values the kernels multiply (x and nf4_weight in T).
template <class T>
void check_product(const Tensor<T>& got, const Tensor<T>& x, const Tensor<T>& w, bool trans_w,
                   const std::string& what) {
  // trans_w: y[m, n] = Σ_k x[m, k]·w[n, k]; else y[m, n] = Σ_k x[m, k]·w[k, n].
  const int64_t M = x.dim(0), K = x.dim(1), N = trans_w ? w.dim(0) : w.dim(1);
  REQUIRE(got.shape() == Shape{M, N});
  const double out_rel = std::is_same_v<T, float> ? 0.0 : std::is_same_v<T, bf16> ? 1.0 / 256 : 1.0 / 2048;
  int64_t bad = 0;
  std::string first;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double wv = static_cast<double>(to_compute<T>(trans_w ? w.data()[n * K + k] : w.data()[k * N + n]));
        const double p = static_cast<double>(to_compute<T>(x.data()[m * K + k])) * wv;
        s += p;
        a += std::abs(p);
      }
      const double g = static_cast<double>(to_compute<T>(got.data()[m * N + n]));
      const double tol = kAccum * a + out_rel * std::abs(s) + 1e-30;
      if (!(std::abs(g - s) <= tol) && bad++ == 0) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "[%lld, %lld] = %.9g, exact %.9g, tolerance %.3g", static_cast<long long>(m),
                      static_cast<long long>(n), g, s, tol);
        first = buf;
      }
    }
  CHECK_MESSAGE(bad == 0, what, ": ", bad, " of ", M * N, " outputs off; first ", first);
}

struct Case {
  quant::QuantType type;
  bool nested;
  io::StDtype dtype;
};
const Case kCases[] = {{quant::QuantType::Nf4, true, io::StDtype::BF16},
                       {quant::QuantType::Nf4, false, io::StDtype::F32},
                       {quant::QuantType::Fp4, true, io::StDtype::F16},
                       {quant::QuantType::Fp4, false, io::StDtype::BF16}};

std::string case_name(const Case& c, int64_t r, int64_t k) {
  return std::string(quant::quant_type_name(c.type)) + (c.nested ? "+dq " : " ") + io::dtype_name(c.dtype) + " [" +
         std::to_string(r) + ", " + std::to_string(k) + "]";
}

#ifdef DISTILL_KERNEL_EMULATION
// The emulator runs every thread as a fiber: smaller shapes (still with partial splits and both orientations).
const std::vector<std::pair<int64_t, int64_t>> kModelShapes{{256, 1152}, {96, 2560}};
#else
// [out, in]: Gemma3-1B down, gate/up, o, k/v; Qwen3-4B down, gate/up, o.
const std::vector<std::pair<int64_t, int64_t>> kModelShapes{{1152, 6912}, {6912, 1152}, {1152, 1024}, {256, 1152},
                                                            {2560, 9728}, {9728, 2560}, {2560, 4096}};
#endif
// Columns that are a multiple of 8 but not of 32 or 256 (partial steps), a single row, more rows than a block.
const std::vector<std::pair<int64_t, int64_t>> kOddShapes{{1, 32},   {7, 40},     {37, 64},
                                                          {3, 1056}, {129, 2048}, {2, 2200}};

template <class T>
void dequant_case(const quant::Quant4& q, const std::string& tag) {
  const auto dev = cuda::upload_nf4(q);
  const Tensor<T> want = nn::nf4_weight<T, Cpu>(q);
  const int64_t n = q.numel();
  // Vector path (aligned) and scalar path (output one element off alignment).
  auto out = poisoned<T>({n + 1});
  cuda::nf4_dequantize<T>(dev->view(), out.data());
  Tensor<T> got = to_host(out).reshape({n + 1});
  CHECK_MESSAGE(std::memcmp(got.data(), want.data(), sizeof(T) * static_cast<size_t>(n)) == 0, "dequantize (aligned) ",
                tname<T>(), " ", tag, " is not bit-identical to the CPU");
  cuda::fill<T>(out.data(), nan_value<T>(), n + 1);
  cuda::nf4_dequantize<T>(dev->view(), out.data() + 1);
  got = to_host(out);
  CHECK_MESSAGE(std::memcmp(got.data() + 1, want.data(), sizeof(T) * static_cast<size_t>(n)) == 0,
                "dequantize (unaligned) ", tname<T>(), " ", tag, " is not bit-identical to the CPU");
}

template <class T>
void gemv_case(const quant::Quant4& q, int64_t M, int splits, const std::string& tag, int version = 0) {
  const auto dev = cuda::upload_nf4(q);
  const int64_t rows = q.shape[0], cols = q.shape[1];
  const Tensor<T> x = Tensor<float>::uniform({M, cols}, fresh_seed()).cast<T>();
  const Tensor<T> w = nn::nf4_weight<T, Cpu>(q);
  const auto xd = to_dev(x);
  // y with a padded row stride: the padding must stay poisoned (nothing written outside [M, rows]).
  const int64_t ldy = rows + 3;
  auto y = poisoned<T>({M, ldy});
  cuda::nf4_gemv<T>(xd.data(), cols, M, dev->view(), y.data(), ldy, splits, version);
  const Tensor<T> yh = to_host(y);
  auto packed = Tensor<T>::empty({M, rows});
  int64_t pad_written = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < ldy; ++c) {
      const T v = yh.data()[m * ldy + c];
      if (c < rows)
        packed.data()[m * rows + c] = v;
      else if (!std::isnan(static_cast<float>(to_compute<T>(v))))
        ++pad_written;
    }
  CHECK_MESSAGE(pad_written == 0, "gemv wrote ", pad_written, " elements outside y [", tag, "]");
  check_product(
      packed, x, w, true,
      std::string("gemv ") + tname<T>() + " M=" + std::to_string(M) + " splits=" + std::to_string(splits) + " " + tag);
}

}  // namespace

TEST_CASE("cuda:nf4_dequantize is bit-identical to the CPU") {
  for (const Case& c : kCases) {
    for (auto [r, k] : kOddShapes) {
      const auto q = make_weight(r, k, c.type, c.nested, c.dtype);
      dequant_case<float>(q, case_name(c, r, k));
      dequant_case<bf16>(q, case_name(c, r, k));
      dequant_case<f16>(q, case_name(c, r, k));
    }
  }
  // Element counts that are not a multiple of 32 (scalar path, partial last block, odd count), other blocksizes.
  for (auto [r, k, bs] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {3, 7, 64}, {5, 13, 32}, {1, 1, 64}, {9, 100, 128}, {4, 4096, 4096}}) {
    const auto q = make_weight(r, k, quant::QuantType::Nf4, true, io::StDtype::BF16, bs);
    dequant_case<bf16>(q, "bs " + std::to_string(bs) + " [" + std::to_string(r) + ", " + std::to_string(k) + "]");
    dequant_case<float>(q, "bs " + std::to_string(bs) + " [" + std::to_string(r) + ", " + std::to_string(k) + "]");
  }
  for (auto [r, k] : kModelShapes) {
    const Case c = kCases[0];  // the student's format: NF4, double quant, bf16
    const auto q = make_weight(r, k, c.type, c.nested, c.dtype);
    dequant_case<bf16>(q, case_name(c, r, k));
  }
}

TEST_CASE("cuda:nf4_gemv against the CPU reference, M = 1..16, both versions, every split") {
  auto v4_fits = [](const quant::Quant4& q) { return q.shape[1] % 64 == 0 && q.blocksize % 16 == 0; };
  for (const Case& c : kCases) {
    for (auto [r, k] : kOddShapes) {
      const auto q = make_weight(r, k, c.type, c.nested, c.dtype);
      const std::string tag = case_name(c, r, k);
      for (int64_t M : {1, 2, 3, 5, 8, 13, 16}) {
        gemv_case<bf16>(q, M, 0, tag);     // the launcher's choice (v4 for M >= 2 where it fits)
        gemv_case<bf16>(q, M, 1, tag, 3);  // CUDA cores, one partition
        if (v4_fits(q)) gemv_case<bf16>(q, M, 1, tag, 4);
        gemv_case<float>(q, M, 1, tag);
      }
      gemv_case<f16>(q, 4, 0, tag);
    }
  }
  {  // K partitions: 1 .. more than there are units (clamped), uneven last partition; v3 and v4
    const auto q3 = make_weight(70, 4096 + 8 * 5, quant::QuantType::Nf4, true, io::StDtype::BF16);
    const auto q4 = make_weight(70, 4096 + 64 * 5, quant::QuantType::Fp4, true, io::StDtype::BF16);
    for (int s : {1, 2, 3, 7, 16, 500}) {
      gemv_case<bf16>(q3, 3, s, "splits", 3);
      gemv_case<bf16>(q4, 3, s, "splits", 4);
      gemv_case<bf16>(q4, 16, s, "splits", 4);
    }
  }
  for (auto [r, k] : kModelShapes) {
    const Case c = kCases[0];
    const auto q = make_weight(r, k, c.type, c.nested, c.dtype);
    for (int64_t M : {1, 16}) gemv_case<bf16>(q, M, 0, case_name(c, r, k));
    gemv_case<bf16>(q, 16, 0, case_name(c, r, k), 3);
  }
}

TEST_CASE("cuda:nf4_gemv is deterministic") {
  const auto q = make_weight(300, 3072, quant::QuantType::Nf4, true, io::StDtype::BF16);
  const auto dev = cuda::upload_nf4(q);
  const auto x = to_dev(Tensor<float>::uniform({5, 3072}, fresh_seed()).cast<bf16>());
  auto a = poisoned<bf16>({5, 300}), b = poisoned<bf16>({5, 300});
  cuda::nf4_gemv<bf16>(x.data(), 3072, 5, dev->view(), a.data(), 300, 3);
  cuda::nf4_gemv<bf16>(x.data(), 3072, 5, dev->view(), b.data(), 300, 3);
  CHECK(same_bits(a, b));
}

TEST_CASE("cuda:nf4_matmul routes M <= 16 to the GEMV, larger M to dequantize + cuBLASLt; backward dy·W") {
  const auto q = make_weight(72, 160, quant::QuantType::Nf4, true, io::StDtype::BF16);
  const auto dev = cuda::upload_nf4(q);
  const Tensor<bf16> w = nn::nf4_weight<bf16, Cpu>(q);
  for (int64_t M : {1, 16, 17, 64}) {
    const Tensor<bf16> x = Tensor<float>::uniform({M, 160}, fresh_seed()).cast<bf16>();
    const auto before = cuda::nf4_counters();
    const auto y = cuda::nf4_matmul(to_dev(x), *dev);
    const auto after = cuda::nf4_counters();
    if (M <= 16)
      CHECK(after.gemv == before.gemv + 1);
    else
      CHECK(after.dequant_gemm == before.dequant_gemm + 1);
    check_product(to_host(y), x, w, true, "nf4_matmul M=" + std::to_string(M));
    const Tensor<bf16> dy = Tensor<float>::uniform({M, 72}, fresh_seed()).cast<bf16>();
    check_product(to_host(cuda::nf4_matmul_dx(to_dev(dy), *dev)), dy, w, false, "nf4_matmul_dx M=" + std::to_string(M));
  }
  for (auto [r, k] : kModelShapes) {  // the training path on the model shapes (M kept small for the reference)
    const auto qm = make_weight(r, k, quant::QuantType::Nf4, true, io::StDtype::BF16);
    const auto dm = cuda::upload_nf4(qm);
    const Tensor<bf16> wm = nn::nf4_weight<bf16, Cpu>(qm);
    const Tensor<bf16> x = Tensor<float>::uniform({24, k}, fresh_seed()).cast<bf16>();
    check_product(to_host(cuda::nf4_matmul(to_dev(x), *dm)), x, wm, true,
                  "training forward " + case_name(kCases[0], r, k));
    const Tensor<bf16> dy = Tensor<float>::uniform({24, r}, fresh_seed()).cast<bf16>();
    check_product(to_host(cuda::nf4_matmul_dx(to_dev(dy), *dm)), dy, wm, false,
                  "training backward " + case_name(kCases[0], r, k));
  }
}

TEST_CASE("cuda:nf4_gemv picks v4 (tensor cores) for bf16, M >= 2 and in_features % 64 == 0, else v3") {
  const auto q = make_weight(40, 128, quant::QuantType::Nf4, true, io::StDtype::BF16);
  const auto dev = cuda::upload_nf4(q);
  for (int64_t M : {1, 2, 16}) {
    const auto xb = to_dev(Tensor<float>::uniform({M, 128}, fresh_seed()).cast<bf16>());
    const auto xf = to_dev(Tensor<float>::uniform({M, 128}, fresh_seed()));
    auto yb = poisoned<bf16>({M, 40});
    auto yf = poisoned<float>({M, 40});
    auto before = cuda::nf4_counters();
    cuda::nf4_gemv<bf16>(xb.data(), 128, M, dev->view(), yb.data(), 40);
    CHECK(cuda::nf4_counters().gemv_v4 - before.gemv_v4 == (M >= 2 ? 1 : 0));
    before = cuda::nf4_counters();
    cuda::nf4_gemv<float>(xf.data(), 128, M, dev->view(), yf.data(), 40);
    CHECK(cuda::nf4_counters().gemv_v4 == before.gemv_v4);
  }
  const auto xf = to_dev(Tensor<float>::uniform({2, 128}, fresh_seed()));
  auto yf = poisoned<float>({2, 40});
  CHECK_THROWS_WITH_AS(cuda::nf4_gemv<float>(xf.data(), 128, 2, dev->view(), yf.data(), 40, 0, 4),
                       doctest::Contains("version 4 is not available"), Error);
}

TEST_CASE("cuda:nf4_gemv says why it cannot take a layout; nf4_matmul falls back") {
  const auto q = make_weight(10, 52, quant::QuantType::Nf4, true, io::StDtype::BF16);  // 52: not a multiple of 8
  const auto dev = cuda::upload_nf4(q);
  const Tensor<float> x = Tensor<float>::uniform({2, 52}, fresh_seed());
  const auto xd = to_dev(x);
  auto y = poisoned<float>({2, 10});
  std::string msg;
  try {
    cuda::nf4_gemv<float>(xd.data(), 52, 2, dev->view(), y.data(), 10);
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("in_features = 52 is not a multiple of 8") != std::string::npos);
  CHECK(msg.find("nf4_matmul") != std::string::npos);
  CHECK(cuda::nf4_gemv_unsupported_reason(dev->view(), 17, xd.data(), 52, 4).find("M = 17") != std::string::npos);
  const auto before = cuda::nf4_counters();
  check_product(to_host(cuda::nf4_matmul(xd, *dev)), x, nn::nf4_weight<float, Cpu>(q), true, "fallback");
  CHECK(cuda::nf4_counters().dequant_gemm == before.dequant_gemm + 1);
}
