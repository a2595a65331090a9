// bitsandbytes 4-bit weights on the GPU (launchers declared in include/distill/cuda/nf4.hpp): dequantize,
// the decode GEMV (lab version v3, kernels/dev/nf4/nf4_lab.cu) and the dequantize + cuBLASLt training path.
//
// Rounding is quant/nf4.hpp's: scale = absmax[b], or __fadd_rn(__fmul_rn(dyn[absmax_q[b]], nested_absmax[b /
// nested_blocksize]), offset); value = __fmul_rn(code[q], scale) rounded to the checkpoint's dtype, then to T.
// The explicit _rn intrinsics keep nvcc from contracting them into an FMA, so dequantize is bit-identical to
// the CPU.
//
// GEMV v4 (bf16, M >= 2, in_features % 64 == 0): bf16 tensor cores (mma.sync m16n8k16, f32 accumulate). The M
// rows of x are the A operand (rows >= M zero), a dequantized 16x8 tile of W the B operand, built in registers from
// one 8-byte load per lane (columns permuted inside each 64-column chunk so that a lane's weights and x values are
// contiguous: see the kernel). A warp covers 16 output rows, so x is read once per 16 rows instead of once per row,
// and the M = 16 case costs about what M = 2 does.
// GEMV v3: one warp per output row (8 warps per block), blockIdx.y a K partition. Per step of 256 columns each
// lane loads one 4-byte packed word (8 weights inside one quantization block; the warp's load is 128 contiguous
// bytes) and the 8 matching x values of each of the M <= 16 rows (16 bytes; the warp's load is 512 contiguous
// bytes, shared through L1 by the block's warps, which read the same columns); four steps are in flight. The
// block scale is decoded from the double-quantized absmax in registers (the 256-entry dynamic map and the 16 codes
// sit in shared memory). Products accumulate in f32 per lane, then a butterfly over the warp. With one partition
// lane 0 writes y in T; with several, f32 partials [split, M, rows] are summed in partition order by a second
// kernel (deterministic: no atomics). v2 (16 packed bytes per lane, x read 64 bytes apart across lanes) stays in
// the lab for comparison.
// kernels/dev/nf4/emu_nf4_kernels.cpp compiles this file on the CPU (DISTILL_KERNEL_EMULATION) to check it without
// a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#ifndef DISTILL_KERNEL_EMULATION
#include "distill/cuda/check.hpp"
#endif
#include "common.cuh"
#include "distill/cuda/matmul.hpp"
#include "distill/cuda/nf4.hpp"

namespace distill::cuda {

namespace {

using namespace kern;  // common.cuh: device types, conversions, warp reductions

#ifndef DISTILL_KERNEL_EMULATION
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  kernel<<<grid, block, smem, stream()>>>(args...);
  DISTILL_CHECK_LAUNCH();
}
int sm_count() {  // cached per device (asked on every GEMV call)
  static std::atomic<int> cache[64] = {};
  int dev = 0, n = 0;
  DISTILL_CHECK_CUDA(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64)
    if (const int c = cache[dev].load(std::memory_order_relaxed); c > 0) return c;
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  n = std::max(n, 1);
  if (dev >= 0 && dev < 64) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}
#endif

std::atomic<int64_t> g_gemv{0}, g_gemv_v4{0}, g_dequant_gemm{0};

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Two values rounded to the checkpoint's dtype (R: 0 f32, 1 bf16, 2 f16), then to the storage type S, kept as f32:
// one packed conversion per dtype on the way (cvt.rn.bf16x2.f32 / f16x2), and none to S when S is the dtype
// already rounded to (R = 1 with bf16, R = 2 with f16) or f32.
template <int R, class S>
__device__ __forceinline__ void round_through2(float& a, float& b) {
  constexpr int rs = std::is_same_v<S, __nv_bfloat16> ? 1 : std::is_same_v<S, __half> ? 2 : 0;
  auto bf = [](float& u, float& v) {
    const float2 f = __bfloat1622float2(__floats2bfloat162_rn(u, v));
    u = f.x;
    v = f.y;
  };
  auto hf = [](float& u, float& v) {
    const float2 f = __half22float2(__floats2half2_rn(u, v));
    u = f.x;
    v = f.y;
  };
  if constexpr (R == 1) bf(a, b);
  if constexpr (R == 2) hf(a, b);
  if constexpr (rs == 1 && R != 1) bf(a, b);
  if constexpr (rs == 2 && R != 2) hf(a, b);
}

// The two weights of one packed byte (high nibble first), dequantized: code·scale in f32, rounded through R to S.
template <int R, class S>
__device__ __forceinline__ void decode_byte(uint32_t b, float scale, const float* s_code, float& hi, float& lo) {
  hi = __fmul_rn(s_code[(b >> 4) & 15u], scale);
  lo = __fmul_rn(s_code[b & 15u], scale);
  round_through2<R, S>(hi, lo);
}

// The scale of quantization block b.
__device__ __forceinline__ float block_scale(const Nf4View& w, const float* s_dyn, int64_t b) {
  if (!w.nested) return __ldg(w.absmax + b);
  return __fadd_rn(__fmul_rn(s_dyn[__ldg(w.absmax_q + b)], __ldg(w.nested_absmax + b / w.nested_blocksize)),
                   w.nested_offset);
}

// The 16 codes and the 256-entry dynamic map into shared memory (every thread of the block calls it).
__device__ __forceinline__ void load_tables(const Nf4View& w, float* s_code, float* s_dyn) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    if (i < 16) s_code[i] = w.code[i];
    s_dyn[i] = w.nested_code[i];
  }
  __syncthreads();
}

// --- dequantize ----------------------------------------------------------------------------------------------
// Vector path: one thread per 16 packed bytes (32 outputs, within one block), 16-byte stores when T allows.
template <int R, class S>
__global__ void __launch_bounds__(kThreads) nf4_dequant_vec(Nf4View w, S* __restrict__ out, int64_t chunks) {
  __shared__ float s_code[16];
  __shared__ float s_dyn[256];
  load_tables(w, s_code, s_dyn);
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < chunks; c += int64_t{gridDim.x} * blockDim.x) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w.packed) + c);
    const float scale = block_scale(w, s_dyn, c * 32 / w.blocksize);
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&raw);
    S* o = out + c * 32;
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // 8 outputs per step
      float v[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        decode_byte<R, S>(bytes[q * 4 + j], scale, s_code, v[2 * j], v[2 * j + 1]);
      }
      if constexpr (sizeof(S) == 2) {
        store_vec<8>(o + q * 8, v);
      } else {
        float a[4] = {v[0], v[1], v[2], v[3]}, b[4] = {v[4], v[5], v[6], v[7]};
        store_vec<4>(o + q * 8, a);
        store_vec<4>(o + q * 8 + 4, b);
      }
    }
  }
}

// Scalar path: any element count (odd counts, partial last block), one thread per packed byte.
template <int R, class S>
__global__ void __launch_bounds__(kThreads) nf4_dequant_scalar(Nf4View w, S* __restrict__ out, int64_t n) {
  __shared__ float s_code[16];
  __shared__ float s_dyn[256];
  load_tables(w, s_code, s_dyn);
  const int64_t nbytes = (n + 1) / 2;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < nbytes; i += int64_t{gridDim.x} * blockDim.x) {
    const uint8_t b = w.packed[i];
    const int64_t e = 2 * i;  // blocksize is even: both elements of a byte share a block
    const float scale = block_scale(w, s_dyn, e / w.blocksize);
    float hi, lo;
    decode_byte<R, S>(b, scale, s_code, hi, lo);
    out[e] = from_f32<S>(hi);
    if (e + 1 < n) out[e + 1] = from_f32<S>(lo);
  }
}

// --- GEMV v3 -------------------------------------------------------------------------------------------------
// 8 consecutive x values of row m at column k as f32 (16-byte aligned loads).
template <class S>
__device__ __forceinline__ void load_x8(const S* p, float (&v)[8]) {
  if constexpr (sizeof(S) == 2) {
    load_vec<8, true>(p, v);
  } else {
    float a[4], b[4];
    load_vec<4, true>(p, a);
    load_vec<4, true>(p + 4, b);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = a[j];
      v[4 + j] = b[j];
    }
  }
}

// acc[m] += Σ over the 8 weights of one packed word (columns k0 .. k0+7, one quantization block) · x[m, k0 ..].
template <int R, int kM, class S>
__device__ __forceinline__ void gemv_word(uint32_t word, float scale, const float* s_code, const S* x, int64_t ldx,
                                          int M, int64_t k0, float (&acc)[kM]) {
  float wv[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {  // byte j (little-endian) holds columns 2j (high nibble) and 2j + 1
    decode_byte<R, S>((word >> (8 * j)) & 0xFFu, scale, s_code, wv[2 * j], wv[2 * j + 1]);
  }
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    if (m < M) {
      float xv[8];
      load_x8(x + m * ldx + k0, xv);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[m] = fmaf(wv[j], xv[j], acc[m]);
    }
  }
}

// grid (ceil(rows / kW), splits), kW warps per block (one output row each). A step is 256 columns of the row: lane
// l takes the packed word of columns [256·step + 8·l, +8) — each warp-wide load is 128 contiguous bytes and the
// matching x loads are 512 contiguous bytes per row of x (coalesced, shared through L1 by the block's warps). Four
// steps are loaded before any is used. K partition s covers steps [s·per, min(steps, (s+1)·per)).
template <int R, int kM, int kW, class S>
__global__ void __launch_bounds__(kW * 32)
    nf4_gemv_v3(const S* __restrict__ x, int64_t ldx, int M, Nf4View w, S* __restrict__ y, int64_t ldy,
                float* __restrict__ partial, int64_t per) {
  __shared__ float s_code[16];
  __shared__ float s_dyn[256];
  load_tables(w, s_code, s_dyn);
  const int lane = threadIdx.x & 31;
  const int64_t n = blockIdx.x * int64_t{kW} + (threadIdx.x >> 5);
  if (n >= w.rows) return;  // whole warps leave together: no shuffle below is split
  const int64_t steps = (w.cols + 255) / 256;
  const int64_t lo = blockIdx.y * per, hi = std::min(steps, lo + per);
  const uint8_t* row = w.packed + n * (w.cols / 2);
  const int64_t row_elem = n * w.cols;
  float acc[kM];
#pragma unroll
  for (int m = 0; m < kM; ++m) acc[m] = 0.f;
  for (int64_t st = lo; st < hi; st += 4) {
    uint32_t word[4];
    float scale[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t k0 = (st + u) * 256 + lane * 8;
      if (st + u < hi && k0 < w.cols) {
        word[u] = __ldg(reinterpret_cast<const uint32_t*>(row + k0 / 2));
        scale[u] = block_scale(w, s_dyn, (row_elem + k0) / w.blocksize);
      }
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t k0 = (st + u) * 256 + lane * 8;
      if (st + u < hi && k0 < w.cols) gemv_word<R, kM>(word[u], scale[u], s_code, x, ldx, M, k0, acc);
    }
  }
#pragma unroll
  for (int m = 0; m < kM; ++m) acc[m] = warp_allreduce(acc[m], SumOp{});
  if (lane == 0) {
    for (int m = 0; m < M && m < kM; ++m) {
      if (partial)
        partial[(blockIdx.y * int64_t{M} + m) * w.rows + n] = acc[m];
      else
        y[m * ldy + n] = from_f32<S>(acc[m]);
    }
  }
}

// --- GEMV v4: bf16 tensor cores --------------------------------------------------------------------------------
#ifndef DISTILL_KERNEL_EMULATION
// D += A·B for one m16n8k16 tile: A 16x16 bf16 row-major (4 regs), B 16x8 bf16 column-major (2 regs), D f32.
__device__ __forceinline__ void nf4_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Fragment layouts (PTX ISA, m16n8k16 .bf16; lane = 4g + c): A a0 (row g, k 2c..2c+1), a1 (row g+8, same k),
// a2 (row g, k 2c+8..+9), a3 (row g+8, k 2c+8..+9); B b0 (k 2c..2c+1, col g), b1 (k 2c+8..+9, col g); D d0, d1
// (row g, cols 2c, 2c+1), d2, d3 (row g+8, cols 2c, 2c+1). The sum over k does not care about order, so a 64-column
// chunk is permuted: in mma step j, lane quad c's logical k {2c, 2c+1, 2c+8, 2c+9} are the physical columns
// 16c + 4j + {0, 1, 2, 3}. Lane (g, c) then needs 16 consecutive weights of one row (8 packed bytes: one load) and
// 16 consecutive x values of rows g and g+8 (two 32-byte runs), and every mma step uses 4 of each.
// A warp computes the M (<= 16, rows >= M are zeros) x 16 outputs of two n8 tiles; kW warps of a block take
// consecutive tiles over the same K range (x shared through L1); blockIdx.y is a K partition of 64-column chunks.
template <int R, int kW>
__global__ void __launch_bounds__(kW * 32)
    nf4_gemv_v4(const __nv_bfloat16* __restrict__ x, int64_t ldx, int M, Nf4View w, __nv_bfloat16* __restrict__ y,
                int64_t ldy, float* __restrict__ partial, int64_t per) {
  __shared__ float s_code[16];
  __shared__ float s_dyn[256];
  load_tables(w, s_code, s_dyn);
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t n0 = (blockIdx.x * int64_t{kW} + (threadIdx.x >> 5)) * 16;
  if (n0 >= w.rows) return;  // whole warps leave together
  const int64_t chunks = w.cols / 64;
  const int64_t lo = blockIdx.y * per, hi = std::min(chunks, lo + per);
  float acc[2][4] = {};
  for (int64_t ch = lo; ch < hi; ++ch) {
    const int64_t k = ch * 64 + 16 * c;  // this lane's 16 physical columns
    uint2 word[2];
    float scale[2];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int64_t row = n0 + 8 * t + g;
      word[t] = make_uint2(0u, 0u);
      scale[t] = 0.f;
      if (row < w.rows) {
        word[t] = __ldg(reinterpret_cast<const uint2*>(w.packed + (row * w.cols + k) / 2));
        scale[t] = block_scale(w, s_dyn, (row * w.cols + k) / w.blocksize);
      }
    }
    uint32_t xa[2][8];  // rows g and g + 8: 16 bf16 each, as 8 pairs
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = g + 8 * h;
      uint4 q0 = make_uint4(0u, 0u, 0u, 0u), q1 = q0;
      if (m < M) {
        const uint4* p = reinterpret_cast<const uint4*>(x + m * ldx + k);
        q0 = __ldg(p);
        q1 = __ldg(p + 1);
      }
      xa[h][0] = q0.x, xa[h][1] = q0.y, xa[h][2] = q0.z, xa[h][3] = q0.w;
      xa[h][4] = q1.x, xa[h][5] = q1.y, xa[h][6] = q1.z, xa[h][7] = q1.w;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t a[4] = {xa[0][2 * j], xa[1][2 * j], xa[0][2 * j + 1], xa[1][2 * j + 1]};
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const uint32_t bytes = j < 2 ? word[t].x >> (16 * j) : word[t].y >> (16 * (j - 2));  // columns 4j .. 4j+3
        float v[4];
        decode_byte<R, __nv_bfloat16>(bytes & 0xFFu, scale[t], s_code, v[0], v[1]);
        decode_byte<R, __nv_bfloat16>((bytes >> 8) & 0xFFu, scale[t], s_code, v[2], v[3]);
        nf4_mma(acc[t], a, pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]));
      }
    }
  }
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = g + (i >= 2 ? 8 : 0);
      const int64_t n = n0 + 8 * t + 2 * c + (i & 1);
      if (m < M && n < w.rows) {
        if (partial)
          partial[(blockIdx.y * int64_t{M} + m) * w.rows + n] = acc[t][i];
        else
          y[m * ldy + n] = __float2bfloat16_rn(acc[t][i]);
      }
    }
}

// y[m, n] = Σ_s partial[s, m, n] in partition order.
template <class S>
__global__ void __launch_bounds__(kThreads) nf4_gemv_reduce(const float* __restrict__ partial, int splits, int M,
                                                            int64_t rows, S* __restrict__ y, int64_t ldy) {
  const int64_t total = int64_t{M} * rows;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < splits; ++k) s += partial[k * total + i];
    const int64_t m = i / rows, n = i - m * rows;
    y[m * ldy + n] = from_f32<S>(s);
  }
}

template <int R, int kW, class S>
void launch_gemv(const S* x, int64_t ldx, int M, const Nf4View& w, S* y, int64_t ldy, float* partial, int64_t per,
                 int splits) {
  const dim3 grid(static_cast<unsigned>((w.rows + kW - 1) / kW), static_cast<unsigned>(splits)), block(kW * 32);
  if (M == 1)
    launch(nf4_gemv_v3<R, 1, kW, S>, grid, block, 0, x, ldx, M, w, y, ldy, partial, per);
  else if (M <= 2)
    launch(nf4_gemv_v3<R, 2, kW, S>, grid, block, 0, x, ldx, M, w, y, ldy, partial, per);
  else if (M <= 4)
    launch(nf4_gemv_v3<R, 4, kW, S>, grid, block, 0, x, ldx, M, w, y, ldy, partial, per);
  else if (M <= 8)
    launch(nf4_gemv_v3<R, 8, kW, S>, grid, block, 0, x, ldx, M, w, y, ldy, partial, per);
  else
    launch(nf4_gemv_v3<R, 16, kW, S>, grid, block, 0, x, ldx, M, w, y, ldy, partial, per);
}

// fn(std::integral_constant<int, R>{}) for the checkpoint dtype code `through` (0 f32, 1 bf16, 2 f16).
template <class F>
void with_through(int through, F&& fn) {
  if (through == 1)
    fn(std::integral_constant<int, 1>{});
  else if (through == 2)
    fn(std::integral_constant<int, 2>{});
  else
    fn(std::integral_constant<int, 0>{});
}

}  // namespace

template <class T>
void nf4_dequantize(const Nf4View& w, T* out) {
  using S = dev_t<T>;
  const int64_t n = w.rows * w.cols;
  if (n <= 0) return;
  S* o = reinterpret_cast<S*>(out);
  const bool vec = n % 32 == 0 && w.blocksize % 32 == 0 && aligned16(w.packed) && aligned16(out);
  const int64_t items = vec ? n / 32 : (n + 1) / 2;
  const unsigned grid = grid_for(items, kThreads, int64_t{1} << 16);
  auto go = [&](auto r) {
    constexpr int R = decltype(r)::value;
    if (vec)
      launch(nf4_dequant_vec<R, S>, dim3(grid), dim3(kThreads), 0, w, o, items);
    else
      launch(nf4_dequant_scalar<R, S>, dim3(grid), dim3(kThreads), 0, w, o, n);
  };
  with_through(w.through, go);
}

namespace {
// nf4_gemv after its layout check (nf4_matmul has made the same check already).
template <class T>
void gemv_checked(const T* x, int64_t ldx, int64_t M, const Nf4View& w, T* y, int64_t ldy, int splits, int version) {
  const bool v4_ok = std::is_same_v<T, bf16> && nf4_gemv_v4_fits(w);
  if (version == 0) version = v4_ok && M > 1 ? 4 : 3;
  DISTILL_CHECK(version == 3 || (version == 4 && v4_ok), "nf4_gemv: version ", version,
                " is not available here (v3: any layout nf4_gemv takes; v4: bf16 with in_features % 64 == 0)");
  if (w.rows == 0) return;
  // K units: 256-column steps (v3) or 64-column chunks (v4).
  const int64_t units = version == 4 ? w.cols / 64 : (w.cols + 255) / 256;
  if (splits <= 0) splits = nf4_gemv_splits(w.rows, w.cols, sm_count(), version);
  splits = static_cast<int>(std::clamp<int64_t>(splits, 1, std::max<int64_t>(units, 1)));
  const int64_t per = (units + splits - 1) / splits;
  splits = static_cast<int>(units > 0 ? (units + per - 1) / per : 1);  // no empty partition
  using S = dev_t<T>;
  const S* xs = reinterpret_cast<const S*>(x);
  S* ys = reinterpret_cast<S*>(y);
  DeviceBuffer<float> partial(splits > 1 ? static_cast<size_t>(splits * M * w.rows) : 0);
  float* pp = splits > 1 ? partial.data() : nullptr;
  auto go = [&](auto r) {
    constexpr int R = decltype(r)::value;
    if constexpr (std::is_same_v<T, bf16>) {
      if (version == 4) {
        constexpr int kW4 = 4;
        const dim3 grid(static_cast<unsigned>((w.rows + 16 * kW4 - 1) / (16 * kW4)), static_cast<unsigned>(splits));
        launch(nf4_gemv_v4<R, kW4>, grid, dim3(kW4 * 32), 0, xs, ldx, static_cast<int>(M), w, ys, ldy, pp, per);
        return;
      }
    }
    launch_gemv<R, kWarps, S>(xs, ldx, static_cast<int>(M), w, ys, ldy, pp, per, splits);
  };
  with_through(w.through, go);
  if (splits > 1)
    launch(nf4_gemv_reduce<S>, dim3(grid_for(M * w.rows, kThreads, int64_t{1} << 16)), dim3(kThreads), 0,
           static_cast<const float*>(pp), splits, static_cast<int>(M), w.rows, ys, ldy);
  ++(version == 4 ? g_gemv_v4 : g_gemv);
}
}  // namespace

template <class T>
void nf4_gemv(const T* x, int64_t ldx, int64_t M, const Nf4View& w, T* y, int64_t ldy, int splits, int version) {
  const std::string why = nf4_gemv_unsupported_reason(w, M, x, ldx, sizeof(T));
  DISTILL_CHECK(why.empty(), "nf4_gemv: cannot run on this layout: ", why);
  gemv_checked<T>(x, ldx, M, w, y, ldy, splits, version);
}

template <class T>
Tensor<T, Cuda> nf4_matmul(const Tensor<T, Cuda>& x, const Nf4Device& w) {
  DISTILL_CHECK(x.rank() == 2 && x.is_contiguous() && x.dim(1) == w.cols(), "nf4_matmul: x must be contiguous [M, ",
                w.cols(), "], got ", x.shape().str());
  const int64_t M = x.dim(0);
  auto y = Tensor<T, Cuda>::empty({M, w.rows()});
  if (M == 0 || w.rows() == 0) return y;
  if (nf4_gemv_unsupported_reason(w.view(), M, x.data(), w.cols(), sizeof(T)).empty()) {
    gemv_checked<T>(x.data(), w.cols(), M, w.view(), y.data(), w.rows(), 0, 0);
    return y;
  }
  DeviceBuffer<T> wd(static_cast<size_t>(w.rows() * w.cols()));
  nf4_dequantize<T>(w.view(), wd.data());
  gemm<T>(x.data(), w.cols(), false, wd.data(), w.cols(), true, y.data(), w.rows(), M, w.rows(), w.cols(), 1, 0, 0, 0);
  ++g_dequant_gemm;
  return y;
}

template <class T>
Tensor<T, Cuda> nf4_matmul_dx(const Tensor<T, Cuda>& dy, const Nf4Device& w) {
  DISTILL_CHECK(dy.rank() == 2 && dy.is_contiguous() && dy.dim(1) == w.rows(),
                "nf4_matmul_dx: dy must be contiguous [M, ", w.rows(), "], got ", dy.shape().str());
  const int64_t M = dy.dim(0);
  auto dx = Tensor<T, Cuda>::empty({M, w.cols()});
  if (M == 0 || w.cols() == 0) return dx;
  DeviceBuffer<T> wd(static_cast<size_t>(w.rows() * w.cols()));
  nf4_dequantize<T>(w.view(), wd.data());
  gemm<T>(dy.data(), w.rows(), false, wd.data(), w.cols(), false, dx.data(), w.cols(), M, w.cols(), w.rows(), 1, 0, 0,
          0);
  ++g_dequant_gemm;
  return dx;
}

Nf4Counters nf4_counters() { return {g_gemv.load() + g_gemv_v4.load(), g_gemv_v4.load(), g_dequant_gemm.load()}; }

#define DISTILL_INST_NF4(T)                                                                     \
  template void nf4_dequantize<T>(const Nf4View&, T*);                                          \
  template void nf4_gemv<T>(const T*, int64_t, int64_t, const Nf4View&, T*, int64_t, int, int); \
  template Tensor<T, Cuda> nf4_matmul<T>(const Tensor<T, Cuda>&, const Nf4Device&);             \
  template Tensor<T, Cuda> nf4_matmul_dx<T>(const Tensor<T, Cuda>&, const Nf4Device&);
DISTILL_INST_NF4(float)
DISTILL_INST_NF4(bf16)
DISTILL_INST_NF4(f16)

}  // namespace distill::cuda
