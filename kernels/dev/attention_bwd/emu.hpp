// A tiny CPU emulator of the CUDA execution model, just enough to run the attention backward kernels of
// kernels/attention_bwd.cu on a machine without a GPU (kernels/dev/attention_bwd/emu_check.cpp).
//
// Every CUDA thread of a block is a fiber (ucontext); blocks run one after the other. A fiber runs until it
// reaches a synchronizing operation and then yields to the scheduler:
//   __syncthreads()         all threads of the block must arrive (an error if some exited or wait elsewhere);
//   warp collectives        __shfl_xor_sync, ldmatrix (.x4, optionally .trans) and mma.m16n8k16 bf16: all 32
//                           lanes must arrive at the same operation; the operation then exchanges the lanes'
//                           operands exactly as the PTX ISA specifies the fragment layouts.
// The order in which ready fibers run is shuffled, and each warp leaves its collectives at its own random pace,
// so warps drift far apart between barriers and a missing __syncthreads() shows up as a wrong result.
// cp.async copies either land at issue (Mode::kEarly: catches a buffer overwritten while others still read it)
// or at the cp.async.wait_group that retires them, with the destination poisoned in between (Mode::kLate:
// catches a read before the wait). Shared memory starts as 0xFF bytes (NaN in f32 and bf16).
// Included by kernels/attention_bwd.cu when DISTILL_ATTN_EMULATE is defined, after the CUDA headers.
#pragma once
#include <ucontext.h>
#include <vector_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace emu {

enum class Mode { kEarly, kLate };
enum class St { kReady, kBarrier, kWarp, kDone };

struct Copy {
  void* dst;
  const void* src;  // nullptr: zero-fill
  int bytes;
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  St st = St::kReady;
  uint3 tid;
  int linear = 0;
  std::vector<Copy> open;                 // cp.async issued since the last commit
  std::vector<std::vector<Copy>> groups;  // committed, not yet retired (oldest first)
};

struct WarpSlots {
  alignas(16) unsigned char data[32][64];
  int tag[32];
};

struct Machine {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  Fiber* cur = nullptr;
  uint3 bid{0, 0, 0};
  dim3 bdim, gdim;
  std::vector<unsigned char> smem;
  std::vector<WarpSlots> warps;
  std::function<void()> body;
  std::mt19937 rng{12345};
  Mode mode = Mode::kLate;
  size_t stack_bytes = 256 * 1024;
  uint64_t warp_ops = 0;
};
inline Machine& M() {
  static Machine m;
  return m;
}

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "emu: %s (block %u,%u,%u thread %d)\n", what.c_str(), M().bid.x, M().bid.y, M().bid.z,
               M().cur ? M().cur->linear : -1);
  std::abort();
}

inline void block_on(St s) {
  Fiber* f = M().cur;
  f->st = s;
  swapcontext(&f->ctx, &M().sched);
}

inline void retire(Fiber& f, size_t keep) {
  while (f.groups.size() > keep) {
    for (const Copy& c : f.groups.front()) {
      if (c.src)
        std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
      else
        std::memset(c.dst, 0, static_cast<size_t>(c.bytes));
    }
    f.groups.erase(f.groups.begin());
  }
}

inline void trampoline() {
  M().body();
  Fiber* f = M().cur;
  if (!f->open.empty()) f->groups.push_back(std::move(f->open));
  retire(*f, 0);
  f->st = St::kDone;
  swapcontext(&f->ctx, &M().sched);
}

inline bool in_smem(const void* p, size_t bytes) {
  auto* c = static_cast<const unsigned char*>(p);
  return c >= M().smem.data() && c + bytes <= M().smem.data() + M().smem.size();
}

// Runs body() as a grid of blocks of `block` threads with `smem_bytes` of dynamic shared memory.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, std::function<void()> body) {
  Machine& m = M();
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (n % 32 != 0 || n > 1024) fail("block size must be a multiple of 32 and at most 1024");
  if (smem_bytes > 227 * 1024) fail("dynamic shared memory over 227 KB");
  if (grid.y > 65535 || grid.z > 65535) fail("gridDim.y/z over 65535");
  m.body = std::move(body);
  m.bdim = block;
  m.gdim = grid;
  m.fibers.clear();
  m.fibers.resize(static_cast<size_t>(n));
  for (auto& f : m.fibers) f.stack.reset(new char[m.stack_bytes]);
  m.warps.resize(static_cast<size_t>(n / 32));
  m.smem.assign(smem_bytes, 0xFF);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        m.bid = {bx, by, bz};
        std::fill(m.smem.begin(), m.smem.end(), 0xFF);
        for (int i = 0; i < n; ++i) {
          Fiber& f = m.fibers[static_cast<size_t>(i)];
          f.st = St::kReady;
          f.linear = i;
          f.tid = {static_cast<unsigned>(i) % block.x, (static_cast<unsigned>(i) / block.x) % block.y,
                   static_cast<unsigned>(i) / (block.x * block.y)};
          f.open.clear();
          f.groups.clear();
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = m.stack_bytes;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, trampoline, 0);
        }
        std::vector<double> speed(static_cast<size_t>(n / 32));
        for (auto& x : speed) x = std::uniform_real_distribution<double>(0.02, 1.0)(m.rng);
        std::vector<int> order(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
        for (;;) {
          std::shuffle(order.begin(), order.end(), m.rng);
          for (int i : order) {
            Fiber& f = m.fibers[static_cast<size_t>(i)];
            if (f.st != St::kReady) continue;
            m.cur = &f;
            swapcontext(&m.sched, &f.ctx);
            m.cur = nullptr;
          }
          // Everyone is blocked or done now.
          // Warps whose 32 lanes wait at the same collective may go on; each goes with its own probability
          // (drawn per block, at least one warp goes), so warps drift far apart between barriers, as they may
          // on the GPU, and a missing __syncthreads() between one warp's writes and another's reads shows.
          std::vector<int> complete;
          for (int w = 0; w < n / 32; ++w) {
            int at = 0;
            for (int l = 0; l < 32; ++l) at += m.fibers[static_cast<size_t>(w * 32 + l)].st == St::kWarp;
            if (at == 0) continue;
            if (at != 32) {
              bool others_blocked = true;  // lanes still short of the collective must be blocked elsewhere
              for (int l = 0; l < 32; ++l) others_blocked &= m.fibers[static_cast<size_t>(w * 32 + l)].st != St::kReady;
              if (others_blocked)
                fail("warp collective reached by " + std::to_string(at) + " of 32 lanes of warp " + std::to_string(w));
              continue;
            }
            for (int l = 1; l < 32; ++l)
              if (m.warps[static_cast<size_t>(w)].tag[l] != m.warps[static_cast<size_t>(w)].tag[0])
                fail("lanes of warp " + std::to_string(w) + " wait at different collectives");
            complete.push_back(w);
          }
          if (!complete.empty()) {
            bool any = false;
            for (int w : complete) {
              if (std::uniform_real_distribution<double>(0, 1)(m.rng) > speed[static_cast<size_t>(w)]) continue;
              for (int l = 0; l < 32; ++l) m.fibers[static_cast<size_t>(w * 32 + l)].st = St::kReady;
              any = true;
            }
            if (!any) {
              const int w = complete[m.rng() % complete.size()];
              for (int l = 0; l < 32; ++l) m.fibers[static_cast<size_t>(w * 32 + l)].st = St::kReady;
            }
            continue;
          }
          int nb = 0, nd = 0;
          for (auto& f : m.fibers) nb += f.st == St::kBarrier, nd += f.st == St::kDone;
          if (nd == n) break;
          if (nb == n) {
            for (auto& f : m.fibers) f.st = St::kReady;
            continue;
          }
          fail("__syncthreads() reached by " + std::to_string(nb) + " threads while " + std::to_string(nd) +
               " have exited");
        }
      }
}

// --- what the kernels call -----------------------------------------------------------------------------
inline void syncthreads() { block_on(St::kBarrier); }

template <class In>
inline WarpSlots& warp_arrive(int tag, const In& in) {
  static_assert(sizeof(In) <= 64, "warp slot too small");
  Fiber* f = M().cur;
  WarpSlots& w = M().warps[static_cast<size_t>(f->linear / 32)];
  std::memcpy(w.data[f->linear % 32], &in, sizeof(In));
  w.tag[f->linear % 32] = tag;
  block_on(St::kWarp);
  ++M().warp_ops;
  return w;
}
inline void warp_leave() {
  Fiber* f = M().cur;
  M().warps[static_cast<size_t>(f->linear / 32)].tag[f->linear % 32] = -1;
  block_on(St::kWarp);
}
inline int lane() { return M().cur->linear % 32; }

template <class V>
inline V shfl_xor(unsigned mask, V v, int lane_mask) {
  if (mask != 0xffffffffu) fail("shfl with a partial mask");
  WarpSlots& w = warp_arrive(1, v);
  V r;
  std::memcpy(&r, w.data[lane() ^ lane_mask], sizeof(V));
  warp_leave();
  return r;
}

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane 8*i + r gives the address of row r of matrix i;
// register i of lane l holds (row l/4, cols 2(l%4), 2(l%4)+1) of matrix i, or of its transpose with .trans.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  if (!in_smem(p, 16)) fail("ldmatrix address outside shared memory");
  if (reinterpret_cast<uintptr_t>(p) % 16) fail("ldmatrix address not 16-byte aligned");
  WarpSlots& w = warp_arrive(trans ? 3 : 2, p);
  const int l = lane();
  auto row = [&](int ln) {
    const void* q;
    std::memcpy(&q, w.data[ln], sizeof(q));
    return static_cast<const uint16_t*>(q);
  };
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      lo = row(i * 8 + l / 4)[2 * (l % 4)];
      hi = row(i * 8 + l / 4)[2 * (l % 4) + 1];
    } else {
      lo = row(i * 8 + 2 * (l % 4))[l / 4];
      hi = row(i * 8 + 2 * (l % 4) + 1)[l / 4];
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  warp_leave();
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d += a * b, with g = lane / 4, c = lane % 4:
//   a[0]: A[g][2c..2c+1]  a[1]: A[g+8][2c..]  a[2]: A[g][2c+8..]  a[3]: A[g+8][2c+8..]
//   b[0]: B[2c..2c+1][g]  b[1]: B[2c+8..2c+9][g]
//   d[0..1]: D[g][2c..2c+1]  d[2..3]: D[g+8][2c..2c+1]
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct In {
    uint32_t a[4], b[2];
  } in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  WarpSlots& w = warp_arrive(4, in);
  auto slot = [&](int ln) {
    In v;
    std::memcpy(&v, w.data[ln], sizeof(In));
    return v;
  };
  auto half = [](uint32_t v, int k) { return bf16_bits_to_float(static_cast<uint16_t>(k % 2 ? v >> 16 : v)); };
  auto A = [&](int m, int k) { return half(slot((m % 8) * 4 + (k % 8) / 2).a[(m >= 8) + 2 * (k >= 8)], k); };
  auto B = [&](int k, int n) { return half(slot(n * 4 + (k % 8) / 2).b[k >= 8], k); };
  const int l = lane(), g = l / 4, c = l % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * c + (i & 1);
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
    d[i] = s;
  }
  warp_leave();
}

inline void cp_async16(void* dst, const void* src, bool valid) {
  if (!in_smem(dst, 16)) fail("cp.async destination outside shared memory");
  if (reinterpret_cast<uintptr_t>(dst) % 16 || (valid && reinterpret_cast<uintptr_t>(src) % 16))
    fail("cp.async address not 16-byte aligned");
  Copy c{dst, valid ? src : nullptr, 16};
  if (M().mode == Mode::kEarly) {
    if (c.src)
      std::memcpy(dst, src, 16);
    else
      std::memset(dst, 0, 16);
  } else {
    std::memset(dst, 0xFF, 16);
    M().cur->open.push_back(c);
  }
}
inline void cp_async_commit() {
  Fiber* f = M().cur;
  f->groups.push_back(std::move(f->open));
  f->open.clear();
}
// Also a scheduling point (the kernels wait warp-uniformly): warps leave it at different times, so a warp
// that reads another thread's cp.async data without a __syncthreads() after the wait sees poison.
inline void cp_async_wait(int n) {
  warp_arrive(5, n);
  retire(*M().cur, static_cast<size_t>(n));
  warp_leave();
}

inline void* dynamic_smem() {
  void* p = M().smem.data();
  if (reinterpret_cast<uintptr_t>(p) % 16) fail("shared memory base misaligned");
  return p;
}

}  // namespace emu

// The CUDA spellings the kernels use, mapped onto the emulator.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __restrict__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define threadIdx (::emu::M().cur->tid)
#define blockIdx (::emu::M().bid)
#define blockDim (::emu::M().bdim)
#define gridDim (::emu::M().gdim)
#define __syncthreads() ::emu::syncthreads()
#define __shfl_xor_sync(mask, v, lm) ::emu::shfl_xor(mask, v, lm)
