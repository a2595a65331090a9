// A CPU emulator for kernels/rmsnorm.cu and kernels/rope.cu (no GPU needed): the kernel source is compiled
// by the host compiler with DISTILL_KERNEL_EMULATION defined; every thread of a block runs as a fiber
// (ucontext) on one OS thread, blocks one after another. It supplies what those kernels use — threadIdx and
// friends, __syncthreads, __shfl_xor_sync, static and dynamic shared memory, __ldg, __f*_rn, the launch /
// occupancy helpers and DeviceBuffer on host memory (the runtime itself: emu_runtime.cpp) — and reports
// what the hardware would not forgive:
//  - a __syncthreads reached from different lines by the threads of a block, a warp shuffle reached from
//    different lines by the lanes of a warp, a shuffle without the full mask or in a partial warp, deadlock;
//  - launch configurations out of range (block > 1024 threads, grid.y/z > 65535, shared memory > 48 KB);
//  - reads of dynamic shared memory nobody wrote: it is filled with 0xFF (NaN) for every block.
// Out-of-bounds global accesses are left to AddressSanitizer (build with -fsanitize=address).
// Usage: include this, then the kernel source (see emulate_rmsnorm.cpp).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>  // dim3, float4 (host-usable)
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "distill/core/error.hpp"

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one copy for all fibers (they share one OS thread); blocks run one at a time

namespace emu {

struct Barrier {
  int count = 0;
  uint64_t gen = 0;
  int line = -1;
};

struct Fiber {
  ucontext_t ctx{};
  std::unique_ptr<char[]> stack;
  bool done = false;
};

struct Warp {
  Barrier bar;
  unsigned char val[32][8] = {};
};

inline constexpr size_t kStack = 256 * 1024;
inline constexpr size_t kMaxStaticSmemBytes = 48 * 1024;

struct State {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  ucontext_t sched{};
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_bar;
  int cur = 0, nthreads = 0;
  uint64_t events = 0;
  std::vector<unsigned char> smem;
  std::function<void()> body;
  std::string error;
  uint64_t launches = 0, blocks_run = 0;
  // The "GPU" the occupancy helpers describe: small, so persistent grids loop.
  int sms = 3, blocks_per_sm = 2;
};

inline State& st() {
  static State s;
  return s;
}

[[noreturn]] inline void fail(const std::string& m) {
  std::fprintf(stderr, "EMULATOR ERROR: %s\n", m.c_str());
  std::abort();
}

inline void yield() {
  State& s = st();
  swapcontext(&s.fibers[static_cast<size_t>(s.cur)].ctx, &s.sched);
}

// All `n` arrivals of one generation must come from one source line.
inline void arrive(Barrier& b, int n, int line, const char* what) {
  State& s = st();
  if (b.count == 0)
    b.line = line;
  else if (b.line != line)
    fail(std::string(what) + " reached from lines " + std::to_string(b.line) + " and " + std::to_string(line) +
         " in one round (divergence)");
  ++s.events;
  const uint64_t gen = b.gen;
  if (++b.count == n) {
    b.count = 0;
    ++b.gen;
    return;
  }
  while (b.gen == gen) yield();
}

inline void syncthreads(int line) { arrive(st().block_bar, st().nthreads, line, "__syncthreads"); }

template <class T>
T shfl_xor_sync(unsigned mask, T v, int lane_mask, int line) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  State& s = st();
  if (mask != 0xffffffffu) fail("__shfl_xor_sync without the full mask");
  if (lane_mask < 0 || lane_mask >= 32) fail("__shfl_xor_sync lane mask out of range");
  const int tid = static_cast<int>(s.thread_idx.x + s.block_dim.x * (s.thread_idx.y + s.block_dim.y * s.thread_idx.z));
  const int w = tid / 32, lane = tid % 32;
  if ((w + 1) * 32 > s.nthreads) fail("warp shuffle with the full mask in a partial warp");
  Warp& wp = s.warps[static_cast<size_t>(w)];
  std::memcpy(wp.val[lane], &v, sizeof(T));
  arrive(wp.bar, 32, line, "__shfl_xor_sync");
  T r;
  std::memcpy(&r, wp.val[lane ^ lane_mask], sizeof(T));
  arrive(wp.bar, 32, line, "__shfl_xor_sync");  // nobody overwrites before every lane has read
  return r;
}

inline void trampoline() {
  State& s = st();
  s.body();
  s.fibers[static_cast<size_t>(s.cur)].done = true;
  ++s.events;
  swapcontext(&s.fibers[static_cast<size_t>(s.cur)].ctx, &s.sched);
}

inline void set_thread(int t) {
  State& s = st();
  s.cur = t;
  s.thread_idx.x = static_cast<unsigned>(t) % s.block_dim.x;
  s.thread_idx.y = (static_cast<unsigned>(t) / s.block_dim.x) % s.block_dim.y;
  s.thread_idx.z = static_cast<unsigned>(t) / (s.block_dim.x * s.block_dim.y);
}

inline void run_block() {
  State& s = st();
  const int n = s.nthreads;
  if (s.fibers.size() < static_cast<size_t>(n)) s.fibers.resize(static_cast<size_t>(n));
  s.warps.assign(static_cast<size_t>((n + 31) / 32), Warp{});
  s.block_bar = Barrier{};
  std::fill(s.smem.begin(), s.smem.end(), static_cast<unsigned char>(0xFF));
  for (int t = 0; t < n; ++t) {
    Fiber& f = s.fibers[static_cast<size_t>(t)];
    if (!f.stack) f.stack.reset(new char[kStack]);
    f.done = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  int left = n;
  while (left > 0) {
    const uint64_t before = s.events;
    left = 0;
    for (int t = 0; t < n; ++t) {
      if (s.fibers[static_cast<size_t>(t)].done) continue;
      set_thread(t);
      swapcontext(&s.sched, &s.fibers[static_cast<size_t>(t)].ctx);
      if (!s.fibers[static_cast<size_t>(t)].done) ++left;
    }
    if (left > 0 && s.events == before)
      fail("deadlock: threads wait at a barrier or shuffle that the others never reach (or have exited)");
  }
  ++s.blocks_run;
}

template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  State& s = st();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024) fail("block of " + std::to_string(threads) + " threads");
  if (block.z > 64) fail("blockDim.z > 64");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u)
    fail("grid out of range");
  if (smem > kMaxStaticSmemBytes) fail("dynamic shared memory above 48 KB without the opt-in attribute");
  ++s.launches;
  s.block_dim = block;
  s.grid_dim = grid;
  s.nthreads = static_cast<int>(threads);
  s.smem.assign(smem, 0xFF);
  s.body = [&] { kernel(static_cast<P>(args)...); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        s.block_idx = dim3(x, y, z);
        run_block();
      }
  s.body = nullptr;
}

}  // namespace emu

#define threadIdx (::emu::st().thread_idx)
#define blockIdx (::emu::st().block_idx)
#define blockDim (::emu::st().block_dim)
#define gridDim (::emu::st().grid_dim)
#define __syncthreads() ::emu::syncthreads(__LINE__)
#define __shfl_xor_sync(mask, v, o) ::emu::shfl_xor_sync(mask, v, o, __LINE__)

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
// Build with -ffp-contract=off so these stay separately rounded, as on the GPU.
inline float emu_fmul_rn(float a, float b) { return a * b; }
inline float emu_fadd_rn(float a, float b) { return a + b; }
inline float emu_fsub_rn(float a, float b) { return a - b; }
#define __fmul_rn emu_fmul_rn
#define __fadd_rn emu_fadd_rn
#define __fsub_rn emu_fsub_rn

// What the kernel files take from distill/cuda/check.hpp and runtime.cu, on host memory.
namespace distill::cuda {

template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  emu::launch(kernel, grid, block, smem, args...);
}
inline int sm_count() { return emu::st().sms; }
template <class... P>
int blocks_per_sm(void (*)(P...), int, size_t) {
  return emu::st().blocks_per_sm;
}
template <class T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(emu::st().smem.data());
}
inline unsigned grid_for(int64_t n, int per_block, int64_t cap = int64_t{1} << 20) {
  int64_t g = (n + per_block - 1) / per_block;
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g);
}

template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : v_(new T[n ? n : 1]), n_(n) {
    std::memset(static_cast<void*>(v_.get()), 0xFF, sizeof(T) * (n ? n : 1));  // garbage, as device memory
  }
  T* data() const { return v_.get(); }
  size_t size() const { return n_; }

 private:
  std::unique_ptr<T[]> v_;
  size_t n_;
};

}  // namespace distill::cuda
