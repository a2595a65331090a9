// A CPU emulator for the attention kernels (no GPU needed): every thread of a block runs as a fiber
// (ucontext) on one OS thread, blocks run one after another. It supplies the device primitives that
// kernels/attention_fwd.cu uses (mma.sync m16n8k16 bf16, ldmatrix x4 / x4.trans, cp.async, shuffles,
// __syncthreads) with the PTX ISA's fragment layouts, and checks what the hardware would not forgive:
//  - __syncthreads reached from different source lines by the threads of a block, or a warp collective
//    reached from different lines by the lanes of a warp (divergence), or a deadlock;
//  - ldmatrix / cp.async addresses outside the block's dynamic shared memory or not 16-byte aligned;
//    cp.async sources outside the registered global buffers;
//  - reads of shared memory nobody wrote: the buffer is filled with 0xFF (NaN as f32 and bf16) per block.
// cp.async copies run either at issue (Mode::eager) or at cp.async.wait (Mode::deferred): running both
// catches a missing wait (deferred) and, partly, a buffer overwritten while still read (eager).
// Include this, define DISTILL_ATTN_EMULATE, then include the kernel source.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};

namespace emu {

enum class Mode { eager, deferred };

struct Barrier {
  int count = 0;
  uint64_t gen = 0;
  int site = -1;
};

struct Pending {
  void* dst;
  const void* src;
  bool valid;
};

struct Fiber {
  ucontext_t ctx{};
  std::unique_ptr<char[]> stack;
  bool done = false;
  std::vector<Pending> pending;  // deferred cp.async copies
};

struct Warp {
  Barrier bar;
  const void* in[32] = {};
};

struct State {
  EmuDim3 thread, block, block_dim, grid_dim;
  ucontext_t sched{};
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_bar;
  int cur = 0;
  int nthreads = 0;
  uint64_t progress = 0;
  std::vector<unsigned char> smem;
  std::vector<std::pair<const char*, const char*>> globals;  // readable global ranges
  Mode mode = Mode::eager;
  std::function<void()> body;
  std::string error;
  uint64_t warp_ops = 0;
};
inline State& st() {
  static State s;
  return s;
}

[[noreturn]] inline void fail(const std::string& msg) {
  std::fprintf(stderr, "EMU ERROR (block %u, thread %u): %s\n", st().block.x, st().thread.x, msg.c_str());
  std::abort();
}

inline void yield() {
  State& s = st();
  swapcontext(&s.fibers[static_cast<size_t>(s.cur)].ctx, &s.sched);
}

// Arrive at a barrier of n participants from source line `site`; returns when all n have arrived.
inline void arrive_and_wait(Barrier& b, int n, int site, const char* what) {
  State& s = st();
  if (b.count == 0)
    b.site = site;
  else if (b.site != site)
    fail(std::string(what) + " reached from line " + std::to_string(site) + " while others wait at line " +
         std::to_string(b.site));
  ++s.progress;
  const uint64_t gen = b.gen;
  if (++b.count == n) {
    b.count = 0;
    ++b.gen;
    return;
  }
  while (b.gen == gen) yield();
}

inline void syncthreads(int site) { arrive_and_wait(st().block_bar, st().nthreads, site, "__syncthreads"); }

// A warp-collective op: every lane passes its input; each lane's output is f(inputs of all 32 lanes, lane).
template <class In, class F>
auto warp_collective(int site, const In& in, F f) {
  State& s = st();
  const int tid = static_cast<int>(s.thread.x), lane = tid % 32;
  Warp& w = s.warps[static_cast<size_t>(tid / 32)];
  w.in[lane] = &in;
  arrive_and_wait(w.bar, 32, site, "warp collective");
  const In* all[32];
  for (int i = 0; i < 32; ++i) all[i] = static_cast<const In*>(w.in[i]);
  auto out = f(all, lane);
  arrive_and_wait(w.bar, 32, site, "warp collective (release)");
  if (lane == 0) ++s.warp_ops;
  return out;
}

inline void check_smem(const void* p, size_t bytes, const char* what) {
  const auto* c = static_cast<const unsigned char*>(p);
  const State& s = st();
  if (c < s.smem.data() || c + bytes > s.smem.data() + s.smem.size())
    fail(std::string(what) + ": address outside the block's dynamic shared memory");
  if ((reinterpret_cast<uintptr_t>(p) & 15u) != 0) fail(std::string(what) + ": shared address not 16-byte aligned");
}

inline void fiber_entry() {
  State& s = st();
  s.body();
  Fiber& f = s.fibers[static_cast<size_t>(s.cur)];
  if (!f.pending.empty()) fail("thread exits with cp.async copies never waited for");
  f.done = true;
  ++s.progress;
  swapcontext(&f.ctx, &s.sched);
}

// Runs body() as a kernel over `grid` blocks of `threads` threads with `smem` bytes of dynamic shared memory.
inline void launch(unsigned grid, int threads, size_t smem, std::function<void()> body) {
  State& s = st();
  if (threads % 32 != 0) fail("block size must be a multiple of 32");
  constexpr size_t kStack = 256 * 1024;
  s.body = std::move(body);
  s.nthreads = threads;
  s.grid_dim = {grid, 1, 1};
  s.block_dim = {static_cast<unsigned>(threads), 1, 1};
  s.smem.assign(smem, 0xFF);
  for (unsigned blk = 0; blk < grid; ++blk) {
    s.block = {blk, 0, 0};
    std::fill(s.smem.begin(), s.smem.end(), 0xFF);
    s.block_bar = Barrier{};
    s.warps.assign(static_cast<size_t>(threads / 32), Warp{});
    s.fibers.clear();
    s.fibers.resize(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[static_cast<size_t>(t)];
      f.stack.reset(new char[kStack]);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, fiber_entry, 0);
    }
    int live = threads;
    while (live > 0) {
      const uint64_t before = s.progress;
      for (int t = 0; t < threads; ++t) {
        Fiber& f = s.fibers[static_cast<size_t>(t)];
        if (f.done) continue;
        s.cur = t;
        s.thread = {static_cast<unsigned>(t), 0, 0};
        swapcontext(&s.sched, &f.ctx);
        if (f.done) {
          --live;
          if (s.block_bar.count > 0) fail("a thread exited while others wait at __syncthreads");
        }
      }
      if (live > 0 && s.progress == before) fail("deadlock: every live thread waits at a barrier");
    }
  }
}

// Global memory that cp.async may read (the kernel's inputs).
inline void set_globals(std::vector<std::pair<const void*, size_t>> ranges) {
  st().globals.clear();
  for (auto& [p, n] : ranges) st().globals.emplace_back(static_cast<const char*>(p), static_cast<const char*>(p) + n);
}

inline void copy16(void* dst, const void* src, bool valid) {
  if (valid)
    std::memcpy(dst, src, 16);
  else
    std::memset(dst, 0, 16);
}

}  // namespace emu

#define threadIdx (::emu::st().thread)
#define blockIdx (::emu::st().block)
#define blockDim (::emu::st().block_dim)
#define gridDim (::emu::st().grid_dim)
#define __syncthreads() ::emu::syncthreads(__LINE__)
#define DISTILL_ATTN_DYNAMIC_SMEM(name) unsigned char* name = ::emu::st().smem.data()

// --- bf16 -------------------------------------------------------------------------------------------
struct bf16raw_emu {
  uint16_t x;
};
inline float emu_bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t emu_float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

namespace distill::cuda::attn_fwd {
using bf16raw = bf16raw_emu;
}

// --- the primitives ----------------------------------------------------------------------------------
namespace emu_detail {
inline uint16_t half_of(uint32_t r, int hi) { return static_cast<uint16_t>(hi ? r >> 16 : r & 0xFFFFu); }
inline float bf(uint32_t r, int hi) { return emu_bf16_to_float(half_of(r, hi)); }
struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
struct Regs4 {
  uint32_t r[4];
};
}  // namespace emu_detail

inline void attn_mma_impl(int site, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  using namespace emu_detail;
  const MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {d[0], d[1], d[2], d[3]}};
  const auto out = ::emu::warp_collective(site, in, [](const MmaIn* const* all, int lane) {
    // Element (r, k) of A, (k, n) of B, (r, n) of C, from the lanes that hold them.
    auto A = [&](int r, int k) {
      const int reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
      return bf(all[(r % 8) * 4 + (k % 8) / 2]->a[reg], k % 2);
    };
    auto B = [&](int k, int n) { return bf(all[n * 4 + (k % 8) / 2]->b[k >= 8 ? 1 : 0], k % 2); };
    auto C = [&](int r, int n) { return all[(r % 8) * 4 + n / 2]->c[(r >= 8 ? 2 : 0) + n % 2]; };
    Regs4 res{};
    const int g = lane / 4, c = lane % 4;
    float o[4];
    for (int i = 0; i < 4; ++i) {
      const int r = g + (i >= 2 ? 8 : 0), n = 2 * c + (i % 2);
      double acc = 0;
      for (int k = 0; k < 16; ++k) acc += static_cast<double>(A(r, k)) * static_cast<double>(B(k, n));
      o[i] = static_cast<float>(static_cast<double>(C(r, n)) + acc);
    }
    std::memcpy(res.r, o, sizeof o);
    return res;
  });
  std::memcpy(d, out.r, sizeof d);
}
#define attn_mma(d, a, b0, b1) attn_mma_impl(__LINE__, d, a, b0, b1)

inline void attn_ldsm_impl(int site, uint32_t (&r)[4], const void* smem, bool trans) {
  using namespace emu_detail;
  ::emu::check_smem(smem, 16, "ldmatrix");
  const auto out = ::emu::warp_collective(site, smem, [trans](const void* const* const* all, int lane) {
    Regs4 res{};
    auto elem = [&](int m, int row, int col) {  // element (row, col) of 8x8 matrix m
      const auto* p = static_cast<const uint16_t*>(*all[8 * m + row]);
      return p[col];
    };
    for (int m = 0; m < 4; ++m) {
      uint16_t lo, hi;
      if (!trans) {
        lo = elem(m, lane / 4, 2 * (lane % 4));
        hi = elem(m, lane / 4, 2 * (lane % 4) + 1);
      } else {
        lo = elem(m, 2 * (lane % 4), lane / 4);
        hi = elem(m, 2 * (lane % 4) + 1, lane / 4);
      }
      res.r[m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
    return res;
  });
  for (int i = 0; i < 4; ++i) r[i] = out.r[i];
}
#define attn_ldsm_x4(r, p) attn_ldsm_impl(__LINE__, r, p, false)
#define attn_ldsm_x4_trans(r, p) attn_ldsm_impl(__LINE__, r, p, true)

inline void attn_cp_async_16(void* smem, const void* gmem, bool valid) {
  ::emu::State& s = ::emu::st();
  ::emu::check_smem(smem, 16, "cp.async destination");
  if (valid) {
    const char* g = static_cast<const char*>(gmem);
    bool ok = false;
    for (auto& [lo, hi] : s.globals) ok = ok || (g >= lo && g + 16 <= hi);
    if (!ok) ::emu::fail("cp.async source outside the kernel's inputs");
    if ((reinterpret_cast<uintptr_t>(gmem) & 15u) != 0) ::emu::fail("cp.async source not 16-byte aligned");
  }
  if (s.mode == ::emu::Mode::eager)
    ::emu::copy16(smem, gmem, valid);
  else
    s.fibers[static_cast<size_t>(s.cur)].pending.push_back({smem, gmem, valid});
}
inline void attn_cp_async_commit() {}
inline void attn_cp_async_wait_all() {
  auto& pend = ::emu::st().fibers[static_cast<size_t>(::emu::st().cur)].pending;
  for (auto& c : pend) ::emu::copy16(c.dst, c.src, c.valid);
  pend.clear();
}

inline int attn_opaque_thread_index() { return static_cast<int>(::emu::st().thread.x); }
inline int attn_atomic_add(int* p, int v) {  // blocks run one after another: no other block interleaves
  const int old = *p;
  *p = old + v;
  return old;
}
inline float attn_shfl_xor_impl(int site, float v, int m) {
  return ::emu::warp_collective(site, v, [m](const float* const* all, int lane) { return *all[lane ^ m]; });
}
inline float attn_shfl_impl(int site, float v, int src) {
  return ::emu::warp_collective(site, v, [src](const float* const* all, int) { return *all[src & 31]; });
}
#define attn_shfl_xor(v, m) attn_shfl_xor_impl(__LINE__, v, m)
#define attn_shfl(v, s) attn_shfl_impl(__LINE__, v, s)

inline uint32_t attn_pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(emu_float_to_bf16(lo)) | (static_cast<uint32_t>(emu_float_to_bf16(hi)) << 16);
}
inline void attn_store_u32(void* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void attn_copy16(void* dst, const void* src) { std::memcpy(dst, src, 16); }
inline float attn_to_float(float x) { return x; }
inline float attn_to_float(bf16raw_emu x) { return emu_bf16_to_float(x.x); }
inline void attn_from_float(float x, float* p) { *p = x; }
inline void attn_from_float(float x, bf16raw_emu* p) { p->x = emu_float_to_bf16(x); }
