// Cross-entropy kernels behind include/distill/cuda/cross_entropy.hpp (the contract is documented there).
// Row kernels: one block of kRowThreads per row, looping over the row with 16-byte loads (a scalar head up to
// the first 16-byte boundary and a scalar tail), each thread keeping an online (max, sum of exp) in f32 that
// the block then merges with warp shuffles and shared memory. The loss is the mean of the per-row losses,
// summed in double by one block in a fixed order.
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "distill/core/dtype.hpp"
#include "distill/cuda/check.hpp"
#include "distill/cuda/cross_entropy.hpp"
#include "distill/cuda/embedding.hpp"
#include "distill/cuda/matmul.hpp"

namespace distill::cuda {

namespace {

constexpr int kRowThreads = 512;  // one block per row
constexpr int kMeanThreads = 1024;
constexpr int kElemThreads = 256;

using namespace kern;  // common.cuh: device types, conversions, vector access, reductions

// --- online log-sum-exp ------------------------------------------------------------------------------------
// State (m, s): s = sum(exp(x - m)) over the values seen, m their max (-inf when none). -inf logits
// contribute 0 (and never produce -inf - -inf); a NaN logit makes s NaN.
__device__ __forceinline__ void lse_add(float& m, float& s, float x) {
  if (x > m) {
    s *= __expf(m - x);
    m = x;
  }
  s += x == -INFINITY ? 0.f : __expf(x - m);
}

template <class S>
__device__ __forceinline__ void lse_add_vec(float& m, float& s, const uint4& raw) {
  constexpr int N = 16 / sizeof(S);
  const S* e = reinterpret_cast<const S*>(&raw);
  float x[N];
  float vm = -INFINITY;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    x[k] = to_f32(e[k]);
    vm = fmaxf(vm, x[k]);
  }
  if (vm > m) {
    s *= __expf(m - vm);
    m = vm;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) s += x[k] == -INFINITY ? 0.f : __expf(x[k] - m);
}

__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  if (M == -INFINITY) {
    s += s2;
    return;
  }
  s = s * __expf(m - M) + s2 * __expf(m2 - M);
  m = M;
}

// This thread's share of a row of `len` values: head scalars up to the first 16-byte boundary, 16-byte
// vectors (two loads in flight per thread), tail scalars.
template <class S>
__device__ __forceinline__ void thread_lse(const S* __restrict__ row, int64_t len, float& m, float& s) {
  constexpr int N = 16 / sizeof(S);
  const int64_t B = blockDim.x, tid = threadIdx.x;
  const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(S));
  const int64_t head = mis ? (len < N - mis ? len : N - mis) : 0;
  for (int64_t j = tid; j < head; j += B) lse_add(m, s, to_f32(row[j]));
  const int64_t nvec = (len - head) / N;
  const uint4* gVec = reinterpret_cast<const uint4*>(row + head);
  int64_t q = tid;
  for (; q + B < nvec; q += 2 * B) {
    const uint4 a = gVec[q], b = gVec[q + B];
    lse_add_vec<S>(m, s, a);
    lse_add_vec<S>(m, s, b);
  }
  for (; q < nvec; q += B) lse_add_vec<S>(m, s, gVec[q]);
  for (int64_t j = head + nvec * N + tid; j < len; j += B) lse_add(m, s, to_f32(row[j]));
}

// Merges every thread's (m, s); all threads return the block's result. Call once per kernel, from
// uniform control flow.
__device__ __forceinline__ void block_lse(float& m, float& s) {
  __shared__ float sM[32], sS[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) lse_merge(m, s, __shfl_xor_sync(kFullMask, m, o), __shfl_xor_sync(kFullMask, s, o));
  if (lane == 0) {
    sM[warp] = m;
    sS[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? sM[lane] : -INFINITY;
    s = lane < warps ? sS[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      lse_merge(m, s, __shfl_xor_sync(kFullMask, m, o), __shfl_xor_sync(kFullMask, s, o));
    if (lane == 0) {
      sM[0] = m;
      sS[0] = s;
    }
  }
  __syncthreads();
  m = sM[0];
  s = sS[0];
}

// y[j] = f(j, x[j], y[j]) over a row (as floats), with 16-byte accesses where x and y share their alignment
// (kVec); kReadY = false skips loading y (in-place maps that overwrite).
template <class S, bool kVec, bool kReadY, class F>
__device__ __forceinline__ void row_map(const S* x, S* y, int64_t len, F f) {
  constexpr int N = 16 / sizeof(S);
  const int64_t B = blockDim.x, tid = threadIdx.x;
  auto scalar = [&](int64_t j) { y[j] = from_f32<S>(f(j, to_f32(x[j]), kReadY ? to_f32(y[j]) : 0.f)); };
  if constexpr (!kVec) {
    for (int64_t j = tid; j < len; j += B) scalar(j);
  } else {
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(x) & 15u) / sizeof(S));
    const int64_t head = mis ? (len < N - mis ? len : N - mis) : 0;
    for (int64_t j = tid; j < head; j += B) scalar(j);
    const int64_t nvec = (len - head) / N;
    for (int64_t q = tid; q < nvec; q += B) {
      const int64_t j0 = head + q * N;
      const uint4 rx = *reinterpret_cast<const uint4*>(x + j0);
      uint4 ry = kReadY ? *reinterpret_cast<const uint4*>(y + j0) : uint4{};
      const S* ex = reinterpret_cast<const S*>(&rx);
      S* ey = reinterpret_cast<S*>(&ry);
#pragma unroll
      for (int k = 0; k < N; ++k) ey[k] = from_f32<S>(f(j0 + k, to_f32(ex[k]), kReadY ? to_f32(ey[k]) : 0.f));
      *reinterpret_cast<uint4*>(y + j0) = ry;
    }
    for (int64_t j = head + nvec * N + tid; j < len; j += B) scalar(j);
  }
}

// scale = g / count, as the CPU computes it (double division, then f32).
template <class S>
__device__ __forceinline__ float grad_scale(const S* g, int64_t count) {
  return static_cast<float>(static_cast<double>(to_f32(*g)) / static_cast<double>(count));
}

// --- cross_entropy -----------------------------------------------------------------------------------------
template <class S>
__global__ void __launch_bounds__(kRowThreads)
    ce_forward_kernel(const S* __restrict__ gX, int64_t V, const int32_t* __restrict__ gT, int32_t ignore_index,
                      float* __restrict__ gLse, float* __restrict__ gLoss) {
  const int64_t i = blockIdx.x;
  const int32_t t = gT[i];
  if (t == ignore_index) {  // uniform per block: the whole block leaves
    if (threadIdx.x == 0) gLse[i] = gLoss[i] = 0.f;
    return;
  }
  const S* row = gX + i * V;
  float m = -INFINITY, s = 0.f;
  thread_lse(row, V, m, s);
  block_lse(m, s);
  if (threadIdx.x == 0) {
    const float lse = m + logf(s);
    gLse[i] = lse;
    gLoss[i] = lse - to_f32(row[t]);
  }
}

template <class S, bool kVec>
__global__ void __launch_bounds__(kRowThreads)
    ce_backward_kernel(const S* __restrict__ gX, S* __restrict__ gD, int64_t V, const int32_t* __restrict__ gT,
                       int32_t ignore_index, const float* __restrict__ gLse, const S* __restrict__ gG, int64_t count) {
  const int64_t i = blockIdx.x;
  const int32_t t = gT[i];
  if (t == ignore_index) return;
  const float scale = grad_scale(gG, count), lse = gLse[i];
  row_map<S, kVec, true>(gX + i * V, gD + i * V, V, [=](int64_t j, float x, float d) {
    float p = __expf(x - lse) * scale;
    if (j == t) p -= scale;
    return d + p;
  });
}

// out = sum(v[0..n)) / count (0 when count == 0), summed in double in a fixed order by one block.
template <class S>
__global__ void __launch_bounds__(kMeanThreads)
    mean_kernel(const float* __restrict__ gV, int64_t n, int64_t count, S* __restrict__ gOut) {
  __shared__ double sAcc[kMeanThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += static_cast<double>(gV[i]);
  sAcc[threadIdx.x] = acc;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) sAcc[threadIdx.x] += sAcc[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *gOut = from_f32<S>(count > 0 ? static_cast<float>(sAcc[0] / static_cast<double>(count)) : 0.f);
}

// --- linear_cross_entropy ----------------------------------------------------------------------------------
__global__ void lce_init_kernel(float* __restrict__ gM, float* __restrict__ gS, float* __restrict__ gTgt, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    gM[i] = -INFINITY;
    gS[i] = 0.f;
    gTgt[i] = 0.f;
  }
}

// Row r of a logits chunk (classes [v0, v0 + cols)): merge its (max, sum) into the running state; keep the
// target's logit when it falls in this chunk.
template <class S>
__global__ void __launch_bounds__(kRowThreads)
    lce_chunk_forward_kernel(const S* __restrict__ gL, int64_t ld, int64_t cols, int64_t v0,
                             const int32_t* __restrict__ gT, float* __restrict__ gM, float* __restrict__ gS,
                             float* __restrict__ gTgt) {
  const int64_t r = blockIdx.x;
  const S* row = gL + r * ld;
  float m = -INFINITY, s = 0.f;
  thread_lse(row, cols, m, s);
  block_lse(m, s);
  if (threadIdx.x == 0) {
    float rm = gM[r], rs = gS[r];
    lse_merge(rm, rs, m, s);
    gM[r] = rm;
    gS[r] = rs;
    const int64_t t = gT[r];
    if (t >= v0 && t < v0 + cols) gTgt[r] = to_f32(row[t - v0]);
  }
}

__global__ void lce_finalize_kernel(const float* __restrict__ gM, const float* __restrict__ gS,
                                    const float* __restrict__ gTgt, int64_t n, float* __restrict__ gLse,
                                    float* __restrict__ gLoss) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float lse = gM[i] + logf(gS[i]);
    gLse[i] = lse;
    gLoss[i] = lse - gTgt[i];
  }
}

// In place: a logits chunk row becomes dlogits = (softmax - onehot) * g / count.
template <class S>
__global__ void __launch_bounds__(kRowThreads)
    lce_chunk_grad_kernel(S* __restrict__ gL, int64_t ld, int64_t cols, int64_t v0, const int32_t* __restrict__ gT,
                          const float* __restrict__ gLse, const S* __restrict__ gG, int64_t count) {
  const int64_t r = blockIdx.x;
  const float scale = grad_scale(gG, count), lse = gLse[r];
  const int64_t t = gT[r] - v0;  // the target's column in this chunk (maybe outside it)
  S* row = gL + r * ld;
  row_map<S, true, false>(row, row, cols, [=](int64_t j, float x, float) {
    float p = __expf(x - lse) * scale;
    if (j == t) p -= scale;
    return p;
  });
}

// acc[i] += part[i] (f32 accumulation of a 16-bit GEMM result).
template <class S>
__global__ void add_to_f32_kernel(float* __restrict__ gAcc, const S* __restrict__ gPart, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    gAcc[i] += to_f32(gPart[i]);
}

// dst row (active ? active[r] : r0 + r) += acc row r, rounded once.
template <class S>
__global__ void scatter_rows_add_kernel(S* __restrict__ gDst, int64_t C, const int32_t* __restrict__ gActive,
                                        int64_t r0, int64_t rows, const float* __restrict__ gAcc) {
  const int64_t total = rows * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / C, c = i - r * C;
    const int64_t row = gActive ? static_cast<int64_t>(gActive[r]) : r0 + r;
    S& d = gDst[row * C + c];
    d = from_f32<S>(to_f32(d) + gAcc[i]);
  }
}

inline bool same_alignment16(const void* a, const void* b) {
  return ((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(b)) & 15u) == 0;
}

void check_rows(int64_t rows, const char* op) {
  DISTILL_CHECK(rows <= INT_MAX, op, ": ", rows, " rows exceed the grid limit of 2^31 - 1 (one block per row)");
}

}  // namespace

template <class T>
void cross_entropy_forward(const T* logits, int64_t N, int64_t V, const int32_t* targets, int32_t ignore_index,
                           int64_t count, float* lse, T* loss) {
  using S = typename DevType<T>::type;
  S* out = reinterpret_cast<S*>(loss);
  if (N <= 0 || count <= 0) {
    if (N > 0) memset_device_zero(lse, sizeof(float) * static_cast<size_t>(N));
    mean_kernel<S><<<1, kMeanThreads, 0, stream()>>>(nullptr, 0, 0, out);
    DISTILL_CHECK_LAUNCH();
    return;
  }
  check_rows(N, "cross_entropy");
  DeviceBuffer<float> row_loss(static_cast<size_t>(N));
  ce_forward_kernel<S><<<static_cast<unsigned>(N), kRowThreads, 0, stream()>>>(
      reinterpret_cast<const S*>(logits), V, targets, ignore_index, lse, row_loss.data());
  DISTILL_CHECK_LAUNCH();
  mean_kernel<S><<<1, kMeanThreads, 0, stream()>>>(row_loss.data(), N, count, out);
  DISTILL_CHECK_LAUNCH();
}

template <class T>
void cross_entropy_backward(const T* logits, int64_t N, int64_t V, const int32_t* targets, int32_t ignore_index,
                            int64_t count, const float* lse, const T* grad_out, T* dlogits) {
  if (N <= 0 || V <= 0 || count <= 0) return;
  check_rows(N, "cross_entropy_backward");
  using S = typename DevType<T>::type;
  const S* x = reinterpret_cast<const S*>(logits);
  S* d = reinterpret_cast<S*>(dlogits);
  const S* g = reinterpret_cast<const S*>(grad_out);
  const unsigned grid = static_cast<unsigned>(N);
  if (same_alignment16(logits, dlogits))
    ce_backward_kernel<S, true><<<grid, kRowThreads, 0, stream()>>>(x, d, V, targets, ignore_index, lse, g, count);
  else
    ce_backward_kernel<S, false><<<grid, kRowThreads, 0, stream()>>>(x, d, V, targets, ignore_index, lse, g, count);
  DISTILL_CHECK_LAUNCH();
}

template <class T>
void linear_cross_entropy_forward(const T* hidden, const T* weight, int64_t N, int64_t C, int64_t V,
                                  const int32_t* active, const int32_t* targets, int64_t n, float* lse, T* loss,
                                  int64_t vocab_chunk, int64_t row_chunk) {
  using S = typename DevType<T>::type;
  DISTILL_CHECK(n > 0 && V > 0, "linear_cross_entropy: needs at least one counted row and class (n = ", n, ", V = ", V,
                ")");
  DISTILL_CHECK(active || n == N, "linear_cross_entropy: without an active-row list every row counts (n = ", n,
                ", N = ", N, ")");
  const LceTiling tile = lce_tiling(n, V, sizeof(T), vocab_chunk, row_chunk);
  check_rows(tile.rows, "linear_cross_entropy");
  DeviceBuffer<T> chunk(static_cast<size_t>(tile.rows * tile.ld));                                  // [rows, ld] logits
  DeviceBuffer<T> gathered(active ? static_cast<size_t>(tile.rows * std::max<int64_t>(C, 1)) : 0);  // [rows, C]
  DeviceBuffer<float> run_m(static_cast<size_t>(n)), run_s(static_cast<size_t>(n)), tgt(static_cast<size_t>(n)),
      row_loss(static_cast<size_t>(n));
  lce_init_kernel<<<grid_for(n, kElemThreads), kElemThreads, 0, stream()>>>(run_m.data(), run_s.data(), tgt.data(), n);
  DISTILL_CHECK_LAUNCH();
  for (int64_t a0 = 0; a0 < n; a0 += tile.rows) {
    const int64_t rows = std::min(tile.rows, n - a0);
    const T* H = hidden + a0 * C;  // [rows, C]
    if (active) {
      embedding_forward(hidden, C, active + a0, rows, C, gathered.data(), C);
      H = gathered.data();
    }
    for (int64_t v0 = 0; v0 < V; v0 += tile.vocab) {
      const int64_t cols = std::min(tile.vocab, V - v0);
      // chunk [rows, cols] = H [rows, C] @ W[v0 : v0 + cols]^T
      gemm<T>(H, C, false, weight + v0 * C, C, true, chunk.data(), tile.ld, rows, cols, C, 1, 0, 0, 0, 1.f, 0.f);
      lce_chunk_forward_kernel<S><<<static_cast<unsigned>(rows), kRowThreads, 0, stream()>>>(
          reinterpret_cast<const S*>(chunk.data()), tile.ld, cols, v0, targets + a0, run_m.data() + a0,
          run_s.data() + a0, tgt.data() + a0);
      DISTILL_CHECK_LAUNCH();
    }
  }
  lce_finalize_kernel<<<grid_for(n, kElemThreads), kElemThreads, 0, stream()>>>(run_m.data(), run_s.data(), tgt.data(),
                                                                                n, lse, row_loss.data());
  DISTILL_CHECK_LAUNCH();
  mean_kernel<S><<<1, kMeanThreads, 0, stream()>>>(row_loss.data(), n, n, reinterpret_cast<S*>(loss));
  DISTILL_CHECK_LAUNCH();
}

template <class T>
void linear_cross_entropy_backward(const T* hidden, const T* weight, int64_t N, int64_t C, int64_t V,
                                   const int32_t* active, const int32_t* targets, int64_t n, const float* lse,
                                   const T* grad_out, T* dhidden, T* dweight, int64_t vocab_chunk, int64_t row_chunk) {
  using S = typename DevType<T>::type;
  if (n <= 0 || V <= 0 || C <= 0 || (!dhidden && !dweight)) return;  // C == 0: both gradients are empty
  DISTILL_CHECK(active || n == N, "linear_cross_entropy_backward: without an active-row list every row counts (n = ", n,
                ", N = ", N, ")");
  constexpr bool kF32 = std::is_same_v<T, float>;
  const LceTiling tile = lce_tiling(n, V, sizeof(T), vocab_chunk, row_chunk);
  check_rows(tile.rows, "linear_cross_entropy_backward");
  const size_t rc = static_cast<size_t>(tile.rows * C);
  DeviceBuffer<T> chunk(static_cast<size_t>(tile.rows * tile.ld));  // [rows, ld] logits, then dlogits
  DeviceBuffer<T> gathered(active ? rc : 0);                        // [rows, C] active hidden rows
  DeviceBuffer<float> acc(dhidden ? rc : 0);                        // [rows, C] f32 dhidden of the row chunk
  DeviceBuffer<T> part(dhidden && !kF32 ? rc : 0);                  // [rows, C] one chunk's dhidden in T
  const S* g = reinterpret_cast<const S*>(grad_out);
  for (int64_t a0 = 0; a0 < n; a0 += tile.rows) {
    const int64_t rows = std::min(tile.rows, n - a0);
    const T* H = hidden + a0 * C;  // [rows, C]
    if (active) {
      embedding_forward(hidden, C, active + a0, rows, C, gathered.data(), C);
      H = gathered.data();
    }
    if (dhidden) memset_device_zero(acc.data(), sizeof(float) * static_cast<size_t>(rows * C));
    for (int64_t v0 = 0; v0 < V; v0 += tile.vocab) {
      const int64_t cols = std::min(tile.vocab, V - v0);
      const T* Wc = weight + v0 * C;  // [cols, C]
      gemm<T>(H, C, false, Wc, C, true, chunk.data(), tile.ld, rows, cols, C, 1, 0, 0, 0, 1.f, 0.f);
      lce_chunk_grad_kernel<S><<<static_cast<unsigned>(rows), kRowThreads, 0, stream()>>>(
          reinterpret_cast<S*>(chunk.data()), tile.ld, cols, v0, targets + a0, lse + a0, g, n);
      DISTILL_CHECK_LAUNCH();
      // dweight[v0 : v0 + cols] [cols, C] += dlogits^T [cols, rows] @ H [rows, C]
      if (dweight)
        gemm<T>(chunk.data(), tile.ld, true, H, C, false, dweight + v0 * C, C, cols, C, rows, 1, 0, 0, 0, 1.f, 1.f);
      // dhidden rows [rows, C] += dlogits [rows, cols] @ Wc [cols, C], accumulated in f32
      if (dhidden) {
        if constexpr (kF32) {
          gemm<float>(chunk.data(), tile.ld, false, Wc, C, false, acc.data(), C, rows, C, cols, 1, 0, 0, 0, 1.f, 1.f);
        } else {
          gemm<T>(chunk.data(), tile.ld, false, Wc, C, false, part.data(), C, rows, C, cols, 1, 0, 0, 0, 1.f, 0.f);
          add_to_f32_kernel<S><<<grid_for(rows * C, kElemThreads), kElemThreads, 0, stream()>>>(
              acc.data(), reinterpret_cast<const S*>(part.data()), rows * C);
          DISTILL_CHECK_LAUNCH();
        }
      }
    }
    if (dhidden) {
      scatter_rows_add_kernel<S><<<grid_for(rows * C, kElemThreads), kElemThreads, 0, stream()>>>(
          reinterpret_cast<S*>(dhidden), C, active ? active + a0 : nullptr, a0, rows, acc.data());
      DISTILL_CHECK_LAUNCH();
    }
  }
}

#define DISTILL_INST_CE(T)                                                                                            \
  template void cross_entropy_forward<T>(const T*, int64_t, int64_t, const int32_t*, int32_t, int64_t, float*, T*);   \
  template void cross_entropy_backward<T>(const T*, int64_t, int64_t, const int32_t*, int32_t, int64_t, const float*, \
                                          const T*, T*);                                                              \
  template void linear_cross_entropy_forward<T>(const T*, const T*, int64_t, int64_t, int64_t, const int32_t*,        \
                                                const int32_t*, int64_t, float*, T*, int64_t, int64_t);               \
  template void linear_cross_entropy_backward<T>(const T*, const T*, int64_t, int64_t, int64_t, const int32_t*,       \
                                                 const int32_t*, int64_t, const float*, const T*, T*, T*, int64_t,    \
                                                 int64_t);
DISTILL_INST_CE(float)
DISTILL_INST_CE(bf16)
DISTILL_INST_CE(f16)

}  // namespace distill::cuda
