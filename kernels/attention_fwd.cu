// Fused attention forward on the GPU (include/distill/cuda/attention.hpp), flash-attention-2 style: each
// query tile (b, h, 16 or 128 rows) streams the key/value tiles that its rows can see (tiles the causal/window
// mask hides entirely are never loaded) with an online softmax in f32, so memory stays linear in T and S.
// It writes out [B, T, H, D] and lse [B, H, T] = logsumexp over the visible keys of scale * q k^T (natural
// log; -inf for a row with no visible key, whose output is zeros, as on the CPU).
//
// Two kernels (their history and timings: kernels/dev/attention/):
//  - attn_fwd_v1_simple: the obviously correct one. One block per 16 query rows, 32-key tiles held in shared
//    memory as f32, one warp per query row at a time: lane j scores key j, the warp shares the softmax
//    through shuffles, lane d accumulates output dims d, d + 32, ... Any D <= 256, any T and S, f32 math.
//    Serves f32 inputs, the fallback for bf16 (other head dims, unaligned pointers), and bf16 on request
//    with DISTILL_ATTN_KERNEL=simple.
//  - attn_fwd_v2_mma: bf16 tensor cores (mma.sync m16n8k16, f32 accumulate) for D in {64, 128, 256}. A block
//    of kWarps warps owns 128 query rows (each warp kMTiles x 16 rows); Q, one K tile and one V tile of 64
//    keys sit in padded shared memory (row stride D + 8: ldmatrix reads are conflict-free) and are loaded
//    with cp.async: V_j streams in while S = Q K_j^T is computed, K_{j+1} while O += P V_j is. Scores stay
//    in registers: the S accumulator fragments become the A fragments of P V after the softmax (exp2 of
//    scale * log2(e) * s - m, one FFMA per score). The mask is evaluated only on tiles that cut through it.
//    Needs scale > 0 (the row max is taken on raw scores); a negative scale runs v1.
//    Blocks are persistent: as many as fit on the GPU, each drawing query tiles (heaviest first) from a
//    counter, so a causal mask's uneven tiles do not leave SMs idle.
// Rows with no visible key give zeros (never NaN); the public API cannot produce them.
//
// Emulation: with DISTILL_ATTN_EMULATE defined this file compiles as host C++ against
// kernels/dev/attention/emu.hpp, which supplies the device primitives (mma, ldmatrix, cp.async, shuffles,
// __syncthreads) on a CPU warp emulator; kernels/dev/attention/emulate_fwd.cpp runs both kernels that way
// against ref::attention. The launcher below (Tensor API, CUDA runtime) is compiled only for the GPU, and
// not with DISTILL_ATTN_KERNELS_ONLY (the kernel lab includes this file for the kernels alone).
#ifndef DISTILL_ATTN_EMULATE
#include <cuda_bf16.h>
#endif
#if !defined(DISTILL_ATTN_EMULATE) && !defined(DISTILL_ATTN_KERNELS_ONLY)
#include "distill/cuda/attention.hpp"
#include "distill/cuda/check.hpp"
#include "distill/ops/attention_ref.hpp"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace distill::cuda {
namespace attn_fwd {

// ------------------------------------------------------------------------------------------------------
// Device primitives. In the GPU build they are inline PTX / intrinsics; the emulator defines the same
// names (kernels/dev/attention/emu.hpp).
#ifndef DISTILL_ATTN_EMULATE
using bf16raw = __nv_bfloat16;

// D = A B + D for one 16x8x16 tile: A row-major 16x16 bf16 (4 regs), B column-major 16x8 bf16 (2 regs),
// D 16x8 f32 (4 regs), in the fragment layouts of the PTX ISA.
__device__ __forceinline__ void attn_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Four 8x8 b16 matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void attn_ldsm_x4(uint32_t (&r)[4], const void* smem) {
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// The same, each matrix transposed.
__device__ __forceinline__ void attn_ldsm_x4_trans(uint32_t (&r)[4], const void* smem) {
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// 16 bytes global -> shared, asynchronously (L2 only); zeros instead when !valid (src is then not read).
__device__ __forceinline__ void attn_cp_async_16(void* smem, const void* gmem, bool valid) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n) : "memory");
}
__device__ __forceinline__ void attn_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void attn_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ int attn_atomic_add(int* p, int v) { return atomicAdd(p, v); }
// threadIdx.x through volatile asm: values derived from it are recomputed per query tile instead of being
// hoisted out of v2's task loop and held in registers across it (which costs spills).
__device__ __forceinline__ int attn_opaque_thread_index() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
}
__device__ __forceinline__ float attn_shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ float attn_shfl(float v, int src) { return __shfl_sync(0xffffffffu, v, src); }
// Two floats -> packed bf16x2 (round to nearest even), the lower column in the low half.
__device__ __forceinline__ uint32_t attn_pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ void attn_store_u32(void* p, uint32_t v) { *static_cast<uint32_t*>(p) = v; }
__device__ __forceinline__ void attn_copy16(void* dst, const void* src) {
  *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
}
__device__ __forceinline__ float attn_to_float(float x) { return x; }
__device__ __forceinline__ float attn_to_float(bf16raw x) { return __bfloat162float(x); }
__device__ __forceinline__ void attn_from_float(float x, float* p) { *p = x; }
__device__ __forceinline__ void attn_from_float(float x, bf16raw* p) { *p = __float2bfloat16_rn(x); }
#define DISTILL_ATTN_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// ------------------------------------------------------------------------------------------------------
// What every kernel gets. Sizes fit int (checked by make_params); element offsets are computed in int64.
struct FwdParams {
  const void* q;  // [B, T, H, D]
  const void* k;  // [B, S, KV, D]
  const void* v;  // [B, S, KV, D]
  void* out;      // [B, T, H, D]
  float* lse;     // [B, H, T]
  int B, T, S, H, KV, D;
  int rep;            // H / KV
  int offset;         // S - T: position of query 0
  int causal;         // 0 / 1
  int window;         // 0: none; clamped to S + T + 1 (same mask; fits int)
  float scale;        // softmax scale
  float scale_log2;   // scale * log2(e)
  int block_m;        // query rows per block
  int num_q_tiles;    // ceil(T / block_m)
  int num_tasks;      // num_q_tiles * B * H (query tiles to compute)
  int* task_counter;  // v2: a zeroed int the blocks draw their query tiles from
};

// The mask as a key range [lo, hi) for the query at absolute position pos (detail::attention_key_range);
// hi < lo means nothing is visible. Both grow with pos.
__host__ __device__ __forceinline__ int attn_key_lo(int pos, const FwdParams& p) {
  return p.window > 0 ? (pos - p.window + 1 > 0 ? pos - p.window + 1 : 0) : 0;
}
__host__ __device__ __forceinline__ int attn_key_hi(int pos, const FwdParams& p) {
  int hi = p.S;
  if (p.causal && pos + 1 < hi) hi = pos + 1;
  if (p.window > 0 && !p.causal && pos + p.window < hi) hi = pos + p.window;
  return hi;
}
// detail::attention_key_visible, for 0 <= j < S.
__host__ __device__ __forceinline__ bool attn_visible(int pos, int j, const FwdParams& p) {
  return j >= attn_key_lo(pos, p) && j < attn_key_hi(pos, p);
}

// Block -> (query tile, b, h). The heaviest query tiles (last under a causal mask) get the lowest block
// indices, so they start first and the light ones fill in at the end.
struct BlockCoords {
  int qt, b, h;
};
__host__ __device__ __forceinline__ BlockCoords attn_block_coords(int64_t blk, const FwdParams& p) {
  const int64_t bh_count = int64_t{p.B} * p.H;
  const int64_t bh = blk % bh_count;
  return {p.num_q_tiles - 1 - static_cast<int>(blk / bh_count), static_cast<int>(bh / p.H), static_cast<int>(bh % p.H)};
}

// ======================================================================================================
// v1: the simple kernel.
inline constexpr int kV1Rows = 16;  // query rows per block
inline constexpr int kV1Warps = 4;  // each warp takes kV1Rows / kV1Warps rows
inline constexpr int kV1Keys = 32;  // keys per tile (one per lane)
inline constexpr int kV1RowsPerWarp = kV1Rows / kV1Warps;

// Shared memory of v1 for head dim D: Q [16, D], K [32, D + 1] (odd stride: lane j reading row j hits
// bank (j * (D + 1) + d) % 32, all different), V [32, D], all f32.
__host__ __device__ inline size_t v1_smem_bytes(int D) {
  return sizeof(float) *
         (static_cast<size_t>(kV1Rows) * D + static_cast<size_t>(kV1Keys) * (D + 1) + static_cast<size_t>(kV1Keys) * D);
}

// T: float or bf16raw. kDPL: output dims per lane (D <= 32 * kDPL).
template <class T, int kDPL>
__global__ void __launch_bounds__(kV1Warps * 32) attn_fwd_v1_simple(const FwdParams p) {
  DISTILL_ATTN_DYNAMIC_SMEM(smem_raw);
  const int D = p.D;
  float* sQ = reinterpret_cast<float*>(smem_raw);  // [16, D]
  float* sK = sQ + kV1Rows * D;                    // [32, D + 1]
  float* sV = sK + kV1Keys * (D + 1);              // [32, D]
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const BlockCoords bc = attn_block_coords(blockIdx.x, p);
  const int b = bc.b, h = bc.h, g = h / p.rep;
  const int t0 = bc.qt * kV1Rows;
  const int nq = p.T - t0 < kV1Rows ? p.T - t0 : kV1Rows;
  const T* gq = static_cast<const T*>(p.q);
  const T* gk = static_cast<const T*>(p.k);
  const T* gv = static_cast<const T*>(p.v);
  T* gout = static_cast<T*>(p.out);

  for (int i = tid; i < kV1Rows * D; i += kV1Warps * 32) {
    const int r = i / D, e = i % D;
    sQ[i] = r < nq ? attn_to_float(gq[((int64_t{b} * p.T + t0 + r) * p.H + h) * D + e]) : 0.f;
  }

  // Keys some row of this block sees.
  const int kbeg = attn_key_lo(t0 + p.offset, p);
  const int kend = attn_key_hi(t0 + nq - 1 + p.offset, p);
  float m[kV1RowsPerWarp], l[kV1RowsPerWarp], o[kV1RowsPerWarp][kDPL];
#pragma unroll
  for (int rr = 0; rr < kV1RowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int i = 0; i < kDPL; ++i) o[rr][i] = 0.f;
  }

  for (int j0 = kbeg; j0 < kend; j0 += kV1Keys) {
    const int nk = kend - j0 < kV1Keys ? kend - j0 : kV1Keys;
    __syncthreads();  // every warp is done with the previous tile (and sQ is written, on the first)
    for (int i = tid; i < kV1Keys * D; i += kV1Warps * 32) {
      const int r = i / D, e = i % D;
      float kx = 0.f, vx = 0.f;
      if (r < nk) {
        const int64_t off = ((int64_t{b} * p.S + j0 + r) * p.KV + g) * D + e;
        kx = attn_to_float(gk[off]);
        vx = attn_to_float(gv[off]);
      }
      sK[r * (D + 1) + e] = kx;
      sV[r * D + e] = vx;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kV1RowsPerWarp; ++rr) {
      const int r = warp * kV1RowsPerWarp + rr;
      if (r >= nq) continue;  // warp-uniform
      const int pos = t0 + r + p.offset;
      const int j = j0 + lane;
      float s = -INFINITY;
      if (lane < nk && attn_visible(pos, j, p)) {
        const float* qr = sQ + r * D;
        const float* kr = sK + lane * (D + 1);
        float acc = 0.f;
        for (int e = 0; e < D; ++e) acc = fmaf(qr[e], kr[e], acc);
        s = acc * p.scale;
      }
      float mx = s;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, attn_shfl_xor(mx, off));
      const float m_new = fmaxf(m[rr], mx);
      if (m_new == -INFINITY) continue;         // nothing visible yet (uniform: mx is the warp's max)
      const float pj = expf(s - m_new);         // 0 for masked keys
      const float alpha = expf(m[rr] - m_new);  // 0 on the first visible tile
      float sum = pj;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) sum += attn_shfl_xor(sum, off);
      l[rr] = l[rr] * alpha + sum;
      m[rr] = m_new;
#pragma unroll
      for (int i = 0; i < kDPL; ++i) o[rr][i] *= alpha;
      for (int jj = 0; jj < nk; ++jj) {
        const float pjj = attn_shfl(pj, jj);
#pragma unroll
        for (int i = 0; i < kDPL; ++i) {
          const int e = lane + 32 * i;
          if (e < D) o[rr][i] = fmaf(pjj, sV[jj * D + e], o[rr][i]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kV1RowsPerWarp; ++rr) {
    const int r = warp * kV1RowsPerWarp + rr;
    if (r >= nq) continue;
    const int t = t0 + r;
    const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
    T* dst = gout + ((int64_t{b} * p.T + t) * p.H + h) * D;
#pragma unroll
    for (int i = 0; i < kDPL; ++i) {
      const int e = lane + 32 * i;
      if (e < D) attn_from_float(o[rr][i] * inv, dst + e);
    }
    if (lane == 0) p.lse[(int64_t{b} * p.H + h) * p.T + t] = l[rr] > 0.f ? m[rr] + logf(l[rr]) : -INFINITY;
  }
}

// ======================================================================================================
// v2: bf16 tensor cores.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16; lane = 4 * g + c, g = lane / 4, c = lane % 4):
//   A 16x16 (4 regs of 2): a0 (row g, cols 2c, 2c+1), a1 (row g+8, same cols), a2 (row g, cols 2c+8, 2c+9),
//                          a3 (row g+8, cols 2c+8, 2c+9)
//   B 16x8 (2 regs of 2):  b0 (rows 2c, 2c+1, col g), b1 (rows 2c+8, 2c+9, col g)
//   C 16x8 (4 f32):        c0, c1 (row g, cols 2c, 2c+1), c2, c3 (row g+8, same cols)
// So the S = Q K^T accumulator of key block nb (8 keys) holds, per lane, keys 8 nb + 2c + {0, 1} of rows
// g and g+8, which is exactly the A fragment layout of P for P V: the A fragment of keys 16 kk .. 16 kk + 15
// is (S[2 kk] c0c1, S[2 kk] c2c3, S[2 kk + 1] c0c1, S[2 kk + 1] c2c3), packed to bf16.
template <int kD, int kWarps, int kMTiles, int kBlockN = 64>
struct V2Config {
  static constexpr int D = kD;
  static constexpr int warps = kWarps;
  static constexpr int mtiles = kMTiles;  // 16-row m tiles per warp
  static constexpr int block_m = 16 * kMTiles * kWarps;
  static constexpr int block_n = kBlockN;  // keys per tile
  static constexpr int threads = 32 * kWarps;
  static constexpr int stride = kD + 8;  // shared row stride in bf16: +16 B, conflict-free ldmatrix
  static constexpr int chunks = kD / 8;  // 16-byte chunks per row
  static constexpr size_t tile_smem_bytes = sizeof(uint16_t) * static_cast<size_t>(block_m + 2 * block_n) * stride;
  static constexpr size_t smem_bytes = tile_smem_bytes + 16;  // + the task index the block draws
  static_assert(kD % 16 == 0 && kD <= 256 && kBlockN % 16 == 0, "v2 tiles are multiples of 16 (D <= 256)");
  static_assert((block_m * chunks) % threads == 0 && (block_n * chunks) % threads == 0, "tile loads split evenly");
};

// rows [row0, row0 + n_rows) of a [*, ld]-strided bf16 matrix at g (rows >= limit read as zeros) -> s
// [n_rows, stride]. Every thread issues its share of 16-byte cp.async copies.
template <class Cfg, int kRows>
__device__ __forceinline__ void v2_load_tile(bf16raw* s, const bf16raw* g, int64_t ld, int row0, int limit, int tid) {
#pragma unroll
  for (int i = 0; i < kRows * Cfg::chunks / Cfg::threads; ++i) {
    const int c = tid + i * Cfg::threads;
    const int r = c / Cfg::chunks, ch = c % Cfg::chunks;
    const bool ok = row0 + r < limit;
    const bf16raw* src = ok ? g + (row0 + r) * ld + ch * 8 : g;
    attn_cp_async_16(s + r * Cfg::stride + ch * 8, src, ok);
  }
}

// One query tile (task) of the v2 kernel.
template <class Cfg>
__device__ __forceinline__ void v2_query_tile(const FwdParams& p, int64_t task, unsigned char* smem_raw) {
  constexpr int kD = Cfg::D, kM = Cfg::mtiles, kN = Cfg::block_n, kStride = Cfg::stride;
  constexpr int kNB = kN / 8;          // key blocks of 8 in a tile (S n-blocks)
  constexpr int kDB = kD / 8;          // dim blocks of 8 (O n-blocks)
  constexpr bool kQInRegs = kD <= 64;  // Q fragments kept in registers (else re-read from shared memory)
  bf16raw* sQ = reinterpret_cast<bf16raw*>(smem_raw);  // [block_m, stride]
  bf16raw* sK = sQ + Cfg::block_m * kStride;           // [block_n, stride]
  bf16raw* sV = sK + kN * kStride;                     // [block_n, stride]

  const int tid = attn_opaque_thread_index(), warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, c = lane & 3;
  const BlockCoords bc = attn_block_coords(task, p);
  const int b = bc.b, h = bc.h, kvh = h / p.rep;
  const int t0 = bc.qt * Cfg::block_m;
  const int nq = p.T - t0 < Cfg::block_m ? p.T - t0 : Cfg::block_m;
  const bf16raw* gq = static_cast<const bf16raw*>(p.q) + ((int64_t{b} * p.T + t0) * p.H + h) * kD;  // row t0
  const bf16raw* gk = static_cast<const bf16raw*>(p.k) + (int64_t{b} * p.S * p.KV + kvh) * kD;      // key 0
  const bf16raw* gv = static_cast<const bf16raw*>(p.v) + (int64_t{b} * p.S * p.KV + kvh) * kD;
  const int64_t ldq = int64_t{p.H} * kD, ldkv = int64_t{p.KV} * kD;

  // Keys some valid row of the block sees, and whether a tile needs the mask: it does unless every valid
  // row sees all of its keys (the mask ranges grow with the row, so the first and last rows decide).
  const int pos_first = t0 + p.offset, pos_last = t0 + nq - 1 + p.offset;
  const int kbeg = attn_key_lo(pos_first, p), kend = attn_key_hi(pos_last, p);
  const int n_tiles = kend > kbeg ? (kend - kbeg + kN - 1) / kN : 0;
  const int lo_last = attn_key_lo(pos_last, p), hi_first = attn_key_hi(pos_first, p);

  // Prologue: Q and the first K tile.
  v2_load_tile<Cfg, Cfg::block_m>(sQ, gq, ldq, 0, nq, tid);
  if (n_tiles > 0) v2_load_tile<Cfg, kN>(sK, gk, ldkv, kbeg, p.S, tid);
  attn_cp_async_commit();

  float o[kM][kDB][4];
  float m[kM][2], l[kM][2];  // running max (log2 domain) and this lane's part of the row sum, rows g, g+8
#pragma unroll
  for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      m[mt][i] = -INFINITY;
      l[mt][i] = 0.f;
    }
#pragma unroll
    for (int db = 0; db < kDB; ++db)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[mt][db][i] = 0.f;
  }
  uint32_t qf[kQInRegs ? kM : 1][kQInRegs ? kD / 16 : 1][4];

  // ldmatrix lane addressing (element offsets within a [rows, stride] tile):
  //  A (Q): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
  const int a_off = (lane & 15) * kStride + (lane >> 4) * 8;
  //  B of S (K rows = keys): (keys 0-7, k 0-7), (keys 0-7, k 8-15), (keys 8-15, k 0-7), (keys 8-15, k 8-15)
  const int k_off = ((lane >> 4) * 8 + (lane & 7)) * kStride + ((lane >> 3) & 1) * 8;
  //  B of O (V rows = keys, transposed): (keys 0-7, d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15), ...
  const int v_off = (((lane >> 3) & 1) * 8 + (lane & 7)) * kStride + (lane >> 4) * 8;
  const int row_base = warp * kM * 16;  // this warp's first row in the block

  for (int it = 0; it < n_tiles; ++it) {
    const int j0 = kbeg + it * kN;
    attn_cp_async_wait_all();
    __syncthreads();  // K_it (and Q) are in shared memory; every warp is done with V_{it-1}
    v2_load_tile<Cfg, kN>(sV, gv, ldkv, j0, p.S, tid);
    attn_cp_async_commit();
    if constexpr (kQInRegs) {
      if (it == 0) {
#pragma unroll
        for (int mt = 0; mt < kM; ++mt)
#pragma unroll
          for (int kk = 0; kk < kD / 16; ++kk)
            attn_ldsm_x4(qf[mt][kk], sQ + (row_base + mt * 16) * kStride + a_off + kk * 16);
      }
    }

    // S = Q K^T: [kM * 16, kN] per warp.
    float s[kM][kNB][4];
#pragma unroll
    for (int mt = 0; mt < kM; ++mt)
#pragma unroll
      for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][nb][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[kM][4];
#pragma unroll
      for (int mt = 0; mt < kM; ++mt) {
        if constexpr (kQInRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[mt][i] = qf[mt][kk][i];
        } else {
          attn_ldsm_x4(a[mt], sQ + (row_base + mt * 16) * kStride + a_off + kk * 16);
        }
      }
#pragma unroll
      for (int nb2 = 0; nb2 < kNB / 2; ++nb2) {
        uint32_t kf[4];
        attn_ldsm_x4(kf, sK + nb2 * 16 * kStride + k_off + kk * 16);
#pragma unroll
        for (int mt = 0; mt < kM; ++mt) {
          attn_mma(s[mt][2 * nb2], a[mt], kf[0], kf[1]);
          attn_mma(s[mt][2 * nb2 + 1], a[mt], kf[2], kf[3]);
        }
      }
    }

    // Mask, online softmax. Scores stay raw (scale > 0, so the max commutes with scaling); the log2-domain
    // running max is m = scale_log2 * max(raw), and p = exp2(scale_log2 * s - m) is one FFMA and one EX2.
    const float sc = p.scale_log2;
    const bool need_mask = j0 + kN > p.S || lo_last > j0 || hi_first < j0 + kN;
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
      const int r0 = row_base + mt * 16 + g;  // rows r0 and r0 + 8 of the block
      if (need_mask) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int pos = t0 + r0 + 8 * half + p.offset;
          const int lo = attn_key_lo(pos, p), hi = attn_key_hi(pos, p);
#pragma unroll
          for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int j = j0 + nb * 8 + 2 * c + e;
              if (j < lo || j >= hi) s[mt][nb][2 * half + e] = -INFINITY;  // hi <= S covers keys past the end
            }
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float mx = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kNB; ++nb) mx = fmaxf(mx, fmaxf(s[mt][nb][2 * half], s[mt][nb][2 * half + 1]));
        mx = fmaxf(mx, attn_shfl_xor(mx, 1));  // the 4 lanes of a quad share the row
        mx = fmaxf(mx, attn_shfl_xor(mx, 2));
        const float m_new = fmaxf(m[mt][half], mx * sc);      // -inf stays -inf
        const float base = m_new == -INFINITY ? 0.f : m_new;  // no visible key yet: keep everything 0, no NaN
        const float alpha = exp2f(m[mt][half] - base);
        m[mt][half] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = exp2f(fmaf(s[mt][nb][2 * half + e], sc, -base));  // masked: exp2(-inf) = 0
            s[mt][nb][2 * half + e] = pe;
            sum += pe;
          }
        l[mt][half] = l[mt][half] * alpha + sum;
#pragma unroll
        for (int db = 0; db < kDB; ++db) {
          o[mt][db][2 * half] *= alpha;
          o[mt][db][2 * half + 1] *= alpha;
        }
      }
    }

    attn_cp_async_wait_all();
    __syncthreads();  // V_it is in shared memory; every warp is done with K_it
    if (it + 1 < n_tiles) {
      v2_load_tile<Cfg, kN>(sK, gk, ldkv, j0 + kN, p.S, tid);
      attn_cp_async_commit();
    }

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t pa[kM][4];
#pragma unroll
      for (int mt = 0; mt < kM; ++mt) {
        pa[mt][0] = attn_pack_bf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = attn_pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = attn_pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = attn_pack_bf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int db2 = 0; db2 < kDB / 2; ++db2) {
        uint32_t vf[4];
        attn_ldsm_x4_trans(vf, sV + kk * 16 * kStride + v_off + db2 * 16);
#pragma unroll
        for (int mt = 0; mt < kM; ++mt) {
          attn_mma(o[mt][2 * db2], pa[mt], vf[0], vf[1]);
          attn_mma(o[mt][2 * db2 + 1], pa[mt], vf[2], vf[3]);
        }
      }
    }
  }

  // Epilogue: normalize, stage the bf16 rows in sQ, write 16-byte chunks; lse per row.
  attn_cp_async_wait_all();  // nothing in flight (n_tiles == 0 leaves the Q load)
  __syncthreads();           // every warp is done reading sQ
#pragma unroll
  for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float lsum = l[mt][half];
      lsum += attn_shfl_xor(lsum, 1);
      lsum += attn_shfl_xor(lsum, 2);
      const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
      const int r = row_base + mt * 16 + g + 8 * half;
#pragma unroll
      for (int db = 0; db < kDB; ++db)
        attn_store_u32(sQ + r * kStride + db * 8 + 2 * c,
                       attn_pack_bf16x2(o[mt][db][2 * half] * inv, o[mt][db][2 * half + 1] * inv));
      if (c == 0 && r < nq) {
        constexpr float kLn2 = 0.693147180559945309f;
        p.lse[(int64_t{b} * p.H + h) * p.T + t0 + r] = lsum > 0.f ? m[mt][half] * kLn2 + logf(lsum) : -INFINITY;
      }
    }
  }
  __syncthreads();
  bf16raw* gout = static_cast<bf16raw*>(p.out) + ((int64_t{b} * p.T + t0) * p.H + h) * kD;
#pragma unroll
  for (int i = 0; i < Cfg::block_m * Cfg::chunks / Cfg::threads; ++i) {
    const int cidx = tid + i * Cfg::threads;
    const int r = cidx / Cfg::chunks, ch = cidx % Cfg::chunks;
    if (r < nq) attn_copy16(gout + r * ldq + ch * 8, sQ + r * kStride + ch * 8);
  }
}

// The v2 kernel: persistent blocks. The launcher starts as many blocks as fit on the GPU at once (fewer
// when there are fewer query tiles), and each block draws query tiles from p.task_counter, heaviest first
// (attn_block_coords), until none is left. Under a causal mask a tile's work ranges from 1 to T / 64 key
// tiles; when every tile is resident from the start (B=1, H=16, T=2048: 256 tiles, 264 slots on an H100)
// a fixed block-to-SM assignment leaves some SMs with about 1.5x the average work, drawing evens it out.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::threads) attn_fwd_v2_mma(const FwdParams p) {
  DISTILL_ATTN_DYNAMIC_SMEM(smem_raw);
  int* s_task = reinterpret_cast<int*>(smem_raw + Cfg::tile_smem_bytes);
#pragma unroll 1
  for (;;) {
    if (threadIdx.x == 0) *s_task = attn_atomic_add(p.task_counter, 1);
    __syncthreads();  // the task is visible; the previous tile's epilogue is done with shared memory
    const int task = *s_task;
    __syncthreads();  // everyone has read it before thread 0 draws the next
    if (task >= p.num_tasks) break;
    v2_query_tile<Cfg>(p, task, smem_raw);
  }
}

// The v2 configurations: 128 query rows per block, 64-key tiles. D = 64 and 128: 4 warps of 2 m tiles
// (each K/V fragment read from shared memory feeds two MMAs); D = 256: 8 warps of 1 m tile (the O
// accumulator alone is 128 registers per lane).
using V2D64 = V2Config<64, 4, 2>;
using V2D128 = V2Config<128, 4, 2>;
using V2D256 = V2Config<256, 8, 1>;

// ======================================================================================================
// Host side: the plan (pure; the emulator runs it too) and the dispatch.
enum class FwdKernel { v1_simple, v2_mma };

struct FwdPlan {
  FwdKernel kernel;
  int dpl;      // v1: output dims per lane (1, 2, 4 or 8)
  int threads;  // per block
  int block_m;  // query rows per block
  size_t smem;  // dynamic shared memory per block
};

inline int v1_dims_per_lane(int D) { return D <= 32 ? 1 : D <= 64 ? 2 : D <= 128 ? 4 : 8; }

// bf16 with D in {64, 128, 256}, a positive scale and 16-byte aligned pointers runs v2 unless
// force_simple; the rest v1.
inline FwdPlan plan_forward(int D, bool is_bf16, bool aligned16, bool scale_positive, bool force_simple) {
  if (is_bf16 && aligned16 && scale_positive && !force_simple) {
    if (D == 64) return {FwdKernel::v2_mma, 0, V2D64::threads, V2D64::block_m, V2D64::smem_bytes};
    if (D == 128) return {FwdKernel::v2_mma, 0, V2D128::threads, V2D128::block_m, V2D128::smem_bytes};
    if (D == 256) return {FwdKernel::v2_mma, 0, V2D256::threads, V2D256::block_m, V2D256::smem_bytes};
  }
  // v1's shared memory is sized for the largest D of its kernel instance (32 * dims per lane), so that each
  // instance has one size (the launcher opts in to it once per device).
  const int dpl = v1_dims_per_lane(D);
  return {FwdKernel::v1_simple, dpl, kV1Warps * 32, kV1Rows, v1_smem_bytes(32 * dpl)};
}

// DISTILL_ATTN_KERNEL=simple selects v1 for bf16 too (tests; comparisons). Read on every call.
inline bool force_simple_from_env() {
  const char* e = std::getenv("DISTILL_ATTN_KERNEL");
  return e != nullptr && std::strcmp(e, "simple") == 0;
}

// Kernel parameters from the checked dims. Throws (via `fail`) when a size does not fit the kernels' int
// arithmetic.
template <class Fail>
FwdParams make_params(int64_t B, int64_t T, int64_t S, int64_t H, int64_t KV, int64_t D, double scale, bool causal,
                      int64_t window, int block_m, Fail&& fail) {
  constexpr int64_t kMax = int64_t{1} << 30;
  if (T >= kMax || S >= kMax || D > 256 || B * H >= kMax || (T + block_m - 1) / block_m * B * H >= kMax) fail();
  FwdParams p{};
  p.B = static_cast<int>(B);
  p.T = static_cast<int>(T);
  p.S = static_cast<int>(S);
  p.H = static_cast<int>(H);
  p.KV = static_cast<int>(KV);
  p.D = static_cast<int>(D);
  p.rep = static_cast<int>(H / KV);
  p.offset = static_cast<int>(S - T);
  p.causal = causal ? 1 : 0;
  p.window = static_cast<int>(std::min<int64_t>(window, S + T + 1));  // a wider window hides nothing more
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.block_m = block_m;
  p.num_q_tiles = static_cast<int>((T + block_m - 1) / block_m);
  p.num_tasks = static_cast<int>(int64_t{p.num_q_tiles} * B * H);
  p.task_counter = nullptr;
  return p;
}

// Blocks of a persistent v2 launch: as many as fit on the GPU at once, never more than there are tasks.
inline int64_t persistent_grid(int64_t tasks, int sms, int blocks_per_sm) {
  return std::max<int64_t>(1, std::min<int64_t>(tasks, int64_t{std::max(sms, 1)} * std::max(blocks_per_sm, 1)));
}

// Calls launch(kernel) with the kernel the plan names, for element type T (float or bf16raw).
template <class T, class Launch>
void dispatch_forward(const FwdPlan& plan, const FwdParams& p, Launch&& launch) {
  if (plan.kernel == FwdKernel::v2_mma) {
    if constexpr (std::is_same_v<T, bf16raw>) {
      if (p.D == 64) return launch(attn_fwd_v2_mma<V2D64>);
      if (p.D == 128) return launch(attn_fwd_v2_mma<V2D128>);
      if (p.D == 256) return launch(attn_fwd_v2_mma<V2D256>);
    }
  }
  switch (plan.dpl) {
    case 1:
      return launch(attn_fwd_v1_simple<T, 1>);
    case 2:
      return launch(attn_fwd_v1_simple<T, 2>);
    case 4:
      return launch(attn_fwd_v1_simple<T, 4>);
    default:
      return launch(attn_fwd_v1_simple<T, 8>);
  }
}

}  // namespace attn_fwd

#if !defined(DISTILL_ATTN_EMULATE) && !defined(DISTILL_ATTN_KERNELS_ONLY)
namespace {
template <class T>
struct DeviceType {
  using type = float;
};
template <>
struct DeviceType<bf16> {
  using type = __nv_bfloat16;
};
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Per (device, kernel), once: opt in to the kernel's dynamic shared memory and return how many of its blocks
// an SM holds times the SM count (the persistent grid). Every kernel instance always launches with the same
// shared-memory size (plan_forward), so the first call's opt-in holds for the later ones.
int64_t resident_blocks(const void* kernel, int threads, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, int64_t> cache;
  const int dev = current_device();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({dev, kernel});
  if (it != cache.end()) return it->second;
  if (smem > 48 * 1024)
    DISTILL_CHECK_CUDA(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int sms = 0, per_sm = 0;
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  DISTILL_CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  DISTILL_CHECK(per_sm > 0, "cuda::attention_forward: a block of ", threads, " threads with ", smem,
                " bytes of shared memory does not fit on this GPU");
  const int64_t n = int64_t{sms} * per_sm;
  cache.emplace(std::pair{dev, kernel}, n);
  return n;
}
}  // namespace

template <class T>
void attention_forward(const Tensor<T, Cuda>& q, const Tensor<T, Cuda>& k, const Tensor<T, Cuda>& v,
                       const AttentionOptions& opts, const Tensor<T, Cuda>& out, const Tensor<float, Cuda>& lse) {
  using namespace attn_fwd;
  using DT = typename DeviceType<T>::type;
  const auto d = distill::detail::attention_dims(q.shape(), k.shape(), v.shape(), opts, "cuda::attention_forward");
  check_same_shape(q.shape(), out.shape(), "cuda::attention_forward: out vs q");
  check_same_shape(Shape{d.B, d.H, d.T}, lse.shape(), "cuda::attention_forward: lse must be [B, H, T]");
  DISTILL_CHECK(
      q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && out.is_contiguous() && lse.is_contiguous(),
      "cuda::attention_forward: q, k, v, out and lse must be contiguous (call .contiguous() first)");
  if (d.B * d.H * d.T == 0) return;
  DISTILL_CHECK(d.D <= 256, "cuda::attention_forward: head_dim ", d.D, " is not supported (at most 256)");
  const bool al = aligned16(q.data()) && aligned16(k.data()) && aligned16(v.data()) && aligned16(out.data());
  const FwdPlan plan =
      plan_forward(static_cast<int>(d.D), std::is_same_v<T, bf16>, al, d.scale > 0, force_simple_from_env());
  const FwdParams p = make_params(d.B, d.T, d.S, d.H, d.KV, d.D, d.scale, opts.causal, opts.window, plan.block_m, [&] {
    throw ShapeError("cuda::attention_forward: q " + q.shape().str() + " / k " + k.shape().str() +
                     " exceed the kernels' 32-bit index range");
  });
  FwdParams pp = p;
  pp.q = q.data();
  pp.k = k.data();
  pp.v = v.data();
  pp.out = out.data();
  pp.lse = lse.data();
  DeviceBuffer<int> counter;  // v2's task counter (returned to the cache in stream order)
  dispatch_forward<DT>(plan, pp, [&](auto kernel) {
    const int64_t resident = resident_blocks(reinterpret_cast<const void*>(kernel), plan.threads, plan.smem);
    int64_t grid = pp.num_tasks;  // v1: one block per query tile
    if (plan.kernel == FwdKernel::v2_mma) {
      grid = persistent_grid(pp.num_tasks, 1, static_cast<int>(std::min<int64_t>(resident, INT32_MAX)));
      counter = DeviceBuffer<int>(1);
      DISTILL_CHECK_CUDA(cudaMemsetAsync(counter.data(), 0, sizeof(int), stream()));
      pp.task_counter = counter.data();
    }
    kernel<<<static_cast<unsigned>(grid), plan.threads, plan.smem, stream()>>>(pp);
    DISTILL_CHECK_LAUNCH();
  });
}

template void attention_forward<float>(const Tensor<float, Cuda>&, const Tensor<float, Cuda>&,
                                       const Tensor<float, Cuda>&, const AttentionOptions&, const Tensor<float, Cuda>&,
                                       const Tensor<float, Cuda>&);
template void attention_forward<bf16>(const Tensor<bf16, Cuda>&, const Tensor<bf16, Cuda>&, const Tensor<bf16, Cuda>&,
                                      const AttentionOptions&, const Tensor<bf16, Cuda>&, const Tensor<float, Cuda>&);
#endif

}  // namespace distill::cuda
