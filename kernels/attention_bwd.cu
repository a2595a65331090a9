// Fused (flash-attention-2 style) attention backward: cuda::attention_backward of
// include/distill/cuda/attention.hpp. Layout, GQA, positions and mask are those of ops/attention_ref.hpp; the
// math is that of the CPU flash backward (ops/attention_cpu.hpp):
//   P = exp(scale q k^T - lse) (recomputed from the forward's lse), D_t = rowsum(dO_t * O_t),
//   dV = P^T dO,  dS = P * (dO V^T - D),  dQ = scale dS K,  dK = scale dS^T Q.
// Kernels, all on cuda::stream():
//   delta       one warp per (b, t, h) row: D [B, H, T] f32 (scratch).
//   dk/dv       one block per (key tile, b, kv head) that loops over every query head of the GQA group and over
//               the query tiles that can see the key tile (fully masked tiles are never visited), recomputing P
//               and dS; dK and dV accumulate in f32 registers and are written once (no atomics). When that
//               grid is too small for the GPU (B * KV * key tiles < 2 * SMs, e.g. gemma-3-1b with one kv
//               head), the group is split: one block per (key tile, b, query head) writes f32 partials
//               [B, S, H, D] and a reduction kernel sums each group's heads in a fixed order.
//   dq          a SEPARATE kernel, one block per (query tile, b, head), looping over the visible key tiles
//               and recomputing P and dS (7 tile products per tile pair instead of 5 with atomics). dQ is
//               therefore deterministic: every output element is summed by one thread in a fixed order,
//               and so are dK and dV; the gradients are the same bits on every run.
// Memory is linear in T and S: scratch is D [B, H, T] (+ the f32 dk/dv partials in the split case).
// Outputs are OVERWRITTEN.
// Versions:
//   v1 "simple" (any D <= 256, f32/bf16/f16): 16x16 tiles of f32 in shared memory, one thread per score and
//      per output element; used for f32 and f16, as the fallback, and for bf16 with DISTILL_ATTN_KERNEL=simple.
//   tensor cores (bf16, D in {64, 128, 256}, sm_80+): mma.sync.m16n8k16 bf16 with f32 accumulation, ldmatrix
//      from padded shared tiles (row pitch D + 8: conflict-free), cp.async double buffering of the streamed
//      tiles. dq: 4 warps of 16 query rows each, so dS stays in registers as the A operand of dS K.
//      dk/dv v3 (default for D <= 128): S^T = K Q^T with 4 warps of 16 keys each, so P^T and dS^T stay in
//      registers as the A operands of P^T dO and dS^T Q. dk/dv v2 (D = 256, or DISTILL_ATTN_BWD_DKDV=v2):
//      8 warps, 64 query rows per step against a key tile of 128/64/32 keys for D = 64/128/256, P and dS
//      through shared memory (v3 would need D / 2 accumulator registers per thread for each of dK and dV).
// The kernels are also compiled for the CPU emulator of kernels/dev/attention_bwd/ (DISTILL_ATTN_EMULATE),
// which runs them thread by thread against ref::attention_backward on a machine without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#ifdef DISTILL_ATTN_EMULATE
#include <vector_functions.h>

#include "dev/attention_bwd/emu.hpp"
#define DISTILL_ATTN_CHECK(cond, ...)                 \
  do {                                                \
    if (!(cond)) ::emu::fail("check failed: " #cond); \
  } while (0)
#else
#include "distill/cuda/attention.hpp"
#include "distill/cuda/check.hpp"
#define DISTILL_ATTN_CHECK DISTILL_CHECK
#endif

namespace distill::cuda {
namespace attn_bwd {

using bf16r = __nv_bfloat16;
constexpr float kLog2e = 1.4426950408889634f;

struct Params {
  int64_t B, T, S, H, KV, D, rep, off;  // off = S - T: position of query 0
  int64_t window;                       // 0: none
  bool causal;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e)
};

// --- the mask as ranges (host and device; exercised against brute force by the lab's emu_check) ----------
struct Range {
  int64_t lo, hi;  // [lo, hi), hi >= lo
};

__host__ __device__ __forceinline__ bool key_visible(int64_t pos, int64_t j, bool causal, int64_t window) {
  if (causal && j > pos) return false;
  if (window > 0 && j <= pos - window) return false;
  if (window > 0 && !causal && j >= pos + window) return false;
  return true;
}

// Keys [lo, hi) visible to the query at absolute position pos (detail::attention_key_range).
__host__ __device__ __forceinline__ Range key_range(int64_t pos, const Params& p) {
  int64_t lo = 0, hi = p.S;
  if (p.causal) hi = hi < pos + 1 ? hi : pos + 1;
  if (p.window > 0) {
    lo = lo > pos - p.window + 1 ? lo : pos - p.window + 1;
    if (!p.causal) hi = hi < pos + p.window ? hi : pos + p.window;
  }
  return {lo, hi > lo ? hi : lo};
}

// Queries t in [0, T) (at position t + off) that see at least one key of [j0, j1) (j0 < j1 <= S).
// Position pos sees some key of [j0, j1) iff max(lo(pos), j0) < min(hi(pos), j1), which unfolds to:
//   causal: pos >= j0;  window: pos < j1 + window - 1;  window and not causal: pos > j0 - window.
__host__ __device__ __forceinline__ Range query_range(int64_t j0, int64_t j1, const Params& p) {
  int64_t lo = 0, hi = p.T;  // in query indices
  if (j1 <= j0) return {0, 0};
  if (p.causal) lo = lo > j0 - p.off ? lo : j0 - p.off;
  if (p.window > 0) {
    hi = hi < j1 + p.window - 1 - p.off ? hi : j1 + p.window - 1 - p.off;
    if (!p.causal) lo = lo > j0 - p.window + 1 - p.off ? lo : j0 - p.window + 1 - p.off;
  }
  return {lo, hi > lo ? hi : lo};
}

// Whether every query of [t0, t1) sees every key of [j0, j1) (no element-wise mask needed). lo and hi of
// key_range never decrease with the position, so the first and last rows decide.
__host__ __device__ __forceinline__ bool tile_fully_visible(int64_t t0, int64_t t1, int64_t j0, int64_t j1,
                                                            const Params& p) {
  return key_range(t1 - 1 + p.off, p).lo <= j0 && key_range(t0 + p.off, p).hi >= j1;
}

// --- element conversions ------------------------------------------------------------------------------------
__device__ __forceinline__ float ld_f(float x) { return x; }
__device__ __forceinline__ float ld_f(bf16r x) { return __bfloat162float(x); }
__device__ __forceinline__ float ld_f(__half x) { return __half2float(x); }
template <class E>
__device__ __forceinline__ E st_f(float x) {
  if constexpr (std::is_same_v<E, float>)
    return x;
  else if constexpr (std::is_same_v<E, bf16r>)
    return __float2bfloat16_rn(x);
  else
    return __float2half_rn(x);
}

// Two floats as a bf16x2 register: `lo` in the low half (the lower column / k index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
  const uint32_t h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
  return l | (h << 16);
}

// --- warp-level primitives (inline PTX; the emulator provides the same operations) ---------------------------
#ifdef DISTILL_ATTN_EMULATE
#define ATTN_DYNAMIC_SMEM(name) unsigned char* name = static_cast<unsigned char*>(::emu::dynamic_smem())
inline void ldsm_x4(uint32_t (&r)[4], const void* p) { emu::ldmatrix_x4(r, p, false); }
inline void ldsm_x4_t(uint32_t (&r)[4], const void* p) { emu::ldmatrix_x4(r, p, true); }
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  emu::mma_bf16_16816(d, a, b);
}
inline void cp_async16(void* dst, const void* src, bool valid) { emu::cp_async16(dst, src, valid); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}
#else
#define ATTN_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define ATTN_HAS_SM80 1
#else
#define ATTN_HAS_SM80 0
#endif
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
#if ATTN_HAS_SM80
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#else
  __trap();
#endif
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
#if ATTN_HAS_SM80
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#else
  __trap();
#endif
}
// d += a * b (m16n8k16, bf16 in, f32 accumulate).
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if ATTN_HAS_SM80
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}
// 16 bytes global -> shared, asynchronously; zero-fills the destination when !valid (src is not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if ATTN_HAS_SM80
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if ATTN_HAS_SM80
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if ATTN_HAS_SM80
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
#endif

// ============================================================================================================
// delta: D[b, h, t] = sum_e dO[b, t, h, e] * O[b, t, h, e], one warp per row (grid-stride over rows).
// ============================================================================================================
template <class E>
__global__ void __launch_bounds__(256)
    delta_kernel(const E* __restrict__ out, const E* __restrict__ dout, float* __restrict__ delta, Params p) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t rows = p.B * p.T * p.H;
  const int64_t nwarps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t row = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32; row < rows; row += nwarps) {
    const E* o = out + row * p.D;
    const E* g = dout + row * p.D;
    float acc = 0.f;
    for (int64_t e = lane; e < p.D; e += 32) acc += ld_f(o[e]) * ld_f(g[e]);
    for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane == 0) {
      const int64_t h = row % p.H, t = (row / p.H) % p.T, b = row / (p.H * p.T);
      delta[(b * p.H + h) * p.T + t] = acc;
    }
  }
}

// Sums the f32 dk/dv partials [B, S, H, D] of the split dk/dv kernel over each GQA group, in head order.
template <class E>
__global__ void __launch_bounds__(256) group_sum_kernel(const float* __restrict__ pk, const float* __restrict__ pv,
                                                        E* __restrict__ dk, E* __restrict__ dv, Params p) {
  const int64_t n = p.B * p.S * p.KV * p.D;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t e = i % p.D, g = (i / p.D) % p.KV, bj = i / (p.D * p.KV);  // bj = b * S + j
    const int64_t src = (bj * p.H + g * p.rep) * p.D + e;
    float sk = 0.f, sv = 0.f;
    for (int64_t r = 0; r < p.rep; ++r) {
      sk += pk[src + r * p.D];
      sv += pv[src + r * p.D];
    }
    dk[i] = st_f<E>(sk);
    dv[i] = st_f<E>(sv);
  }
}

// ============================================================================================================
// v1 simple kernels: TB x TB tiles in f32 shared memory (row pitch D + 1: no bank conflicts across rows),
// 256 threads = one per score of a tile, then one per output element (16 * D / 256 <= 16 per thread).
// ============================================================================================================
constexpr int kSimpleTile = 16;
constexpr int kSimpleThreads = kSimpleTile * kSimpleTile;
constexpr int kSimpleMaxD = 256;
constexpr int kSimpleAcc = kSimpleTile * kSimpleMaxD / kSimpleThreads;

inline size_t simple_smem_bytes(int64_t D) {
  return sizeof(float) *
         static_cast<size_t>(4 * kSimpleTile * (D + 1) + 2 * kSimpleTile * kSimpleTile + 2 * kSimpleTile);
}

// P and dS of one (query tile, key tile) pair, one thread per (r, c): scores from sQ (scale * q) and sK.
__device__ __forceinline__ void simple_p_ds(const float* sQ, const float* sdO, const float* sK, const float* sV,
                                            const float* sL, const float* sDl, float* sP, float* sdS, int ld, int D,
                                            int nq, int nk, int64_t t0, int64_t j0, const Params& p) {
  constexpr int TB = kSimpleTile;
  const int r = static_cast<int>(threadIdx.x) / TB, c = static_cast<int>(threadIdx.x) % TB;
  float pv = 0.f, ds = 0.f;
  if (r < nq && c < nk && key_visible(t0 + r + p.off, j0 + c, p.causal, p.window)) {
    float s = 0.f, dp = 0.f;
    for (int e = 0; e < D; ++e) {
      s += sQ[r * ld + e] * sK[c * ld + e];
      dp += sdO[r * ld + e] * sV[c * ld + e];
    }
    pv = expf(s - sL[r]);
    ds = pv * (dp - sDl[r]);
  }
  sP[r * TB + c] = pv;
  sdS[r * TB + c] = ds;
}

// Rows [0, TB) of a tile of D values per row from `g` (rows `gstride` apart; rows >= nvalid are zero),
// times `mul`, into f32 shared memory of row pitch ld.
template <class E>
__device__ __forceinline__ void simple_load(float* s, const E* g, int64_t gstride, int nvalid, int D, int ld,
                                            float mul) {
  for (int i = static_cast<int>(threadIdx.x); i < kSimpleTile * D; i += static_cast<int>(blockDim.x)) {
    const int r = i / D, e = i % D;
    s[r * ld + e] = r < nvalid ? mul * ld_f(g[r * gstride + e]) : 0.f;
  }
}

template <class E>
__global__ void __launch_bounds__(kSimpleThreads)
    dkdv_simple_kernel(const E* __restrict__ q, const E* __restrict__ k, const E* __restrict__ v,
                       const E* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                       E* __restrict__ dk, E* __restrict__ dv, Params p) {
  constexpr int TB = kSimpleTile;
  ATTN_DYNAMIC_SMEM(smem);
  const int D = static_cast<int>(p.D), ld = D + 1;
  float* sK = reinterpret_cast<float*>(smem);  // [TB][ld]
  float* sV = sK + TB * ld;                    // [TB][ld]
  float* sQ = sV + TB * ld;                    // [TB][ld] scale * q
  float* sdO = sQ + TB * ld;                   // [TB][ld]
  float* sP = sdO + TB * ld;                   // [TB][TB] queries x keys
  float* sdS = sP + TB * TB;                   // [TB][TB]
  float* sL = sdS + TB * TB;                   // [TB] lse
  float* sDl = sL + TB;                        // [TB] delta
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t units = p.B * p.KV;
  const int64_t kt = blockIdx.x / units, bg = blockIdx.x % units, b = bg / p.KV, g = bg % p.KV;
  const int64_t j0 = kt * TB;
  const int nk = static_cast<int>(p.S - j0 < TB ? p.S - j0 : TB);
  const int64_t kstride = p.KV * p.D, qstride = p.H * p.D;
  simple_load(sK, k + ((b * p.S + j0) * p.KV + g) * p.D, kstride, nk, D, ld, 1.f);
  simple_load(sV, v + ((b * p.S + j0) * p.KV + g) * p.D, kstride, nk, D, ld, 1.f);
  float acc_k[kSimpleAcc], acc_v[kSimpleAcc];
#pragma unroll
  for (int a = 0; a < kSimpleAcc; ++a) acc_k[a] = acc_v[a] = 0.f;
  const Range qr = query_range(j0, j0 + nk, p);
  for (int64_t h = g * p.rep; h < (g + 1) * p.rep; ++h) {
    for (int64_t t0 = qr.lo / TB * TB; t0 < qr.hi; t0 += TB) {
      const int nq = static_cast<int>(p.T - t0 < TB ? p.T - t0 : TB);
      __syncthreads();  // the previous pair's readers are done with sQ, sdO, sP, sdS
      simple_load(sQ, q + ((b * p.T + t0) * p.H + h) * p.D, qstride, nq, D, ld, p.scale);
      simple_load(sdO, dout + ((b * p.T + t0) * p.H + h) * p.D, qstride, nq, D, ld, 1.f);
      if (tid < TB) {
        sL[tid] = tid < nq ? lse[(b * p.H + h) * p.T + t0 + tid] : 0.f;
        sDl[tid] = tid < nq ? delta[(b * p.H + h) * p.T + t0 + tid] : 0.f;
      }
      __syncthreads();
      simple_p_ds(sQ, sdO, sK, sV, sL, sDl, sP, sdS, ld, D, nq, nk, t0, j0, p);
      __syncthreads();
#pragma unroll
      for (int a = 0; a < kSimpleAcc; ++a) {
        const int i = tid + a * kSimpleThreads;
        if (i < TB * D) {
          const int c = i / D, e = i % D;
          for (int r = 0; r < TB; ++r) {
            acc_v[a] += sP[r * TB + c] * sdO[r * ld + e];  // dV = P^T dO
            acc_k[a] += sdS[r * TB + c] * sQ[r * ld + e];  // dK = dS^T (scale q)
          }
        }
      }
    }
  }
#pragma unroll
  for (int a = 0; a < kSimpleAcc; ++a) {
    const int i = tid + a * kSimpleThreads;
    if (i < TB * D) {
      const int c = i / D, e = i % D;
      if (c < nk) {
        const int64_t o = ((b * p.S + j0 + c) * p.KV + g) * p.D + e;
        dk[o] = st_f<E>(acc_k[a]);
        dv[o] = st_f<E>(acc_v[a]);
      }
    }
  }
}

template <class E>
__global__ void __launch_bounds__(kSimpleThreads)
    dq_simple_kernel(const E* __restrict__ q, const E* __restrict__ k, const E* __restrict__ v,
                     const E* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                     E* __restrict__ dq, Params p) {
  constexpr int TB = kSimpleTile;
  ATTN_DYNAMIC_SMEM(smem);
  const int D = static_cast<int>(p.D), ld = D + 1;
  float* sK = reinterpret_cast<float*>(smem);
  float* sV = sK + TB * ld;
  float* sQ = sV + TB * ld;
  float* sdO = sQ + TB * ld;
  float* sP = sdO + TB * ld;
  float* sdS = sP + TB * TB;
  float* sL = sdS + TB * TB;
  float* sDl = sL + TB;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t units = p.B * p.H, nqt = (p.T + TB - 1) / TB;
  const int64_t qt = nqt - 1 - blockIdx.x / units, bh = blockIdx.x % units, b = bh / p.H, h = bh % p.H;
  const int64_t g = h / p.rep, t0 = qt * TB;
  const int nq = static_cast<int>(p.T - t0 < TB ? p.T - t0 : TB);
  const int64_t kstride = p.KV * p.D, qstride = p.H * p.D;
  simple_load(sQ, q + ((b * p.T + t0) * p.H + h) * p.D, qstride, nq, D, ld, p.scale);
  simple_load(sdO, dout + ((b * p.T + t0) * p.H + h) * p.D, qstride, nq, D, ld, 1.f);
  if (tid < TB) {
    sL[tid] = tid < nq ? lse[(b * p.H + h) * p.T + t0 + tid] : 0.f;
    sDl[tid] = tid < nq ? delta[(b * p.H + h) * p.T + t0 + tid] : 0.f;
  }
  float acc[kSimpleAcc];
#pragma unroll
  for (int a = 0; a < kSimpleAcc; ++a) acc[a] = 0.f;
  const int64_t klo = key_range(t0 + p.off, p).lo, khi = key_range(t0 + nq - 1 + p.off, p).hi;
  for (int64_t j0 = klo / TB * TB; j0 < khi; j0 += TB) {
    const int nk = static_cast<int>(p.S - j0 < TB ? p.S - j0 : TB);
    __syncthreads();  // the previous pair's readers are done with sK, sV, sdS
    simple_load(sK, k + ((b * p.S + j0) * p.KV + g) * p.D, kstride, nk, D, ld, 1.f);
    simple_load(sV, v + ((b * p.S + j0) * p.KV + g) * p.D, kstride, nk, D, ld, 1.f);
    __syncthreads();
    simple_p_ds(sQ, sdO, sK, sV, sL, sDl, sP, sdS, ld, D, nq, nk, t0, j0, p);
    __syncthreads();
#pragma unroll
    for (int a = 0; a < kSimpleAcc; ++a) {
      const int i = tid + a * kSimpleThreads;
      if (i < TB * D) {
        const int r = i / D, e = i % D;
        for (int c = 0; c < TB; ++c) acc[a] += sdS[r * TB + c] * sK[c * ld + e];  // dQ = dS K (scale below)
      }
    }
  }
#pragma unroll
  for (int a = 0; a < kSimpleAcc; ++a) {
    const int i = tid + a * kSimpleThreads;
    if (i < TB * D) {
      const int r = i / D, e = i % D;
      if (r < nq) dq[((b * p.T + t0 + r) * p.H + h) * p.D + e] = st_f<E>(p.scale * acc[a]);
    }
  }
}

// ============================================================================================================
// v2 tensor-core kernels (bf16, D in {64, 128, 256}).
// Fragment conventions (lane l, g = l / 4, c = l % 4) of mma.m16n8k16: A regs a0..a3 = A[g][2c..], A[g+8][2c..],
// A[g][2c+8..], A[g+8][2c+8..]; B regs b0, b1 = B[2c..][g], B[2c+8..][g]; C c0..c3 = C[g][2c, 2c+1],
// C[g+8][2c, 2c+1]. ldmatrix.x4 address patterns (row, col) of lane l within a 16x16 block:
//   X = (l % 16, (l / 16) * 8): A from [m][k] storage, or B (two n8 tiles) from [k][n] storage with .trans;
//   Y = (l % 8 + (l / 16) * 8, ((l / 8) % 2) * 8): B (two n8 tiles) from [n][k] storage, or A from [k][m]
//       storage with .trans.
// ============================================================================================================
__device__ __forceinline__ int pat_x_row(int l) { return l & 15; }
__device__ __forceinline__ int pat_x_col(int l) { return (l >> 4) << 3; }
__device__ __forceinline__ int pat_y_row(int l) { return (l & 7) + ((l >> 4) << 3); }
__device__ __forceinline__ int pat_y_col(int l) { return ((l >> 3) & 1) << 3; }

// cp.async of `rows` rows of D bf16 (rows >= nvalid zero-filled) into shared memory of row pitch LD.
template <int D, int LD, int NT>
__device__ __forceinline__ void tc_load_tile(bf16r* s, const bf16r* g, int64_t gstride, int nvalid, int rows) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int i = static_cast<int>(threadIdx.x); i < rows * CH; i += NT) {
    const int r = i / CH, c = i % CH;
    const bool ok = r < nvalid;
    cp_async16(s + r * LD + c * 8, ok ? g + r * gstride + c * 8 : g, ok);
  }
}

// dK/dV kernel configuration. Warps for S = Q K^T and dP = dO V^T: 4 row groups of 16 query rows x 2 column
// halves of the key tile. Warps for dV = P^T dO and dK = dS^T Q: BC / 16 groups of 16 keys x the rest over D.
template <int D_, int BC_>
struct DkdvCfg {
  static constexpr int D = D_, BC = BC_, BR = 64, NW = 8, NT = NW * 32;
  static constexpr int LD = D + 8, LDP = BC + 8;  // row pitches (elements): +16 bytes keeps ldmatrix conflict-free
  static constexpr int NS = BC / 16;              // n8 tiles of S per warp (BC / 2 columns)
  static constexpr int RG = BC / 16, CG = NW / RG, DC = D / CG, ND = DC / 8;
  static constexpr int kK = 0, kV = kK + BC * LD, kQ = kV + BC * LD, kdO = kQ + 2 * BR * LD, kP = kdO + 2 * BR * LD,
                       kdS = kP + BR * LDP, kEnd = kdS + BR * LDP;  // bf16 element offsets; Q, dO: 2 stages
  static constexpr size_t smem_bytes = size_t{kEnd} * 2 + 4 * BR * sizeof(float);  // + lse, delta [2][BR]
  static_assert(D % 16 == 0 && BC % 32 == 0 && NW % RG == 0 && DC % 16 == 0, "unsupported dk/dv tiling");
  static_assert(NS % 2 == 0 && ND % 2 == 0, "n8 tiles are loaded in pairs");
};

// kSplit: one block per (key tile, b, query head) writing f32 partials [B, S, H, D] (pk, pv) instead of a
// block per (key tile, b, kv head) writing dk, dv.
template <int D, int BC, bool kSplit>
__global__ void __launch_bounds__(256)
    dkdv_tc_kernel(const bf16r* __restrict__ q, const bf16r* __restrict__ k, const bf16r* __restrict__ v,
                   const bf16r* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                   bf16r* __restrict__ dk, bf16r* __restrict__ dv, float* __restrict__ pk, float* __restrict__ pv,
                   Params p) {
  using C = DkdvCfg<D, BC>;
  constexpr int BR = C::BR, LD = C::LD, LDP = C::LDP, NS = C::NS, ND = C::ND, NT = C::NT;
  ATTN_DYNAMIC_SMEM(smem);
  bf16r* sK = reinterpret_cast<bf16r*>(smem) + C::kK;  // [BC][LD]
  bf16r* sV = reinterpret_cast<bf16r*>(smem) + C::kV;  // [BC][LD]
  bf16r* sQ = reinterpret_cast<bf16r*>(smem) + C::kQ;  // [2][BR][LD]
  bf16r* sdO = reinterpret_cast<bf16r*>(smem) + C::kdO;
  bf16r* sP = reinterpret_cast<bf16r*>(smem) + C::kP;  // [BR][LDP] queries x keys
  bf16r* sdS = reinterpret_cast<bf16r*>(smem) + C::kdS;
  float* sL = reinterpret_cast<float*>(smem + size_t{C::kEnd} * 2);  // [2][BR] lse * log2(e)
  float* sDl = sL + 2 * BR;                                          // [2][BR] delta
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;

  const int64_t units = kSplit ? p.B * p.H : p.B * p.KV;
  const int64_t kt = blockIdx.x / units, u = blockIdx.x % units;
  const int64_t b = kSplit ? u / p.H : u / p.KV;
  const int64_t g = kSplit ? (u % p.H) / p.rep : u % p.KV;
  const int64_t h_first = kSplit ? u % p.H : g * p.rep, nh = kSplit ? 1 : p.rep;
  const int64_t j0 = kt * BC;
  const int nk = static_cast<int>(p.S - j0 < BC ? p.S - j0 : BC);
  const Range qr = query_range(j0, j0 + nk, p);
  const int64_t qt0 = qr.lo / BR, nqt = qr.hi > qr.lo ? (qr.hi - 1) / BR + 1 - qt0 : 0;
  const int64_t n_it = nqt * nh;  // (head, query tile) pairs, head-major

  tc_load_tile<D, LD, NT>(sK, k + ((b * p.S + j0) * p.KV + g) * D, p.KV * D, nk, BC);
  tc_load_tile<D, LD, NT>(sV, v + ((b * p.S + j0) * p.KV + g) * D, p.KV * D, nk, BC);
  auto issue = [&](int64_t it, int stage) {
    const int64_t h = h_first + it / nqt, t0 = (qt0 + it % nqt) * BR;
    const int nq = static_cast<int>(p.T - t0 < BR ? p.T - t0 : BR);
    tc_load_tile<D, LD, NT>(sQ + stage * BR * LD, q + ((b * p.T + t0) * p.H + h) * D, p.H * D, nq, BR);
    tc_load_tile<D, LD, NT>(sdO + stage * BR * LD, dout + ((b * p.T + t0) * p.H + h) * D, p.H * D, nq, BR);
    if (tid < BR) {
      const bool ok = tid < nq;
      sL[stage * BR + tid] = ok ? lse[(b * p.H + h) * p.T + t0 + tid] * kLog2e : INFINITY;
      sDl[stage * BR + tid] = ok ? delta[(b * p.H + h) * p.T + t0 + tid] : 0.f;
    }
  };
  if (n_it > 0) issue(0, 0);
  cp_async_commit();

  float acc_dk[ND][4], acc_dv[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[n][e] = acc_dv[n][e] = 0.f;
  const int wm = warp % 4, wn = warp / 4;          // S, dP: query rows 16 wm, keys wn * BC / 2
  const int rm = warp % C::RG, cn = warp / C::RG;  // dK, dV: keys 16 rm, columns cn * DC
  const int r0 = 16 * wm + (lane >> 2), cbase = wn * (BC / 2) + 2 * (lane & 3);

  for (int64_t it = 0; it < n_it; ++it) {
    const int stage = static_cast<int>(it & 1);
    if (it + 1 < n_it) issue(it + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // this stage's group has landed (the newest, possibly empty, may be in flight)
    __syncthreads();
    const int64_t t0 = (qt0 + it % nqt) * BR;
    const bf16r* cQ = sQ + stage * BR * LD;
    const bf16r* cdO = sdO + stage * BR * LD;
    const float* cL = sL + stage * BR;
    const float* cDl = sDl + stage * BR;

    // S = Q K^T and dP = dO V^T for this warp's 16 x BC/2 block.
    float s[NS][4], dp[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4], ad[4];
      const int aoff = (16 * wm + pat_x_row(lane)) * LD + kk * 16 + pat_x_col(lane);
      ldsm_x4(a, cQ + aoff);
      ldsm_x4(ad, cdO + aoff);
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        const int boff = (wn * (BC / 2) + np * 16 + pat_y_row(lane)) * LD + kk * 16 + pat_y_col(lane);
        uint32_t bk[4], bv[4];
        ldsm_x4(bk, sK + boff);
        mma_16816(s[2 * np], a, bk[0], bk[1]);
        mma_16816(s[2 * np + 1], a, bk[2], bk[3]);
        ldsm_x4(bv, sV + boff);
        mma_16816(dp[2 * np], ad, bv[0], bv[1]);
        mma_16816(dp[2 * np + 1], ad, bv[2], bv[3]);
      }
    }
    // P = exp(scale s - lse), dS = P (dP - delta); masked entries (and rows/keys past T/S) are 0.
    const bool full = t0 + BR <= p.T && j0 + BC <= p.S && tile_fully_visible(t0, t0 + BR, j0, j0 + BC, p);
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = r0 + (e >= 2 ? 8 : 0), c = cbase + 8 * n + (e & 1);
        float pr = exp2f(s[n][e] * p.scale_log2 - cL[r]);
        if (!full && !(t0 + r < p.T && j0 + c < p.S && key_visible(t0 + r + p.off, j0 + c, p.causal, p.window)))
          pr = 0.f;
        s[n][e] = pr;
        dp[n][e] = pr * (dp[n][e] - cDl[r]);
      }
      const int c = cbase + 8 * n;
      *reinterpret_cast<uint32_t*>(sP + r0 * LDP + c) = pack_bf16(s[n][0], s[n][1]);
      *reinterpret_cast<uint32_t*>(sP + (r0 + 8) * LDP + c) = pack_bf16(s[n][2], s[n][3]);
      *reinterpret_cast<uint32_t*>(sdS + r0 * LDP + c) = pack_bf16(dp[n][0], dp[n][1]);
      *reinterpret_cast<uint32_t*>(sdS + (r0 + 8) * LDP + c) = pack_bf16(dp[n][2], dp[n][3]);
    }
    __syncthreads();

    // dV += P^T dO and dK += dS^T Q for this warp's 16 keys x DC columns.
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk) {
      uint32_t ap[4], as[4];
      const int poff = (kk * 16 + pat_y_row(lane)) * LDP + 16 * rm + pat_y_col(lane);
      ldsm_x4_t(ap, sP + poff);
      ldsm_x4_t(as, sdS + poff);
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        const int qoff = (kk * 16 + pat_x_row(lane)) * LD + cn * C::DC + np * 16 + pat_x_col(lane);
        uint32_t bo[4], bq[4];
        ldsm_x4_t(bo, cdO + qoff);
        mma_16816(acc_dv[2 * np], ap, bo[0], bo[1]);
        mma_16816(acc_dv[2 * np + 1], ap, bo[2], bo[3]);
        ldsm_x4_t(bq, cQ + qoff);
        mma_16816(acc_dk[2 * np], as, bq[0], bq[1]);
        mma_16816(acc_dk[2 * np + 1], as, bq[2], bq[3]);
      }
    }
    __syncthreads();  // before the next iteration's cp.async and P/dS stores reuse the buffers
  }
  cp_async_wait<0>();

  // Store: key rows 16 rm + g (+ 8), columns cn * DC + 8 n + 2c (+ 1).
#pragma unroll
  for (int n = 0; n < ND; ++n) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = 16 * rm + (lane >> 2) + 8 * half;
      if (row < nk) {
        const int col = cn * C::DC + 8 * n + 2 * (lane & 3);
        const float k0 = acc_dk[n][2 * half] * p.scale, k1 = acc_dk[n][2 * half + 1] * p.scale;
        const float v0 = acc_dv[n][2 * half], v1 = acc_dv[n][2 * half + 1];
        if constexpr (kSplit) {
          const int64_t o = ((b * p.S + j0 + row) * p.H + h_first) * D + col;
          *reinterpret_cast<float2*>(pk + o) = make_float2(k0, k1);
          *reinterpret_cast<float2*>(pv + o) = make_float2(v0, v1);
        } else {
          const int64_t o = ((b * p.S + j0 + row) * p.KV + g) * D + col;
          *reinterpret_cast<uint32_t*>(dk + o) = pack_bf16(k0, k1);
          *reinterpret_cast<uint32_t*>(dv + o) = pack_bf16(v0, v1);
        }
      }
    }
  }
}

// v3 dK/dV kernel (D <= 128): the scores transposed, S^T = K Q^T, with keys as the mma rows. Each of the NW
// warps owns 16 keys and every query column of the step, so P^T and dS^T (C fragments) are reused in registers
// as the A operands of dV += P^T dO and dK += dS^T Q: no shared-memory round trip for P and dS, no barrier
// between the two halves of a step, and fewer ldmatrix per mma than v2. dK, dV of 16 keys x D per warp stay in
// registers (D / 2 each per thread), which is what limits it to D <= 128.
template <int D_, int NW_>
struct DkdvStCfg {
  static constexpr int D = D_, NW = NW_, NT = NW * 32, BC = 16 * NW, BR = 64;
  static constexpr int LD = D + 8;
  static constexpr int NS = BR / 8, ND = D / 8;  // n8 tiles of S^T (queries) and of dK/dV (columns) per warp
  static constexpr int kK = 0, kV = BC * LD, kQ = 2 * BC * LD, kdO = kQ + 2 * BR * LD, kEnd = kdO + 2 * BR * LD;
  static constexpr size_t smem_bytes = size_t{kEnd} * 2 + 4 * BR * sizeof(float);  // + lse, delta [2][BR]
  static_assert(D % 16 == 0 && NS % 2 == 0 && ND % 2 == 0, "unsupported dk/dv tiling");
};

template <int D, int NW, bool kSplit>
__global__ void __launch_bounds__(NW * 32)
    dkdv_st_kernel(const bf16r* __restrict__ q, const bf16r* __restrict__ k, const bf16r* __restrict__ v,
                   const bf16r* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                   bf16r* __restrict__ dk, bf16r* __restrict__ dv, float* __restrict__ pk, float* __restrict__ pv,
                   Params p) {
  using C = DkdvStCfg<D, NW>;
  constexpr int BR = C::BR, BC = C::BC, LD = C::LD, NS = C::NS, ND = C::ND, NT = C::NT;
  ATTN_DYNAMIC_SMEM(smem);
  bf16r* sK = reinterpret_cast<bf16r*>(smem) + C::kK;  // [BC][LD]
  bf16r* sV = reinterpret_cast<bf16r*>(smem) + C::kV;  // [BC][LD]
  bf16r* sQ = reinterpret_cast<bf16r*>(smem) + C::kQ;  // [2][BR][LD]
  bf16r* sdO = reinterpret_cast<bf16r*>(smem) + C::kdO;
  float* sL = reinterpret_cast<float*>(smem + size_t{C::kEnd} * 2);  // [2][BR] lse * log2(e)
  float* sDl = sL + 2 * BR;                                          // [2][BR] delta
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;

  const int64_t units = kSplit ? p.B * p.H : p.B * p.KV;
  const int64_t kt = blockIdx.x / units, u = blockIdx.x % units;
  const int64_t b = kSplit ? u / p.H : u / p.KV;
  const int64_t g = kSplit ? (u % p.H) / p.rep : u % p.KV;
  const int64_t h_first = kSplit ? u % p.H : g * p.rep, nh = kSplit ? 1 : p.rep;
  const int64_t j0 = kt * BC;
  const int nk = static_cast<int>(p.S - j0 < BC ? p.S - j0 : BC);
  const Range qr = query_range(j0, j0 + nk, p);
  const int64_t qt0 = qr.lo / BR, nqt = qr.hi > qr.lo ? (qr.hi - 1) / BR + 1 - qt0 : 0;
  const int64_t n_it = nqt * nh;  // (head, query tile) pairs, head-major

  tc_load_tile<D, LD, NT>(sK, k + ((b * p.S + j0) * p.KV + g) * D, p.KV * D, nk, BC);
  tc_load_tile<D, LD, NT>(sV, v + ((b * p.S + j0) * p.KV + g) * D, p.KV * D, nk, BC);
  auto issue = [&](int64_t it, int stage) {
    const int64_t h = h_first + it / nqt, t0 = (qt0 + it % nqt) * BR;
    const int nq = static_cast<int>(p.T - t0 < BR ? p.T - t0 : BR);
    tc_load_tile<D, LD, NT>(sQ + stage * BR * LD, q + ((b * p.T + t0) * p.H + h) * D, p.H * D, nq, BR);
    tc_load_tile<D, LD, NT>(sdO + stage * BR * LD, dout + ((b * p.T + t0) * p.H + h) * D, p.H * D, nq, BR);
    for (int i = tid; i < BR; i += NT) {
      const bool ok = i < nq;
      sL[stage * BR + i] = ok ? lse[(b * p.H + h) * p.T + t0 + i] * kLog2e : INFINITY;
      sDl[stage * BR + i] = ok ? delta[(b * p.H + h) * p.T + t0 + i] : 0.f;
    }
  };
  if (n_it > 0) issue(0, 0);
  cp_async_commit();

  float acc_dk[ND][4], acc_dv[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[n][e] = acc_dv[n][e] = 0.f;
  const int r0 = 16 * warp + (lane >> 2);  // this thread's keys r0 and r0 + 8 of the tile
  const int cq = 2 * (lane & 3);           // and its query columns 8 n + cq (+ 1)

  for (int64_t it = 0; it < n_it; ++it) {
    const int stage = static_cast<int>(it & 1);
    if (it + 1 < n_it) issue(it + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // this stage's group has landed (the newest, possibly empty, may be in flight)
    __syncthreads();
    const int64_t t0 = (qt0 + it % nqt) * BR;
    const bf16r* cQ = sQ + stage * BR * LD;
    const bf16r* cdO = sdO + stage * BR * LD;
    const float* cL = sL + stage * BR;
    const float* cDl = sDl + stage * BR;

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x BR queries.
    float st[NS][4], dpt[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      const int aoff = (16 * warp + pat_x_row(lane)) * LD + kk * 16 + pat_x_col(lane);
      ldsm_x4(ak, sK + aoff);
      ldsm_x4(av, sV + aoff);
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        const int boff = (np * 16 + pat_y_row(lane)) * LD + kk * 16 + pat_y_col(lane);
        uint32_t bq[4], bo[4];
        ldsm_x4(bq, cQ + boff);
        mma_16816(st[2 * np], ak, bq[0], bq[1]);
        mma_16816(st[2 * np + 1], ak, bq[2], bq[3]);
        ldsm_x4(bo, cdO + boff);
        mma_16816(dpt[2 * np], av, bo[0], bo[1]);
        mma_16816(dpt[2 * np + 1], av, bo[2], bo[3]);
      }
    }
    // P^T = exp(scale s - lse), dS^T = P^T (dP^T - delta), per query column; masked entries are 0.
    const bool full = t0 + BR <= p.T && j0 + BC <= p.S && tile_fully_visible(t0, t0 + BR, j0, j0 + BC, p);
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = r0 + (e >= 2 ? 8 : 0), c = 8 * n + cq + (e & 1);
        float pr = exp2f(st[n][e] * p.scale_log2 - cL[c]);
        if (!full && !(t0 + c < p.T && j0 + r < p.S && key_visible(t0 + c + p.off, j0 + r, p.causal, p.window)))
          pr = 0.f;
        st[n][e] = pr;
        dpt[n][e] = pr * (dpt[n][e] - cDl[c]);
      }
    }
    // dV += P^T dO, dK += dS^T Q: the C fragments of n8 tiles 2kc, 2kc + 1 are the A fragment of k16 step kc.
#pragma unroll
    for (int kc = 0; kc < BR / 16; ++kc) {
      const uint32_t ap[4] = {pack_bf16(st[2 * kc][0], st[2 * kc][1]), pack_bf16(st[2 * kc][2], st[2 * kc][3]),
                              pack_bf16(st[2 * kc + 1][0], st[2 * kc + 1][1]),
                              pack_bf16(st[2 * kc + 1][2], st[2 * kc + 1][3])};
      const uint32_t as[4] = {pack_bf16(dpt[2 * kc][0], dpt[2 * kc][1]), pack_bf16(dpt[2 * kc][2], dpt[2 * kc][3]),
                              pack_bf16(dpt[2 * kc + 1][0], dpt[2 * kc + 1][1]),
                              pack_bf16(dpt[2 * kc + 1][2], dpt[2 * kc + 1][3])};
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        const int qoff = (kc * 16 + pat_x_row(lane)) * LD + np * 16 + pat_x_col(lane);
        uint32_t bo[4], bq[4];
        ldsm_x4_t(bo, cdO + qoff);
        mma_16816(acc_dv[2 * np], ap, bo[0], bo[1]);
        mma_16816(acc_dv[2 * np + 1], ap, bo[2], bo[3]);
        ldsm_x4_t(bq, cQ + qoff);
        mma_16816(acc_dk[2 * np], as, bq[0], bq[1]);
        mma_16816(acc_dk[2 * np + 1], as, bq[2], bq[3]);
      }
    }
    __syncthreads();  // before the next iteration's cp.async and lse/delta stores reuse the other stage
  }
  cp_async_wait<0>();

#pragma unroll
  for (int n = 0; n < ND; ++n) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = r0 + 8 * half;
      if (row < nk) {
        const int col = 8 * n + cq;
        const float k0 = acc_dk[n][2 * half] * p.scale, k1 = acc_dk[n][2 * half + 1] * p.scale;
        const float v0 = acc_dv[n][2 * half], v1 = acc_dv[n][2 * half + 1];
        if constexpr (kSplit) {
          const int64_t o = ((b * p.S + j0 + row) * p.H + h_first) * D + col;
          *reinterpret_cast<float2*>(pk + o) = make_float2(k0, k1);
          *reinterpret_cast<float2*>(pv + o) = make_float2(v0, v1);
        } else {
          const int64_t o = ((b * p.S + j0 + row) * p.KV + g) * D + col;
          *reinterpret_cast<uint32_t*>(dk + o) = pack_bf16(k0, k1);
          *reinterpret_cast<uint32_t*>(dv + o) = pack_bf16(v0, v1);
        }
      }
    }
  }
}

// dQ kernel configuration: 4 warps x 16 query rows; each warp owns whole rows of S, so dS (C fragments) is
// reused in registers as the A operand of dS K.
template <int D_, int BC_>
struct DqCfg {
  static constexpr int D = D_, BC = BC_, BR = 64, NW = 4, NT = NW * 32;
  static constexpr int LD = D + 8;
  static constexpr int NS = BC / 8, ND = D / 8;
  static constexpr int kQ = 0, kdO = BR * LD, kK = 2 * BR * LD, kV = kK + 2 * BC * LD, kEnd = kV + 2 * BC * LD;
  static constexpr size_t smem_bytes = size_t{kEnd} * 2;
  static_assert(D % 16 == 0 && BC % 16 == 0 && NS % 2 == 0 && ND % 2 == 0, "unsupported dq tiling");
};

template <int D, int BC>
__global__ void __launch_bounds__(128)
    dq_tc_kernel(const bf16r* __restrict__ q, const bf16r* __restrict__ k, const bf16r* __restrict__ v,
                 const bf16r* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                 bf16r* __restrict__ dq, Params p) {
  using C = DqCfg<D, BC>;
  constexpr int BR = C::BR, LD = C::LD, NS = C::NS, ND = C::ND, NT = C::NT;
  ATTN_DYNAMIC_SMEM(smem);
  bf16r* sQ = reinterpret_cast<bf16r*>(smem) + C::kQ;  // [BR][LD]
  bf16r* sdO = reinterpret_cast<bf16r*>(smem) + C::kdO;
  bf16r* sK = reinterpret_cast<bf16r*>(smem) + C::kK;  // [2][BC][LD]
  bf16r* sV = reinterpret_cast<bf16r*>(smem) + C::kV;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;

  const int64_t units = p.B * p.H, nqt = (p.T + BR - 1) / BR;
  const int64_t qt = nqt - 1 - blockIdx.x / units, bh = blockIdx.x % units, b = bh / p.H, h = bh % p.H;
  const int64_t g = h / p.rep, t0 = qt * BR;
  const int nq = static_cast<int>(p.T - t0 < BR ? p.T - t0 : BR);
  const int64_t klo = key_range(t0 + p.off, p).lo, khi = key_range(t0 + nq - 1 + p.off, p).hi;
  const int64_t kt0 = klo / BC, n_it = khi > klo ? (khi - 1) / BC + 1 - kt0 : 0;

  tc_load_tile<D, LD, NT>(sQ, q + ((b * p.T + t0) * p.H + h) * D, p.H * D, nq, BR);
  tc_load_tile<D, LD, NT>(sdO, dout + ((b * p.T + t0) * p.H + h) * D, p.H * D, nq, BR);
  auto issue = [&](int64_t it, int stage) {
    const int64_t j0 = (kt0 + it) * BC;
    const int nk = static_cast<int>(p.S - j0 < BC ? p.S - j0 : BC);
    tc_load_tile<D, LD, NT>(sK + stage * BC * LD, k + ((b * p.S + j0) * p.KV + g) * D, p.KV * D, nk, BC);
    tc_load_tile<D, LD, NT>(sV + stage * BC * LD, v + ((b * p.S + j0) * p.KV + g) * D, p.KV * D, nk, BC);
  };
  if (n_it > 0) issue(0, 0);
  cp_async_commit();

  const int r0 = 16 * warp + (lane >> 2);  // this thread's rows r0 and r0 + 8 of the tile
  const bool ok0 = t0 + r0 < p.T, ok1 = t0 + r0 + 8 < p.T;
  const float l0 = ok0 ? lse[(b * p.H + h) * p.T + t0 + r0] * kLog2e : INFINITY;
  const float l1 = ok1 ? lse[(b * p.H + h) * p.T + t0 + r0 + 8] * kLog2e : INFINITY;
  const float d0 = ok0 ? delta[(b * p.H + h) * p.T + t0 + r0] : 0.f;
  const float d1 = ok1 ? delta[(b * p.H + h) * p.T + t0 + r0 + 8] : 0.f;

  float acc[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;

  for (int64_t it = 0; it < n_it; ++it) {
    const int stage = static_cast<int>(it & 1);
    if (it + 1 < n_it) issue(it + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int64_t j0 = (kt0 + it) * BC;
    const bf16r* cK = sK + stage * BC * LD;
    const bf16r* cV = sV + stage * BC * LD;

    float s[NS][4], dp[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4], ad[4];
      const int aoff = (16 * warp + pat_x_row(lane)) * LD + kk * 16 + pat_x_col(lane);
      ldsm_x4(a, sQ + aoff);
      ldsm_x4(ad, sdO + aoff);
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        const int boff = (np * 16 + pat_y_row(lane)) * LD + kk * 16 + pat_y_col(lane);
        uint32_t bk[4], bv[4];
        ldsm_x4(bk, cK + boff);
        mma_16816(s[2 * np], a, bk[0], bk[1]);
        mma_16816(s[2 * np + 1], a, bk[2], bk[3]);
        ldsm_x4(bv, cV + boff);
        mma_16816(dp[2 * np], ad, bv[0], bv[1]);
        mma_16816(dp[2 * np + 1], ad, bv[2], bv[3]);
      }
    }
    const bool full = t0 + BR <= p.T && j0 + BC <= p.S && tile_fully_visible(t0, t0 + BR, j0, j0 + BC, p);
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = r0 + (e >= 2 ? 8 : 0), c = 8 * n + 2 * (lane & 3) + (e & 1);
        float pr = exp2f(s[n][e] * p.scale_log2 - (e >= 2 ? l1 : l0));
        if (!full && !(t0 + r < p.T && j0 + c < p.S && key_visible(t0 + r + p.off, j0 + c, p.causal, p.window)))
          pr = 0.f;
        dp[n][e] = pr * (dp[n][e] - (e >= 2 ? d1 : d0));
      }
    }
    // dQ += dS K: the C fragments of n8 tiles 2kc and 2kc + 1 are the A fragment of k16 step kc.
#pragma unroll
    for (int kc = 0; kc < BC / 16; ++kc) {
      const uint32_t a[4] = {pack_bf16(dp[2 * kc][0], dp[2 * kc][1]), pack_bf16(dp[2 * kc][2], dp[2 * kc][3]),
                             pack_bf16(dp[2 * kc + 1][0], dp[2 * kc + 1][1]),
                             pack_bf16(dp[2 * kc + 1][2], dp[2 * kc + 1][3])};
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bk[4];
        ldsm_x4_t(bk, cK + (kc * 16 + pat_x_row(lane)) * LD + np * 16 + pat_x_col(lane));
        mma_16816(acc[2 * np], a, bk[0], bk[1]);
        mma_16816(acc[2 * np + 1], a, bk[2], bk[3]);
      }
    }
    __syncthreads();  // before the next iteration's cp.async overwrites the other stage
  }
  cp_async_wait<0>();

#pragma unroll
  for (int n = 0; n < ND; ++n) {
    const int col = 8 * n + 2 * (lane & 3);
    if (ok0)
      *reinterpret_cast<uint32_t*>(dq + ((b * p.T + t0 + r0) * p.H + h) * D + col) =
          pack_bf16(acc[n][0] * p.scale, acc[n][1] * p.scale);
    if (ok1)
      *reinterpret_cast<uint32_t*>(dq + ((b * p.T + t0 + r0 + 8) * p.H + h) * D + col) =
          pack_bf16(acc[n][2] * p.scale, acc[n][3] * p.scale);
  }
}

// ============================================================================================================
// Host side.
// ============================================================================================================
enum class Path { kSimple, kTensorCore };

template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), int64_t grid, int block, size_t smem, Args... args) {
  DISTILL_ATTN_CHECK(grid >= 1 && grid <= 0x7fffffff, "cuda::attention_backward: grid of ", grid,
                     " blocks is out of range");
#ifdef DISTILL_ATTN_EMULATE
  emu::launch(dim3(static_cast<unsigned>(grid)), dim3(static_cast<unsigned>(block)), smem, [=] { kernel(args...); });
#else
  if (smem > 48 * 1024)
    DISTILL_CHECK_CUDA(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 blocks(static_cast<unsigned>(grid));
  // clang-format off
  kernel<<<blocks, block, smem, stream()>>>(args...);
  // clang-format on
  DISTILL_CHECK_LAUNCH();
#endif
}

// Device facts the path choice needs (the emulator plays an H100).
struct DeviceInfo {
  int cc = 90, sms = 132;
  size_t smem_optin = 227 * 1024;
};
inline DeviceInfo device_info() {
  DeviceInfo d;
#ifndef DISTILL_ATTN_EMULATE
  const int dev = current_device();
  int v = 0;
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  d.smem_optin = static_cast<size_t>(v);
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  d.cc = compute_capability();
#endif
  return d;
}

// The tensor-core configuration for head dim D: key tile of the dk/dv kernel and of the dq kernel.
template <int D>
struct TcTiles;
template <>
struct TcTiles<64> {
  static constexpr int kKv = 128, kQ = 64;
};
template <>
struct TcTiles<128> {
  static constexpr int kKv = 64, kQ = 64;
};
template <>
struct TcTiles<256> {
  static constexpr int kKv = 32, kQ = 32;
};

constexpr int kStWarps = 4;  // v3 dk/dv kernel: 4 warps x 16 keys

// Choices of the tensor-core path (environment switches, see attention_backward below).
struct TcChoice {
  int split = -1;  // dk/dv grid: -1 split the GQA group when the unsplit grid is under 2 waves, 0 never, 1 always
  int dkdv = 0;    // dk/dv kernel: 0 default (v3 for D <= 128, v2 for D = 256), 2 or 3
};

template <int D>
bool use_v3(const TcChoice& c) {
  return D <= 128 && c.dkdv != 2;
}

template <int D>
size_t tc_smem_bytes() {
  using Kv = DkdvCfg<D, TcTiles<D>::kKv>;
  using Q = DqCfg<D, TcTiles<D>::kQ>;
  size_t m = Kv::smem_bytes > Q::smem_bytes ? Kv::smem_bytes : Q::smem_bytes;
  if constexpr (D <= 128) m = m > DkdvStCfg<D, kStWarps>::smem_bytes ? m : DkdvStCfg<D, kStWarps>::smem_bytes;
  return m;
}

// Scratch the launcher needs: delta [B, H, T], and in the split case the f32 partials [B, S, H, D] x 2.
struct Scratch {
  float* delta = nullptr;
  float* pk = nullptr;
  float* pv = nullptr;
};

template <int D>
bool tc_split(const Params& p, const DeviceInfo& dev, const TcChoice& c) {
  if (p.rep <= 1 || c.split == 0) return false;
  if (c.split == 1) return true;
  const int64_t BC = use_v3<D>(c) ? 16 * kStWarps : TcTiles<D>::kKv;
  return ((p.S + BC - 1) / BC) * p.B * p.KV < 2 * static_cast<int64_t>(dev.sms);
}

template <int D>
void run_tc(const bf16r* q, const bf16r* k, const bf16r* v, const bf16r* dout, const float* lse, bf16r* dq, bf16r* dk,
            bf16r* dv, const Scratch& sc, const Params& p, const TcChoice& c, bool split) {
  constexpr int BCQ = TcTiles<D>::kQ;
  using Q = DqCfg<D, BCQ>;
  const int64_t units = split ? p.B * p.H : p.B * p.KV;
  const float* delta = sc.delta;
  bool done = false;
  if constexpr (D <= 128) {
    if (use_v3<D>(c)) {
      using Kv = DkdvStCfg<D, kStWarps>;
      auto kernel = split ? dkdv_st_kernel<D, kStWarps, true> : dkdv_st_kernel<D, kStWarps, false>;
      launch(kernel, (p.S + Kv::BC - 1) / Kv::BC * units, Kv::NT, Kv::smem_bytes, q, k, v, dout, lse, delta, dk, dv,
             sc.pk, sc.pv, p);
      done = true;
    }
  }
  if (!done) {
    constexpr int BCK = TcTiles<D>::kKv;
    using Kv = DkdvCfg<D, BCK>;
    auto kernel = split ? dkdv_tc_kernel<D, BCK, true> : dkdv_tc_kernel<D, BCK, false>;
    launch(kernel, (p.S + BCK - 1) / BCK * units, Kv::NT, Kv::smem_bytes, q, k, v, dout, lse, delta, dk, dv, sc.pk,
           sc.pv, p);
  }
  if (split) {
    const int64_t n = p.B * p.S * p.KV * p.D;
    launch(group_sum_kernel<bf16r>, (n + 255) / 256 < 65536 ? (n + 255) / 256 : 65536, 256, 0,
           static_cast<const float*>(sc.pk), static_cast<const float*>(sc.pv), dk, dv, p);
  }
  launch(dq_tc_kernel<D, BCQ>, (p.T + Q::BR - 1) / Q::BR * p.B * p.H, Q::NT, Q::smem_bytes, q, k, v, dout, lse, delta,
         dq, p);
}

template <class E>
void run_simple(const E* q, const E* k, const E* v, const E* dout, const float* lse, E* dq, E* dk, E* dv,
                const Scratch& sc, const Params& p) {
  constexpr int TB = kSimpleTile;
  const size_t smem = simple_smem_bytes(p.D);
  const int64_t nkt = (p.S + TB - 1) / TB, nqt = (p.T + TB - 1) / TB;
  launch(dkdv_simple_kernel<E>, nkt * p.B * p.KV, kSimpleThreads, smem, q, k, v, dout, lse,
         static_cast<const float*>(sc.delta), dk, dv, p);
  launch(dq_simple_kernel<E>, nqt * p.B * p.H, kSimpleThreads, smem, q, k, v, dout, lse,
         static_cast<const float*>(sc.delta), dq, p);
}

// Whether the tensor-core path can run D on this device with these pointers.
template <class E>
bool tc_eligible(int64_t D, const DeviceInfo& dev, std::initializer_list<const void*> ptrs) {
  if (!std::is_same_v<E, bf16r> || dev.cc < 80) return false;
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  switch (D) {
    case 64:
      return tc_smem_bytes<64>() <= dev.smem_optin;
    case 128:
      return tc_smem_bytes<128>() <= dev.smem_optin;
    case 256:
      return tc_smem_bytes<256>() <= dev.smem_optin;
    default:
      return false;
  }
}

// Everything after the checks: delta, then dk/dv, then dq, on raw contiguous pointers. Returns the path taken.
template <class E>
Path run_backward(const E* q, const E* k, const E* v, const E* out, const E* dout, const float* lse, E* dq, E* dk,
                  E* dv, Scratch sc, const Params& p, Path want, const TcChoice& choice,
                  float* (*alloc_f32)(size_t n, void* ctx), void* alloc_ctx) {
  const DeviceInfo dev = device_info();
  const int64_t rows = p.B * p.T * p.H;
  launch(delta_kernel<E>, (rows + 7) / 8 < 65536 ? (rows + 7) / 8 : 65536, 256, 0, out, dout, sc.delta, p);
  if constexpr (std::is_same_v<E, bf16r>) {
    if (want == Path::kTensorCore && tc_eligible<E>(p.D, dev, {q, k, v, out, dout, dq, dk, dv})) {
      bool sp = false;
      switch (p.D) {
        case 64:
          sp = tc_split<64>(p, dev, choice);
          break;
        case 128:
          sp = tc_split<128>(p, dev, choice);
          break;
        default:
          sp = tc_split<256>(p, dev, choice);
          break;
      }
      if (sp) {
        const size_t n = static_cast<size_t>(p.B * p.S * p.H * p.D);
        sc.pk = alloc_f32(n, alloc_ctx);
        sc.pv = alloc_f32(n, alloc_ctx);
      }
      switch (p.D) {
        case 64:
          run_tc<64>(q, k, v, dout, lse, dq, dk, dv, sc, p, choice, sp);
          break;
        case 128:
          run_tc<128>(q, k, v, dout, lse, dq, dk, dv, sc, p, choice, sp);
          break;
        default:
          run_tc<256>(q, k, v, dout, lse, dq, dk, dv, sc, p, choice, sp);
          break;
      }
      return Path::kTensorCore;
    }
  }
  run_simple<E>(q, k, v, dout, lse, dq, dk, dv, sc, p);
  return Path::kSimple;
}

template <class T>
struct RawOf {
  using type = T;
};
template <>
struct RawOf<bf16> {
  using type = bf16r;
};
template <>
struct RawOf<f16> {
  using type = __half;
};

inline Params make_params(const distill::detail::AttentionDims& d, const AttentionOptions& o) {
  Params p{d.B, d.T, d.S, d.H, d.KV, d.D, d.rep, d.offset, o.window, o.causal, static_cast<float>(d.scale), 0.f};
  p.scale_log2 = static_cast<float>(d.scale * 1.4426950408889634);
  return p;
}

}  // namespace attn_bwd

#ifndef DISTILL_ATTN_EMULATE
template <class T>
void attention_backward(const Tensor<T, Cuda>& q_in, const Tensor<T, Cuda>& k_in, const Tensor<T, Cuda>& v_in,
                        const Tensor<T, Cuda>& out_in, const Tensor<float, Cuda>& lse_in,
                        const Tensor<T, Cuda>& dout_in, const AttentionOptions& opts, const Tensor<T, Cuda>& dq,
                        const Tensor<T, Cuda>& dk, const Tensor<T, Cuda>& dv) {
  using E = typename attn_bwd::RawOf<T>::type;
  const char* op = "cuda::attention_backward";
  const auto d = distill::detail::attention_dims(q_in.shape(), k_in.shape(), v_in.shape(), opts, op);
  check_same_shape(q_in.shape(), out_in.shape(), "cuda::attention_backward: q vs out");
  check_same_shape(q_in.shape(), dout_in.shape(), "cuda::attention_backward: q vs dout");
  check_same_shape(Shape{d.B, d.H, d.T}, lse_in.shape(), "cuda::attention_backward: lse must be [B, H, T]");
  check_same_shape(q_in.shape(), dq.shape(), "cuda::attention_backward: q vs dq");
  check_same_shape(k_in.shape(), dk.shape(), "cuda::attention_backward: k vs dk");
  check_same_shape(v_in.shape(), dv.shape(), "cuda::attention_backward: v vs dv");
  DISTILL_CHECK(dq.is_contiguous() && dk.is_contiguous() && dv.is_contiguous(), op,
                ": dq, dk and dv must be contiguous (they are written in place)");
  if (q_in.numel() == 0 || k_in.numel() == 0) {  // nothing attends: every gradient is zero
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return;
  }
  DISTILL_CHECK(d.D <= attn_bwd::kSimpleMaxD, op, ": head_dim ", d.D, " is over ", attn_bwd::kSimpleMaxD,
                ", the largest the CUDA attention kernels support");
  const Tensor<T, Cuda> q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const Tensor<T, Cuda> out = out_in.contiguous(), dout = dout_in.contiguous();
  const Tensor<float, Cuda> lse = lse_in.contiguous();
  const attn_bwd::Params p = attn_bwd::make_params(d, opts);

  const char* env = std::getenv("DISTILL_ATTN_KERNEL");
  const bool simple = env && std::strcmp(env, "simple") == 0;
  // Lab and test switches of the tensor-core path: DISTILL_ATTN_BWD_SPLIT=0/1 (unset: by grid size) and
  // DISTILL_ATTN_BWD_DKDV=v2/v3 (unset: v3 for D <= 128).
  attn_bwd::TcChoice choice;
  const char* env_split = std::getenv("DISTILL_ATTN_BWD_SPLIT");
  if (env_split && *env_split) choice.split = env_split[0] == '1' ? 1 : 0;
  const char* env_dkdv = std::getenv("DISTILL_ATTN_BWD_DKDV");
  if (env_dkdv && std::strcmp(env_dkdv, "v2") == 0) choice.dkdv = 2;
  if (env_dkdv && std::strcmp(env_dkdv, "v3") == 0) choice.dkdv = 3;

  DeviceBuffer<float> delta(static_cast<size_t>(d.B * d.H * d.T));
  DeviceBuffer<float> partials[2];
  struct Ctx {
    DeviceBuffer<float>* bufs;
    int used;
  } ctx{partials, 0};
  auto alloc = [](size_t n, void* c) -> float* {
    auto* x = static_cast<Ctx*>(c);
    x->bufs[x->used] = DeviceBuffer<float>(n);
    return x->bufs[x->used++].data();
  };
  attn_bwd::Scratch sc;
  sc.delta = delta.data();
  attn_bwd::run_backward<E>(reinterpret_cast<const E*>(q.data()), reinterpret_cast<const E*>(k.data()),
                            reinterpret_cast<const E*>(v.data()), reinterpret_cast<const E*>(out.data()),
                            reinterpret_cast<const E*>(dout.data()), lse.data(), reinterpret_cast<E*>(dq.data()),
                            reinterpret_cast<E*>(dk.data()), reinterpret_cast<E*>(dv.data()), sc, p,
                            simple ? attn_bwd::Path::kSimple : attn_bwd::Path::kTensorCore, choice, alloc, &ctx);
}

#define DISTILL_ATTN_BWD_INSTANTIATE(T)                                                                           \
  template void attention_backward<T>(const Tensor<T, Cuda>&, const Tensor<T, Cuda>&, const Tensor<T, Cuda>&,     \
                                      const Tensor<T, Cuda>&, const Tensor<float, Cuda>&, const Tensor<T, Cuda>&, \
                                      const AttentionOptions&, const Tensor<T, Cuda>&, const Tensor<T, Cuda>&,    \
                                      const Tensor<T, Cuda>&);
DISTILL_ATTN_BWD_INSTANTIATE(float)
DISTILL_ATTN_BWD_INSTANTIATE(bf16)
DISTILL_ATTN_BWD_INSTANTIATE(f16)
#undef DISTILL_ATTN_BWD_INSTANTIATE
#endif

}  // namespace distill::cuda
