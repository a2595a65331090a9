// Runs the attention backward kernels of kernels/attention_bwd.cu on the CPU, thread by thread, through the
// warp emulator of emu.hpp, and compares dq, dk, dv with ref::attention_backward (double), fed with out and
// lse of cpu::attention_forward. Covers both versions (v1 simple, v2 tensor cores), f32 and bf16, causal,
// non-causal, GQA (with and without the split dk/dv grid), MQA, sliding windows (causal and symmetric), the
// decode offset, tile remainders and D in {64, 128, 256}; plus the mask-range helpers against brute force.
// Each case runs with cp.async copies landing early and late (see emu.hpp).
//
// Build and run from the repository root (no GPU needed; about a minute):
//   g++ -std=c++20 -O2 -fno-strict-aliasing -DDISTILL_ATTN_EMULATE -Iinclude -Ikernels -I/usr/local/cuda/include \
//       -I/usr/include/eigen3 -fopenmp kernels/dev/attention_bwd/emu_check.cpp -o /tmp/attn_bwd_emu &&
//       /tmp/attn_bwd_emu
// An argument filters the cases by substring.
#include <cstdio>
#include <string>
#include <vector>

#include "distill/ops/attention_cpu.hpp"
#include "distill/ops/attention_ref.hpp"
// The kernels, compiled for the emulator (DISTILL_ATTN_EMULATE must be defined on the command line).
#include "attention_bwd.cu"

using namespace distill;
namespace ab = distill::cuda::attn_bwd;

namespace {

int g_fail = 0, g_pass = 0;

struct Tol {
  double atol, rtol;
};
constexpr Tol kF32{1e-5, 1e-4}, kBf16{1.6e-2, 1.6e-2};  // tests/harness.hpp: kTolF32, kTolBf16

template <class T>
bool close(const Tensor<T>& got, const Tensor<double>& want, Tol tol, const std::string& what) {
  double max_abs = 0;
  int64_t bad = -1;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double g = static_cast<double>(to_compute<T>(got.data()[i])), e = want.data()[i];
    const double a = std::abs(g - e);
    max_abs = std::isnan(a) ? INFINITY : std::max(max_abs, a);
    if (!(a <= tol.atol + tol.rtol * std::abs(e)) && bad < 0) bad = i;
  }
  if (bad >= 0) {
    std::printf("  FAIL %s: max abs err %.3g; first failure at %lld: got %.6g want %.6g\n", what.c_str(), max_abs,
                static_cast<long long>(bad), static_cast<double>(to_compute<T>(got.data()[bad])), want.data()[bad]);
    return false;
  }
  std::printf("  ok   %s: max abs err %.3g\n", what.c_str(), max_abs);
  return true;
}

struct Case {
  std::string name;
  int64_t B, T, S, H, KV, D;
  bool causal;
  int64_t window;
  double scale = 0;
  double qk = 1.0;
};

// Runs one case through the emulated kernels. path: simple or tensor core; split and dkdv as in ab::TcChoice.
template <class T>
void run_case(const Case& c, ab::Path path, int split, emu::Mode mode, int dkdv = 0) {
  using E = typename ab::RawOf<T>::type;
  const AttentionOptions o{c.causal, c.window, c.scale};
  const std::string tag = c.name + (path == ab::Path::kSimple ? " [simple" : " [tc") +
                          (dkdv == 2   ? " v2"
                           : dkdv == 3 ? " v3"
                                       : "") +
                          (split == 1 ? " split" : "") + (mode == emu::Mode::kEarly ? " early]" : " late]");
  std::printf("%s\n", tag.c_str());
  const uint64_t seed = 11;
  auto q = Tensor<T>::uniform({c.B, c.T, c.H, c.D}, seed, -c.qk, c.qk);
  auto k = Tensor<T>::uniform({c.B, c.S, c.KV, c.D}, seed + 1, -c.qk, c.qk);
  auto v = Tensor<T>::uniform({c.B, c.S, c.KV, c.D}, seed + 2);
  auto go = Tensor<T>::uniform({c.B, c.T, c.H, c.D}, seed + 3);
  const auto fwd = cpu::attention_forward(q, k, v, o);
  const auto want =
      ref::attention_backward(q.template cast<double>(), k.template cast<double>(), v.template cast<double>(),
                              fwd.out.template cast<double>(), go.template cast<double>(), o);
  const auto d = distill::detail::attention_dims(q.shape(), k.shape(), v.shape(), o, "emu");
  const ab::Params p = ab::make_params(d, o);
  auto dq = Tensor<T>::full(q.shape(), T(7)), dk = Tensor<T>::full(k.shape(), T(7)),
       dv = Tensor<T>::full(v.shape(), T(7));  // garbage: the kernels must overwrite every element
  std::vector<float> delta(static_cast<size_t>(d.B * d.H * d.T), 1e30f);
  static std::vector<std::vector<float>> bufs;
  bufs.clear();
  auto alloc = [](size_t n, void*) -> float* {
    bufs.emplace_back(n, 3e30f);
    return bufs.back().data();
  };
  ab::Scratch sc;
  sc.delta = delta.data();
  emu::M().mode = mode;
  const ab::Path took = ab::run_backward<E>(
      reinterpret_cast<const E*>(q.data()), reinterpret_cast<const E*>(k.data()), reinterpret_cast<const E*>(v.data()),
      reinterpret_cast<const E*>(fwd.out.data()), reinterpret_cast<const E*>(go.data()), fwd.lse.data(),
      reinterpret_cast<E*>(dq.data()), reinterpret_cast<E*>(dk.data()), reinterpret_cast<E*>(dv.data()), sc, p, path,
      ab::TcChoice{split, dkdv}, alloc, nullptr);
  if (took != path) {
    std::printf("  FAIL took the other path\n");
    ++g_fail;
    return;
  }
  const Tol tol = std::is_same_v<T, float> ? kF32 : kBf16;
  const bool ok = close(dq, want.dq, tol, "dq") & close(dk, want.dk, tol, "dk") & close(dv, want.dv, tol, "dv");
  (ok ? g_pass : g_fail) += 1;
}

// query_range, key_range and tile_fully_visible against the element-wise mask.
void check_ranges() {
  int bad = 0, n = 0;
  for (int causal = 0; causal < 2; ++causal)
    for (int64_t window : {0, 1, 3, 7, 40})
      for (int64_t T : {1, 5, 23})
        for (int64_t S : {23, 30}) {
          if ((causal || window) && S < T) continue;
          ab::Params p{1, T, S, 1, 1, 16, 1, S - T, window, causal != 0, 1.f, 1.f};
          const AttentionOptions o{causal != 0, window, 0};
          for (int64_t j0 = 0; j0 < S; ++j0)
            for (int64_t j1 = j0 + 1; j1 <= S; ++j1) {
              int64_t lo = T, hi = 0;
              for (int64_t t = 0; t < T; ++t)
                for (int64_t j = j0; j < j1; ++j)
                  if (distill::detail::attention_key_visible(t + S - T, j, o))
                    lo = std::min(lo, t), hi = std::max(hi, t + 1);
              const ab::Range r = ab::query_range(j0, j1, p);
              const bool empty = hi <= lo, rempty = r.hi <= r.lo;
              ++n;
              if (empty != rempty || (!empty && (r.lo != lo || r.hi != hi))) {
                if (bad++ < 5)
                  std::printf(
                      "  query_range(%lld, %lld) causal=%d w=%lld T=%lld S=%lld: got [%lld, %lld) want [%lld, %lld)\n",
                      (long long)j0, (long long)j1, causal, (long long)window, (long long)T, (long long)S,
                      (long long)r.lo, (long long)r.hi, (long long)lo, (long long)hi);
              }
              for (int64_t t0 = 0; t0 < T; ++t0)
                for (int64_t t1 = t0 + 1; t1 <= T; ++t1) {
                  bool all = true;
                  for (int64_t t = t0; t < t1; ++t)
                    for (int64_t j = j0; j < j1; ++j) all &= distill::detail::attention_key_visible(t + S - T, j, o);
                  ++n;
                  if (all != ab::tile_fully_visible(t0, t1, j0, j1, p) && bad++ < 5)
                    std::printf("  tile_fully_visible mismatch\n");
                }
            }
          for (int64_t t = 0; t < T; ++t) {
            const ab::Range r = ab::key_range(t + S - T, p);
            for (int64_t j = 0; j < S; ++j) {
              ++n;
              if ((j >= r.lo && j < r.hi) != distill::detail::attention_key_visible(t + S - T, j, o) && bad++ < 5)
                std::printf("  key_range mismatch\n");
            }
          }
        }
  std::printf("mask ranges: %d checks, %d mismatches\n", n, bad);
  (bad ? g_fail : g_pass) += 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  auto want = [&](const std::string& name) { return filter.empty() || name.find(filter) != std::string::npos; };
  if (want("ranges")) check_ranges();

  const std::vector<Case> simple_cases = {
      {"f32 causal T=S=37 D=16", 1, 37, 37, 2, 2, 16, true, 0},
      {"f32 non-causal T=20 S=33 D=24 scale=0.3", 2, 20, 33, 2, 1, 24, false, 0, 0.3},
      {"f32 GQA H=4 KV=2 causal window=9 T=S=35 D=64", 1, 35, 35, 4, 2, 64, true, 9},
      {"f32 symmetric window=6 T=S=29 D=8", 1, 29, 29, 2, 2, 8, false, 6},
      {"f32 decode T=3 S=40 causal window=11 D=32", 1, 3, 40, 3, 1, 32, true, 11},
      {"f32 D=256 causal T=S=18", 1, 18, 18, 1, 1, 256, true, 0},
  };
  for (const auto& c : simple_cases)
    if (want(c.name)) run_case<float>(c, ab::Path::kSimple, -1, emu::Mode::kLate);
  const Case bsimple{"bf16 simple GQA causal T=S=33 D=64", 1, 33, 33, 4, 2, 64, true, 0};
  if (want(bsimple.name)) run_case<bf16>(bsimple, ab::Path::kSimple, -1, emu::Mode::kLate);

  const std::vector<Case> tc_cases = {
      {"bf16 D=64 causal T=S=130", 1, 130, 130, 2, 2, 64, true, 0},
      {"bf16 D=64 non-causal T=70 S=150 GQA H=4 KV=2", 1, 70, 150, 4, 2, 64, false, 0},
      {"bf16 D=128 causal T=S=100 GQA H=4 KV=2", 1, 100, 100, 4, 2, 128, true, 0},
      {"bf16 D=128 causal window=40 T=S=150", 1, 150, 150, 2, 1, 128, true, 40},
      {"bf16 D=128 symmetric window=30 T=S=140", 1, 140, 140, 1, 1, 128, false, 30},
      {"bf16 D=128 decode T=3 S=150 causal MQA H=3", 2, 3, 150, 3, 1, 128, true, 0},
      {"bf16 D=128 decode T=20 S=90 causal window=25", 1, 20, 90, 2, 2, 128, true, 25},
      {"bf16 D=256 causal T=S=80 MQA H=2", 1, 80, 80, 2, 1, 256, true, 0},
      {"bf16 D=256 non-causal T=S=40 peaky", 1, 40, 40, 1, 1, 256, false, 0, 0, 3.0},
  };
  for (const auto& c : tc_cases) {
    if (!want(c.name)) continue;
    run_case<bf16>(c, ab::Path::kTensorCore, 0, emu::Mode::kLate);  // the default dk/dv kernel
    run_case<bf16>(c, ab::Path::kTensorCore, 0, emu::Mode::kEarly);
    if (c.H > c.KV) run_case<bf16>(c, ab::Path::kTensorCore, 1, emu::Mode::kLate);
    if (c.D <= 128) {  // v2 dk/dv as well (the default there is v3)
      run_case<bf16>(c, ab::Path::kTensorCore, 0, emu::Mode::kLate, 2);
      if (c.H > c.KV) run_case<bf16>(c, ab::Path::kTensorCore, 1, emu::Mode::kEarly, 2);
    }
  }
  std::printf("%d passed, %d failed (%llu warp operations emulated)\n", g_pass, g_fail,
              static_cast<unsigned long long>(emu::M().warp_ops));
  if (g_pass + g_fail == 0) {
    std::printf("no case matched the filter: nothing was checked\n");
    return 1;
  }
  return g_fail ? 1 : 0;
}
