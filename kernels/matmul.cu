// Matrix multiply on the GPU (include/distill/cuda/matmul.hpp): cuBLASLt for every layout its kernels
// take, and a tiled CUDA kernel for the rest.
//
// cuBLASLt is column-major; a row-major [r, c] matrix with row stride ld is its column-major transpose, so
// row-major C = op(A)·op(B) runs as Cᵀ = op(B)ᵀ·op(A)ᵀ (detail::lt_plan). f32 uses CUBLAS_COMPUTE_32F
// (never TF32: results match the CPU within kTolF32); bf16 and f16 use CUBLAS_COMPUTE_32F too (f32
// accumulation, one rounding on output). Batches are strided-batch layouts (stride 0 broadcasts a matrix).
//
// The matmul descriptor, the three layouts and the heuristic's chosen algorithm are built once per
// (device, dtype, shape, leading dims, batch strides, transposes, pointer alignment) and kept in a small
// map, so a steady-state call costs one map look-up and one cublasLtMatmul. All calls share the
// per-device workspace (cuda::cublaslt_workspace) and run on cuda::stream().
//
// Fallback (gemm_tiled): 16-bit layouts with pointers, row strides or batch strides that are not
// multiples of 16 bytes (cuBLASLt's tensor-core kernels need them), K = 0, and any layout for which the
// heuristic offers no algorithm run on a 32x32-tile shared-memory kernel with f32 accumulation: correct for
// any strides, an order of magnitude slower than cuBLASLt. To stay on the fast path, keep K, N and the
// row strides of 16-bit operands multiples of 8 (pad them), as every model dimension already is.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "distill/cuda/check.hpp"
#include "distill/cuda/matmul.hpp"
#include "distill/ops/matmul.hpp"  // detail::matmul_dims: the shape rules shared with the CPU

namespace distill::cuda {

namespace {

// --- dtype mapping ------------------------------------------------------------------------------------
template <class T>
struct GemmType;
template <>
struct GemmType<float> {
  using device_t = float;
  static constexpr cudaDataType_t lt = CUDA_R_32F;
  static constexpr int code = 0;
};
template <>
struct GemmType<bf16> {
  using device_t = __nv_bfloat16;
  static constexpr cudaDataType_t lt = CUDA_R_16BF;
  static constexpr int code = 1;
};
template <>
struct GemmType<f16> {
  using device_t = __half;
  static constexpr cudaDataType_t lt = CUDA_R_16F;
  static constexpr int code = 2;
};

__device__ __forceinline__ float load_f32(float x) { return x; }
__device__ __forceinline__ float load_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float load_f32(__half x) { return __half2float(x); }
template <class DT>
__device__ __forceinline__ DT store_as(float x);
template <>
__device__ __forceinline__ float store_as<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half store_as<__half>(float x) {
  return __float2half_rn(x);
}

std::atomic<int64_t> g_lt_calls{0}, g_tiled_calls{0}, g_heuristic_queries{0};

// --- the tiled fallback kernel ----------------------------------------------------------------------------
// One block computes a 32x32 tile of C with 32x8 threads, 4 rows per thread, over 32-wide K slices staged in
// shared memory as f32. Loads put threadIdx.x along the operand's contiguous axis (coalesced for either
// transpose); the +1 padding keeps the transposed stores free of bank conflicts. Tiles and batches beyond the
// grid (gridDim.y/z <= 65535) are covered by block-stride loops whose bounds depend only on blockIdx and
// gridDim, so every __syncthreads() is reached by the whole block.
constexpr int kTile = 32, kTileRows = 8, kRowsPerThread = kTile / kTileRows;

template <class DT>
__global__ void __launch_bounds__(kTile* kTileRows)
    gemm_tiled_kernel(const DT* __restrict__ A, int64_t lda, bool ta, const DT* __restrict__ B, int64_t ldb, bool tb,
                      DT* C, int64_t ldc, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t stride_a,
                      int64_t stride_b, int64_t stride_c, float alpha, float beta) {
  __shared__ float sA[kTile][kTile + 1];  // [m - m0][k - k0]
  __shared__ float sB[kTile][kTile + 1];  // [k - k0][n - n0]
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t tiles_m = (M + kTile - 1) / kTile, tiles_n = (N + kTile - 1) / kTile;
  for (int64_t p = blockIdx.z; p < batch; p += gridDim.z) {
    const DT* gA = A + p * stride_a;
    const DT* gB = B + p * stride_b;
    DT* gC = C + p * stride_c;
    for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
      for (int64_t tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
        const int64_t m0 = tm * kTile, n0 = tn * kTile;
        float rAcc[kRowsPerThread];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) rAcc[i] = 0.f;
        for (int64_t k0 = 0; k0 < K; k0 += kTile) {
#pragma unroll
          for (int i = 0; i < kRowsPerThread; ++i) {
            const int r = ty + kTileRows * i;
            if (!ta) {  // A stored [M, K]: tx runs along k
              const int64_t m = m0 + r, k = k0 + tx;
              sA[r][tx] = (m < M && k < K) ? load_f32(gA[m * lda + k]) : 0.f;
            } else {  // A stored [K, M]: tx runs along m
              const int64_t k = k0 + r, m = m0 + tx;
              sA[tx][r] = (m < M && k < K) ? load_f32(gA[k * lda + m]) : 0.f;
            }
            if (!tb) {  // B stored [K, N]: tx runs along n
              const int64_t k = k0 + r, n = n0 + tx;
              sB[r][tx] = (k < K && n < N) ? load_f32(gB[k * ldb + n]) : 0.f;
            } else {  // B stored [N, K]: tx runs along k
              const int64_t n = n0 + r, k = k0 + tx;
              sB[tx][r] = (k < K && n < N) ? load_f32(gB[n * ldb + k]) : 0.f;
            }
          }
          __syncthreads();
#pragma unroll 8
          for (int kk = 0; kk < kTile; ++kk) {
            const float b = sB[kk][tx];
#pragma unroll
            for (int i = 0; i < kRowsPerThread; ++i) rAcc[i] = fmaf(sA[ty + kTileRows * i][kk], b, rAcc[i]);
          }
          __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          const int64_t m = m0 + ty + kTileRows * i, n = n0 + tx;
          if (m < M && n < N) {
            float v = alpha * rAcc[i];
            if (beta != 0.f) v = fmaf(beta, load_f32(gC[m * ldc + n]), v);  // beta == 0: C is not read
            gC[m * ldc + n] = store_as<DT>(v);
          }
        }
      }
    }
  }
}

// --- argument checks ----------------------------------------------------------------------------------------
std::string gemm_desc(int64_t M, int64_t N, int64_t K, bool ta, bool tb, int64_t lda, int64_t ldb, int64_t ldc,
                      int64_t batch, int64_t sa, int64_t sb, int64_t sc) {
  std::ostringstream os;
  os << "A " << (ta ? "[K, M]" : "[M, K]") << " · B " << (tb ? "[N, K]" : "[K, N]") << " with M = " << M
     << ", N = " << N << ", K = " << K << ", lda = " << lda << ", ldb = " << ldb << ", ldc = " << ldc
     << ", batch = " << batch << " (strides " << sa << ", " << sb << ", " << sc << ")";
  return os.str();
}

template <class T>
void check_gemm_args(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M,
                     int64_t N, int64_t K, int64_t batch, int64_t sa, int64_t sb, int64_t sc) {
  auto fail = [&](const std::string& why) {
    throw Error("cuda::gemm: " + why + " for " + gemm_desc(M, N, K, ta, tb, lda, ldb, ldc, batch, sa, sb, sc));
  };
  if (M < 0 || N < 0 || K < 0 || batch < 0) fail("negative extent");
  if (sa < 0 || sb < 0 || sc < 0) fail("negative batch stride");
  if (M == 0 || N == 0 || batch == 0) return;
  if (!C) fail("C is null");
  if (K > 0 && (!A || !B)) fail("A or B is null");
  if (lda < std::max<int64_t>(1, ta ? M : K))
    fail("lda is smaller than A's row length (" + std::to_string(ta ? M : K) + ")");
  if (ldb < std::max<int64_t>(1, tb ? K : N))
    fail("ldb is smaller than B's row length (" + std::to_string(tb ? K : N) + ")");
  if (ldc < N) fail("ldc is smaller than C's row length N");
  if (batch > 1 && sc == 0) fail("stride_c = 0 with batch > 1 would write every batch into one C");
  auto misaligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0; };
  if (misaligned(A) || misaligned(B) || misaligned(C))
    fail(std::string("a pointer is not aligned to its element size (") + std::to_string(sizeof(T)) + " bytes)");
}

template <class T>
void launch_tiled(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M,
                  int64_t N, int64_t K, int64_t batch, int64_t sa, int64_t sb, int64_t sc, float alpha, float beta) {
  using DT = typename GemmType<T>::device_t;
  const int64_t tiles_m = (M + kTile - 1) / kTile, tiles_n = (N + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(tiles_n, INT_MAX)),
                  static_cast<unsigned>(std::min<int64_t>(tiles_m, 65535)),
                  static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
  const dim3 block(kTile, kTileRows);
  gemm_tiled_kernel<DT><<<grid, block, 0, stream()>>>(reinterpret_cast<const DT*>(A), lda, ta,
                                                      reinterpret_cast<const DT*>(B), ldb, tb, reinterpret_cast<DT*>(C),
                                                      ldc, M, N, K, batch, sa, sb, sc, alpha, beta);
  DISTILL_CHECK_LAUNCH();
  g_tiled_calls.fetch_add(1, std::memory_order_relaxed);
}

// --- cuBLASLt plans, cached -----------------------------------------------------------------------------------
struct LtEntry {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t x = nullptr, y = nullptr, d = nullptr;  // B's, A's and C's memory (see lt_plan)
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;
  LtEntry() = default;
  LtEntry(const LtEntry&) = delete;
  LtEntry& operator=(const LtEntry&) = delete;
  ~LtEntry() {  // destructors only release (statuses ignored)
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (y) cublasLtMatrixLayoutDestroy(y);
    if (x) cublasLtMatrixLayoutDestroy(x);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};
struct LtPreference {
  cublasLtMatmulPreference_t p = nullptr;
  LtPreference() { DISTILL_CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&p)); }
  ~LtPreference() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
  LtPreference(const LtPreference&) = delete;
  LtPreference& operator=(const LtPreference&) = delete;
};

using LtKey = std::array<int64_t, 18>;
constexpr size_t kMaxCachedPlans = 1024;  // distinct GEMM layouts of a training run are a few dozen
std::mutex g_plans_mu;
std::map<LtKey, std::shared_ptr<const LtEntry>>& lt_plans() {
  static auto* m = new std::map<LtKey, std::shared_ptr<const LtEntry>>();  // never destroyed (exit order)
  return *m;
}

void set_layout(cublasLtMatrixLayout_t* l, cudaDataType_t type, const detail::LtOperand& o, int32_t batch,
                int64_t stride) {
  DISTILL_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(l, type, o.rows, o.cols, o.ld));
  if (batch > 1) {
    DISTILL_CHECK_CUBLAS(
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)));
    DISTILL_CHECK_CUBLAS(
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
}

template <class T>
std::shared_ptr<const LtEntry> lt_entry(const LtKey& key, const detail::LtPlan& plan, int32_t batch, int64_t sa,
                                        int64_t sb, int64_t sc, uint32_t align_a, uint32_t align_b, uint32_t align_c) {
  {
    std::lock_guard<std::mutex> lock(g_plans_mu);
    auto it = lt_plans().find(key);
    if (it != lt_plans().end()) return it->second;
  }
  auto e = std::make_shared<LtEntry>();
  DISTILL_CHECK_CUBLAS(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opx = plan.x.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                          opy = plan.y.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  DISTILL_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &opx, sizeof(opx)));
  DISTILL_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &opy, sizeof(opy)));
  constexpr cudaDataType_t type = GemmType<T>::lt;
  set_layout(&e->x, type, plan.x, batch, sb);
  set_layout(&e->y, type, plan.y, batch, sa);
  set_layout(&e->d, type, plan.d, batch, sc);

  LtPreference pref;
  size_t ws_bytes = 0;
  (void)cublaslt_workspace(&ws_bytes);
  const uint64_t ws = ws_bytes;
  DISTILL_CHECK_CUBLAS(
      cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // cuBLASLt assumes 256-byte aligned buffers unless told otherwise; say what these pointers guarantee.
  DISTILL_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                            &align_b, sizeof(align_b)));  // cuBLASLt's A = our B
  DISTILL_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                            &align_a, sizeof(align_a)));
  DISTILL_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                            &align_c, sizeof(align_c)));
  DISTILL_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                            &align_c, sizeof(align_c)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  g_heuristic_queries.fetch_add(1, std::memory_order_relaxed);
  const cublasStatus_t s =
      cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(), e->op, e->x, e->y, e->d, e->d, pref.p, 1, &result, &found);
  if (s == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    e->algo = result.algo;
    e->has_algo = true;
  } else if (s != CUBLAS_STATUS_SUCCESS && s != CUBLAS_STATUS_NOT_SUPPORTED) {
    detail::throw_cublas(s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  }  // else: no algorithm for this layout; remembered, and gemm() uses the tiled kernel

  std::lock_guard<std::mutex> lock(g_plans_mu);
  auto& plans = lt_plans();
  if (plans.size() >= kMaxCachedPlans) plans.clear();  // entries in use stay alive through their shared_ptr
  return plans.emplace(key, std::move(e)).first->second;
}

// One cublasLtMatmul over a batch of at most INT32_MAX matrices; false when cuBLASLt has no algorithm.
template <class T>
bool lt_gemm(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M,
             int64_t N, int64_t K, int64_t batch, int64_t sa, int64_t sb, int64_t sc, float alpha, float beta) {
  if (batch == 1) sa = sb = sc = 0;  // strides of a single matrix do not matter: one cache entry
  const uint32_t al_a = detail::batch_alignment(A, sa, batch, sizeof(T));
  const uint32_t al_b = detail::batch_alignment(B, sb, batch, sizeof(T));
  const uint32_t al_c = detail::batch_alignment(C, sc, batch, sizeof(T));
  const LtKey key{
      current_device(), GemmType<T>::code, ta, tb, M, N, K, lda, ldb, ldc, batch, sa, sb, sc, al_a, al_b, al_c, 0};
  const auto plan = detail::lt_plan(lda, ta, ldb, tb, ldc, M, N, K);
  const auto e = lt_entry<T>(key, plan, static_cast<int32_t>(batch), sa, sb, sc, al_a, al_b, al_c);
  if (!e->has_algo) return false;
  size_t ws_bytes = 0;
  void* ws = cublaslt_workspace(&ws_bytes);
  DISTILL_CHECK_CUBLAS(cublasLtMatmul(cublaslt_handle(), e->op, &alpha, B, e->x, A, e->y, &beta, C, e->d, C, e->d,
                                      &e->algo, ws, ws_bytes, stream()));
  g_lt_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace

namespace detail {
template <class T>
void gemm_tiled(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M,
                int64_t N, int64_t K, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c, float alpha,
                float beta) {
  check_gemm_args(A, lda, ta, B, ldb, tb, C, ldc, M, N, K, batch, stride_a, stride_b, stride_c);
  if (M == 0 || N == 0 || batch == 0) return;
  launch_tiled(A, lda, ta, B, ldb, tb, C, ldc, M, N, K, batch, stride_a, stride_b, stride_c, alpha, beta);
}

GemmCounters gemm_counters() {
  return {g_lt_calls.load(std::memory_order_relaxed), g_tiled_calls.load(std::memory_order_relaxed),
          g_heuristic_queries.load(std::memory_order_relaxed)};
}
}  // namespace detail

template <class T>
void gemm(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M, int64_t N,
          int64_t K, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c, float alpha, float beta) {
  check_gemm_args(A, lda, ta, B, ldb, tb, C, ldc, M, N, K, batch, stride_a, stride_b, stride_c);
  if (M == 0 || N == 0 || batch == 0) return;
  // can_implement: the tensor-core paths' alignment rules (16-bit) and K > 0; otherwise the tiled kernel.
  if (!detail::cublaslt_unsupported_reason(sizeof(T), A, lda, B, ldb, C, ldc, K, batch, stride_a, stride_b, stride_c)
           .empty()) {
    launch_tiled(A, lda, ta, B, ldb, tb, C, ldc, M, N, K, batch, stride_a, stride_b, stride_c, alpha, beta);
    return;
  }
  constexpr int64_t kMaxBatch = INT32_MAX;  // cuBLASLt's batch count is an int32
  for (int64_t b0 = 0; b0 < batch; b0 += kMaxBatch) {
    const int64_t nb = std::min(kMaxBatch, batch - b0);
    const T* a = A + b0 * stride_a;
    const T* b = B + b0 * stride_b;
    T* c = C + b0 * stride_c;
    if (!lt_gemm(a, lda, ta, b, ldb, tb, c, ldc, M, N, K, nb, stride_a, stride_b, stride_c, alpha, beta))
      launch_tiled(a, lda, ta, b, ldb, tb, c, ldc, M, N, K, nb, stride_a, stride_b, stride_c, alpha, beta);
  }
}

template <class T>
Tensor<T, Cuda> matmul(const Tensor<T, Cuda>& a0, const Tensor<T, Cuda>& b0, bool trans_a, bool trans_b) {
  const auto d = distill::detail::matmul_dims(a0.shape(), b0.shape(), trans_a, trans_b);
  auto c = Tensor<T, Cuda>::empty(distill::detail::matmul_out_shape(d));  // [..., M, N]
  if (c.numel() == 0) return c;
  // Read views in place when their matrices are row- or column-major with one batch stride.
  Tensor<T, Cuda> a = a0, b = b0;
  auto va = detail::matrix_view(a.shape(), a.strides());
  if (!va.ok) {
    a = a0.contiguous();
    va = detail::matrix_view(a.shape(), a.strides());
  }
  auto vb = detail::matrix_view(b.shape(), b.strides());
  if (!vb.ok) {
    b = b0.contiguous();
    vb = detail::matrix_view(b.shape(), b.strides());
  }
  const bool ta = trans_a != va.flip, tb = trans_b != vb.flip;  // ops on the stored row-major matrices
  const int64_t M = d.M, N = d.N, K = d.K, P = d.batch;
  const int64_t sa = P > 1 ? va.batch_stride : 0, sb = (P > 1 && !d.b_shared) ? vb.batch_stride : 0;
  if (d.b_shared && !ta && (P == 1 || sa == M * va.ld)) {
    // [P*M, K] · op(B): one large GEMM (rows of consecutive batches are evenly spaced).
    gemm(a.data(), va.ld, false, b.data(), vb.ld, tb, c.data(), N, P * M, N, K, 1, 0, 0, 0);
  } else {
    gemm(a.data(), va.ld, ta, b.data(), vb.ld, tb, c.data(), N, M, N, K, P, sa, sb, M * N);
  }
  return c;
}

#define DISTILL_INSTANTIATE_GEMM(T)                                                                                    \
  template void gemm<T>(const T*, int64_t, bool, const T*, int64_t, bool, T*, int64_t, int64_t, int64_t, int64_t,      \
                        int64_t, int64_t, int64_t, int64_t, float, float);                                             \
  template void detail::gemm_tiled<T>(const T*, int64_t, bool, const T*, int64_t, bool, T*, int64_t, int64_t, int64_t, \
                                      int64_t, int64_t, int64_t, int64_t, int64_t, float, float);                      \
  template Tensor<T, Cuda> matmul<T>(const Tensor<T, Cuda>&, const Tensor<T, Cuda>&, bool, bool);
DISTILL_INSTANTIATE_GEMM(float)
DISTILL_INSTANTIATE_GEMM(bf16)
DISTILL_INSTANTIATE_GEMM(f16)
#undef DISTILL_INSTANTIATE_GEMM

}  // namespace distill::cuda
