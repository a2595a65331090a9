// bitsandbytes 4-bit weights on the GPU (launchers declared in include/distill/cuda/nf4.hpp): dequantize,
// the decode GEMV (lab version v3, kernels/dev/nf4/nf4_lab.cu) and the dequantize + cuBLASLt training path.
//
// Rounding is quant/nf4.hpp's: scale = absmax[b], or __fadd_rn(__fmul_rn(dyn[absmax_q[b]], nested_absmax[b /
// nested_blocksize]), offset); value = __fmul_rn(code[q], scale) rounded to the checkpoint's dtype, then to T.
// The explicit _rn intrinsics keep nvcc from contracting them into an FMA, so dequantize is bit-identical to
// the CPU.
//
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
int sm_count() {
  int dev = 0, n = 0;
  DISTILL_CHECK_CUDA(cudaGetDevice(&dev));
  DISTILL_CHECK_CUDA(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return std::max(n, 1);
}
#endif

std::atomic<int64_t> g_gemv{0}, g_dequant_gemm{0};

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// The value rounded to the checkpoint's dtype (R: 0 f32, 1 bf16, 2 f16), then to the storage type S, as f32.
template <int R, class S>
__device__ __forceinline__ float round_through(float v) {
  if constexpr (R == 1) v = __bfloat162float(__float2bfloat16_rn(v));
  if constexpr (R == 2) v = __half2float(__float2half_rn(v));
  return to_f32(from_f32<S>(v));
}

// The same for two values at once: one packed conversion per dtype on the way (cvt.rn.bf16x2.f32 / f16x2), and
// none to S when S is the dtype already rounded to (R = 1 with bf16, R = 2 with f16) or f32.
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
        const uint8_t b = bytes[q * 4 + j];
        v[2 * j] = round_through<R, S>(__fmul_rn(s_code[b >> 4], scale));
        v[2 * j + 1] = round_through<R, S>(__fmul_rn(s_code[b & 15], scale));
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
    out[e] = from_f32<S>(round_through<R, S>(__fmul_rn(s_code[b >> 4], scale)));
    if (e + 1 < n) out[e + 1] = from_f32<S>(round_through<R, S>(__fmul_rn(s_code[b & 15], scale)));
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
    const uint32_t b = (word >> (8 * j)) & 0xFFu;
    wv[2 * j] = __fmul_rn(s_code[b >> 4], scale);
    wv[2 * j + 1] = __fmul_rn(s_code[b & 15u], scale);
    round_through2<R, S>(wv[2 * j], wv[2 * j + 1]);
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
  if (w.through == 1)
    go(std::integral_constant<int, 1>{});
  else if (w.through == 2)
    go(std::integral_constant<int, 2>{});
  else
    go(std::integral_constant<int, 0>{});
}

template <class T>
void nf4_gemv(const T* x, int64_t ldx, int64_t M, const Nf4View& w, T* y, int64_t ldy, int splits) {
  const std::string why = nf4_gemv_unsupported_reason(w, M, x, ldx, sizeof(T));
  DISTILL_CHECK(why.empty(), "nf4_gemv: cannot run on this layout: ", why);
  if (w.rows == 0) return;
  const int64_t C = (w.cols + 255) / 256;  // steps of 256 columns
  if (splits <= 0) splits = nf4_gemv_splits(w.rows, w.cols, sm_count());
  splits = static_cast<int>(std::clamp<int64_t>(splits, 1, std::max<int64_t>(C, 1)));
  const int64_t per = (C + splits - 1) / splits;
  splits = static_cast<int>(C > 0 ? (C + per - 1) / per : 1);  // no empty partition
  using S = dev_t<T>;
  const S* xs = reinterpret_cast<const S*>(x);
  S* ys = reinterpret_cast<S*>(y);
  DeviceBuffer<float> partial(splits > 1 ? static_cast<size_t>(splits * M * w.rows) : 0);
  auto go = [&](auto r) {
    constexpr int R = decltype(r)::value;
    launch_gemv<R, kWarps, S>(xs, ldx, static_cast<int>(M), w, ys, ldy, splits > 1 ? partial.data() : nullptr, per,
                              splits);
  };
  if (w.through == 1)
    go(std::integral_constant<int, 1>{});
  else if (w.through == 2)
    go(std::integral_constant<int, 2>{});
  else
    go(std::integral_constant<int, 0>{});
  if (splits > 1)
    launch(nf4_gemv_reduce<S>, dim3(grid_for(M * w.rows, kThreads, int64_t{1} << 16)), dim3(kThreads), 0,
           static_cast<const float*>(partial.data()), splits, static_cast<int>(M), w.rows, ys, ldy);
  ++g_gemv;
}

template <class T>
Tensor<T, Cuda> nf4_matmul(const Tensor<T, Cuda>& x, const Nf4Device& w) {
  DISTILL_CHECK(x.rank() == 2 && x.is_contiguous() && x.dim(1) == w.cols(), "nf4_matmul: x must be contiguous [M, ",
                w.cols(), "], got ", x.shape().str());
  const int64_t M = x.dim(0);
  auto y = Tensor<T, Cuda>::empty({M, w.rows()});
  if (M == 0 || w.rows() == 0) return y;
  if (nf4_gemv_unsupported_reason(w.view(), M, x.data(), w.cols(), sizeof(T)).empty()) {
    nf4_gemv<T>(x.data(), w.cols(), M, w.view(), y.data(), w.rows());
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

Nf4Counters nf4_counters() { return {g_gemv.load(), g_dequant_gemm.load()}; }

#define DISTILL_INST_NF4(T)                                                                \
  template void nf4_dequantize<T>(const Nf4View&, T*);                                     \
  template void nf4_gemv<T>(const T*, int64_t, int64_t, const Nf4View&, T*, int64_t, int); \
  template Tensor<T, Cuda> nf4_matmul<T>(const Tensor<T, Cuda>&, const Nf4Device&);        \
  template Tensor<T, Cuda> nf4_matmul_dx<T>(const Tensor<T, Cuda>&, const Nf4Device&);
DISTILL_INST_NF4(float)
DISTILL_INST_NF4(bf16)
DISTILL_INST_NF4(f16)

}  // namespace distill::cuda
