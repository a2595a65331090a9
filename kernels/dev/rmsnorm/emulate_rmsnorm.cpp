// kernels/rmsnorm.cu run on the CPU by the fiber emulator (emu.hpp): every launcher path (16-byte and
// one-element packs, 1/2/4/8 packs per thread, rows sharing a block, rows of more than a warp, long rows,
// persistent backward grids that loop) against the CPU fast path and ref::. No GPU needed:
//   g++ -std=c++20 -O1 -g -ffp-contract=off -fsanitize=address,undefined -DDISTILL_KERNEL_EMULATION \
//       -I include -I /usr/include/eigen3 -I /usr/local/cuda/include -fopenmp \
//       kernels/dev/rmsnorm/emulate_rmsnorm.cpp kernels/dev/rmsnorm/emu_runtime.cpp -o /tmp/emulate_rmsnorm &&
//       /tmp/emulate_rmsnorm
#include "emu.hpp"
// the kernel source, as nvcc would see it
#include "../../rmsnorm.cu"
// then the host-side references
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "distill/ops/rmsnorm.hpp"

using namespace distill;

namespace {

int failures = 0;

template <class T>
double val(T v) {
  return static_cast<double>(to_compute<T>(v));
}

// |got - want| <= atol + rtol * |want| everywhere; prints the first failure.
template <class T, class U>
void check_close(const T* got, const Tensor<U>& want, double atol, double rtol, const std::string& what) {
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double g = val(got[i]), e = val(want.data()[i]);
    if (!(std::abs(g - e) <= atol + rtol * std::abs(e))) {
      std::printf("FAIL %s: index %lld got %.9g want %.9g\n", what.c_str(), static_cast<long long>(i), g, e);
      ++failures;
      return;
    }
  }
}

// `n` values at an offset of `shift` elements from a 16-byte aligned allocation of exactly n + shift
// elements (shift 1: not 16-byte aligned), so AddressSanitizer sees any access past either end.
template <class T>
struct Buf {
  std::unique_ptr<T[]> storage;
  T* p;
  Buf(int64_t n, int shift) : storage(new T[static_cast<size_t>(n + shift)]) {
    if (reinterpret_cast<uintptr_t>(storage.get()) % 16 != 0) emu::fail("operator new[] is not 16-byte aligned");
    p = storage.get() + shift;
    std::memset(static_cast<void*>(p), 0xFF, sizeof(T) * static_cast<size_t>(n));  // garbage, as device memory
  }
};

template <class T>
Buf<T> copy_of(const Tensor<T>& t, int shift) {
  Buf<T> b(t.numel(), shift);
  std::copy_n(t.data(), t.numel(), b.p);
  return b;
}

template <class T>
void run_case(const Shape& s, RmsNormStyle style, int shift, uint64_t seed) {
  const int64_t cols = s.back(), rows = s.numel() / cols;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1.6e-2;
  const std::string tag = std::string(dtype_name_v<T>) + (style == RmsNormStyle::Weight ? " Weight " : " OnePlus ") +
                          s.str() + (shift ? " unaligned" : "");
  const auto x = Tensor<float>::uniform(s, seed, -2.0, 2.0).cast<T>();
  const auto w = Tensor<float>::uniform({cols}, seed + 1, 0.5, 1.5).cast<T>();
  const auto g = Tensor<float>::uniform(s, seed + 2).cast<T>();
  auto bx = copy_of(x, shift), bw = copy_of(w, shift), bg = copy_of(g, shift);
  Buf<T> by(s.numel(), shift), bdx(s.numel(), shift), bdw(cols, shift);
  std::vector<float> rstd(static_cast<size_t>(rows));

  cuda::rms_norm_forward<T>(bx.p, bw.p, by.p, rstd.data(), rows, cols, 1e-6f, style);
  const auto cpu_fwd = cpu::rms_norm_forward(x, w, 1e-6, style);
  // rstd against double (the CPU's Eigen sum and ours differ in order: a few ulp over long rows).
  auto rstd64 = Tensor<double>::empty({rows});
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < cols; ++j) ss += val(x.data()[r * cols + j]) * val(x.data()[r * cols + j]);
    rstd64.data()[r] = 1.0 / std::sqrt(ss / static_cast<double>(cols) + 1e-6);
  }
  check_close(rstd.data(), rstd64, 0, 1e-5, "rstd " + tag);
  if constexpr (std::is_same_v<T, float>) {
    check_close(by.p, cpu_fwd.y, 1e-5, 1e-5, "forward vs cpu " + tag);
  } else {
    int64_t diff = 0;
    for (int64_t i = 0; i < x.numel(); ++i) diff += bits_of(by.p[i]) != bits_of(cpu_fwd.y.data()[i]);
    if (diff * 100 > x.numel()) {
      std::printf("FAIL %s: %lld of %lld differ in bits from cpu\n", tag.c_str(), static_cast<long long>(diff),
                  static_cast<long long>(x.numel()));
      ++failures;
    }
  }
  check_close(by.p, ref::rms_norm(x, w, 1e-6, style), tol, tol, "forward vs ref " + tag);

  const auto want = ref::rms_norm_backward(x.template cast<double>(), w.template cast<double>(),
                                           g.template cast<double>(), 1e-6, style);
  const auto rs = Tensor<float>::from_vector({rows}, rstd);
  cuda::rms_norm_backward<T>(bx.p, bw.p, rstd.data(), bg.p, bdx.p, bdw.p, rows, cols, style);
  check_close(bdx.p, want.dx, tol, tol, "dx " + tag);
  // dw of Weight in 16 bits sums g * T(x̂) (the forward's rounding point), ref:: the exact x̂: over many rows
  // that differs by more than the bf16 tolerance, so there the CPU fast path is the reference.
  const auto cpu_bwd = cpu::rms_norm_backward(x, w, cpu_fwd.rstd, g, style);
  const bool exact_xhat = std::is_same_v<T, float> || style == RmsNormStyle::OnePlusWeight;
  const auto& dw_ref = exact_xhat ? want.dw : cpu_bwd.dw.template cast<double>();
  check_close(bdw.p, dw_ref, tol, tol, "dw " + tag);
  check_close(bdw.p, cpu_bwd.dw, tol, tol, "dw vs cpu " + tag);
  // dx alone, then dw alone, into fresh buffers.
  Buf<T> dx2(s.numel(), shift), dw2(cols, shift);
  cuda::rms_norm_backward<T>(bx.p, bw.p, rstd.data(), bg.p, dx2.p, static_cast<T*>(nullptr), rows, cols, style);
  check_close(dx2.p, want.dx, tol, tol, "dx alone " + tag);
  cuda::rms_norm_backward<T>(bx.p, bw.p, rstd.data(), bg.p, static_cast<T*>(nullptr), dw2.p, rows, cols, style);
  check_close(dw2.p, dw_ref, tol, tol, "dw alone " + tag);
  // Run to run: the same dw bits.
  if (std::memcmp(dw2.p, bdw.p, sizeof(T) * static_cast<size_t>(cols)) != 0) {
    std::printf("FAIL %s: dw differs between runs\n", tag.c_str());
    ++failures;
  }
  std::printf("ok %s (fwd plan: vec %d, %d threads x %d rows, %d packs; bwd: vec %d, %d x %d, %d packs)\n", tag.c_str(),
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0).vec,
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0).row_threads,
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0).rows_per_block,
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0).packs,
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0, true).vec,
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0, true).row_threads,
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0, true).rows_per_block,
              cuda::plan_rms_norm(cols, sizeof(T), shift == 0, true).packs);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::vector<Shape> shapes{{1, 1}, {3, 7}, {2, 5, 33}, {4, 128}, {700, 9}, {13, 256}, {9, 1152}, {5, 2560}};
  if (!quick) {
    shapes.push_back({2, 8192});
    shapes.push_back({2, 20000});  // long rows (f32 and bf16)
    shapes.push_back({3, 5001});   // long rows of one-element packs
  }
  uint64_t seed = 1;
  for (const Shape& s : shapes)
    for (RmsNormStyle style : {RmsNormStyle::Weight, RmsNormStyle::OnePlusWeight})
      for (int shift : {0, 1}) {
        run_case<float>(s, style, shift, seed += 3);
        run_case<bf16>(s, style, shift, seed += 3);
        if (s.back() == 1152) run_case<f16>(s, style, shift, seed += 3);
      }
  // rows == 0: dw = 0, nothing else.
  {
    float x = 0, w = 0, r = 0, g = 0, dw = 5;
    cuda::rms_norm_backward<float>(&x, &w, &r, &g, nullptr, &dw, 0, 1, RmsNormStyle::Weight);
    if (dw != 0) {
      std::printf("FAIL rows == 0: dw %g\n", dw);
      ++failures;
    }
  }
  std::printf("%d failures; %llu launches, %llu blocks emulated\n", failures,
              static_cast<unsigned long long>(emu::st().launches),
              static_cast<unsigned long long>(emu::st().blocks_run));
  return failures ? 1 : 0;
}
