// kernels/nf4.cu compiled for the CPU emulator (../rmsnorm/emu.hpp: every thread a fiber, barriers and warp
// shuffles checked), to link with ../rmsnorm/emu_runtime.cpp, emu_gemm.cpp and tests/test_cuda_nf4.cpp: the
// GPU test cases run on the CPU (ctest: emulator.nf4). See README.md in this folder.
// It adds what nf4.cu's tensor-core GEMV (v4) uses: mma.sync m16n8k16 bf16 with f32 accumulation, as a warp
// collective (all 32 lanes must arrive from the same line; each lane then gets its D fragment, computed from every
// lane's A/B/C fragments in the PTX ISA layout, products summed in double and rounded once).
#include <array>
#include <cstring>
#include <vector>

#include "../rmsnorm/emu.hpp"

namespace emu_nf4 {
struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
inline std::vector<std::array<MmaIn, 32>>& slots() {
  static std::vector<std::array<MmaIn, 32>> v;
  return v;
}
inline float bf(uint32_t r, int hi) {
  const uint32_t u = (hi ? r >> 16 : r & 0xFFFFu) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace emu_nf4

inline void nf4_mma_impl(int line, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  using emu_nf4::bf;
  emu::State& s = emu::st();
  const int tid = static_cast<int>(s.thread_idx.x + s.block_dim.x * (s.thread_idx.y + s.block_dim.y * s.thread_idx.z));
  const int w = tid / 32, lane = tid % 32;
  if ((w + 1) * 32 > s.nthreads) emu::fail("mma.sync in a partial warp");
  auto& sl = emu_nf4::slots();
  if (sl.size() < s.warps.size()) sl.resize(s.warps.size());
  sl[static_cast<size_t>(w)][static_cast<size_t>(lane)] = {
      {a[0], a[1], a[2], a[3]}, {b0, b1}, {d[0], d[1], d[2], d[3]}};
  emu::arrive(s.warps[static_cast<size_t>(w)].bar, 32, line, "mma.sync");
  const auto& all = sl[static_cast<size_t>(w)];
  auto A = [&](int r, int k) {
    return bf(all[(r % 8) * 4 + (k % 8) / 2].a[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
  };
  auto B = [&](int k, int n) { return bf(all[n * 4 + (k % 8) / 2].b[k >= 8 ? 1 : 0], k % 2); };
  auto C = [&](int r, int n) { return all[(r % 8) * 4 + n / 2].c[(r >= 8 ? 2 : 0) + n % 2]; };
  const int g = lane / 4, c = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int r = g + (i >= 2 ? 8 : 0), n = 2 * c + (i % 2);
    double acc = 0;
    for (int k = 0; k < 16; ++k) acc += static_cast<double>(A(r, k)) * static_cast<double>(B(k, n));
    out[i] = static_cast<float>(static_cast<double>(C(r, n)) + acc);
  }
  emu::arrive(s.warps[static_cast<size_t>(w)].bar, 32, line, "mma.sync");  // nobody overwrites before all have read
  std::memcpy(d, out, sizeof out);
}
#define nf4_mma(d, a, b0, b1) nf4_mma_impl(__LINE__, d, a, b0, b1)

// the kernel source, as nvcc would see it
#include "../../nf4.cu"
