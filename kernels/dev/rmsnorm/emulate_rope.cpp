// kernels/rope.cu run on the CPU by the fiber emulator (emu.hpp): 16-byte and one-pair paths, 32- and
// 64-bit indices, tables [T, D/2] and [B, T, D/2], forward and inverse, f32 / bf16 / f16 — bit for bit
// against the CPU path (built with -ffp-contract=off, the CPU's f32 loop has no FMAs either). No GPU needed:
//   g++ -std=c++20 -O1 -g -ffp-contract=off -fsanitize=address,undefined -DDISTILL_KERNEL_EMULATION \
//       -I include -I /usr/include/eigen3 -I /usr/local/cuda/include -fopenmp \
//       kernels/dev/rmsnorm/emulate_rope.cpp kernels/dev/rmsnorm/emu_runtime.cpp -o /tmp/emulate_rope &&
//       /tmp/emulate_rope
#include "emu.hpp"
// the kernel source, as nvcc would see it
#include "../../rope.cu"
// then the host-side references
#include <cstdio>
#include <string>
#include <vector>

#include "distill/ops/rope.hpp"

using namespace distill;

namespace {

int failures = 0;

// `n` values at an offset of `shift` elements from a 16-byte aligned allocation of exactly n + shift.
template <class T>
struct Buf {
  std::unique_ptr<T[]> storage;
  T* p;
  Buf(int64_t n, int shift) : storage(new T[static_cast<size_t>(n + shift)]) {
    if (reinterpret_cast<uintptr_t>(storage.get()) % 16 != 0) emu::fail("operator new[] is not 16-byte aligned");
    p = storage.get() + shift;
    std::memset(static_cast<void*>(p), 0xFF, sizeof(T) * static_cast<size_t>(n));
  }
};

template <class T>
Buf<T> copy_of(const Tensor<T>& t, int shift) {
  Buf<T> b(t.numel(), shift);
  std::copy_n(t.data(), t.numel(), b.p);
  return b;
}

template <class T>
bool same_bits(const T* a, const Tensor<T>& b) {
  return std::memcmp(a, b.data(), sizeof(T) * static_cast<size_t>(b.numel())) == 0;
}

// index64: call the 64-bit index kernel directly (real tensors would need 2^31 elements).
template <class T>
void run_case(const Shape& xs, bool per_batch, RopeConfig cfg, int shift, bool index64, uint64_t seed) {
  const std::string tag = std::string(dtype_name_v<T>) + " " + xs.str() + (per_batch ? " [B, T]" : " [T]") +
                          (shift ? " unaligned" : "") + (index64 ? " index64" : "");
  const Shape ps = per_batch ? Shape{xs[0], xs[1]} : Shape{xs[1]};
  auto pos = Tensor<int32_t>::empty(ps);
  for (int64_t i = 0; i < pos.numel(); ++i) pos.data()[i] = static_cast<int32_t>((i * 7919 + seed) % 40000);
  const auto tab = rope_cos_sin(pos, xs[3], cfg);
  const auto x = Tensor<float>::uniform(xs, seed, -3.0, 3.0).cast<T>();
  auto bx = copy_of(x, shift), bc = copy_of(tab.cos, shift), bs = copy_of(tab.sin, shift);
  for (bool inverse : {false, true}) {
    Buf<T> by(x.numel(), shift);
    if (index64) {
      using S = typename cuda::DevType<T>::type;
      const int64_t half = xs[3] / 2;
      cuda::RopePlan pl = cuda::plan_rope(xs[0], xs[1], xs[2], xs[3], sizeof(T), shift == 0);
      pl.index32 = false;
      const auto* sx = reinterpret_cast<const S*>(bx.p);
      auto* sy = reinterpret_cast<S*>(by.p);
      if (pl.vec == 1)
        cuda::launch_index<S, 1>(pl, sx, sy, bc.p, bs.p, xs[1], xs[2], half, per_batch, inverse ? -1.f : 1.f);
      else
        cuda::launch_index<S, 16 / sizeof(T)>(pl, sx, sy, bc.p, bs.p, xs[1], xs[2], half, per_batch,
                                              inverse ? -1.f : 1.f);
    } else {
      cuda::rope_rotate<T>(bx.p, by.p, bc.p, bs.p, xs[0], xs[1], xs[2], xs[3], per_batch, inverse);
    }
    const auto want = inverse ? cpu::rope_backward(x, tab) : cpu::rope_forward(x, tab);
    if (!same_bits(by.p, want)) {
      std::printf("FAIL %s %s: not bitwise equal to cpu\n", tag.c_str(), inverse ? "backward" : "forward");
      ++failures;
    }
  }
  std::printf("ok %s (vec %d)\n", tag.c_str(), cuda::plan_rope(xs[0], xs[1], xs[2], xs[3], sizeof(T), shift == 0).vec);
}

}  // namespace

int main() {
  struct Case {
    Shape x;
    bool per_batch;
    RopeConfig cfg;
  };
  const std::vector<Case> cases{{{2, 5, 3, 8}, false, {1e4}},        {{2, 4, 2, 6}, true, {5e6}},
                                {{1, 7, 1, 256}, false, {1e6, 8.0}}, {{3, 1, 4, 2}, true, {1e4, 3.0}},
                                {{2, 33, 5, 128}, true, {5e6}},      {{1, 40, 8, 128}, false, {5e6}},
                                {{1, 24, 4, 256}, false, {1e4}},     {{1, 3, 1, 16}, true, {1e4}}};
  uint64_t seed = 3;
  for (const Case& c : cases)
    for (int shift : {0, 1})
      for (bool index64 : {false, true}) {
        run_case<float>(c.x, c.per_batch, c.cfg, shift, index64, ++seed);
        run_case<bf16>(c.x, c.per_batch, c.cfg, shift, index64, ++seed);
        run_case<f16>(c.x, c.per_batch, c.cfg, shift, index64, ++seed);
      }
  std::printf("%d failures; %llu launches, %llu blocks emulated\n", failures,
              static_cast<unsigned long long>(emu::st().launches),
              static_cast<unsigned long long>(emu::st().blocks_run));
  return failures ? 1 : 0;
}
