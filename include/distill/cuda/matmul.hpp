// Matrix multiply on the GPU: launchers defined in kernels/matmul.cu (distill::kernels).
//  - gemm(): row-major, optionally transposed, strided-batched C = alpha·op(A)·op(B) + beta·C through
//    cuBLASLt (f32 accumulate; f32 inputs use CUBLAS_COMPUTE_32F without TF32, so results match the CPU
//    within kTolF32). Before the call it checks what cuBLASLt's tensor-core paths need (16-bit types:
//    16-byte aligned pointers, leading dimensions and batch strides); a layout that fails the check, an
//    empty inner dimension (K = 0) or a layout for which cuBLASLt offers no algorithm runs on a simple
//    tiled CUDA kernel instead (gemm_tiled: correct for any strides, much slower).
//  - matmul(): Tensor-level, same shape rules as cpu::matmul (ops/matmul.hpp): A [..., M, K] (or
//    [..., K, M] with trans_a), B [..., K, N] with A's batch dims (or [..., N, K] with trans_b), or a
//    rank-2 B shared by every batch; returns a new contiguous C [..., M, N]. Views whose last two axes
//    are row- or column-major with one stride per batch are read in place (a transposed view costs
//    nothing); other views are copied first.
// Everything runs on cuda::stream(); heuristic results are cached per (device, dtype, shape, strides,
// transposes, alignment), so steady-state calls do not query cuBLASLt's heuristics.
// This header does not include CUDA headers: host-compiled code may include it.
#pragma once
#include <cstdint>
#include <string>

#include "distill/tensor/tensor.hpp"

namespace distill::cuda {

// C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b], row-major; op = transpose when ta/tb. A is [M,K] (or
// [K,M] when ta), B is [K,N] (or [N,K] when tb), C is [M,N]; lda/ldb/ldc are row strides in elements;
// stride_a/b/c are batch strides (0 = broadcast the same matrix). Accumulates in f32. With beta == 0, C is
// not read (it may hold garbage). T: float, bf16, f16.
template <class T>
void gemm(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M, int64_t N,
          int64_t K, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c, float alpha = 1.f,
          float beta = 0.f);

// Tensor-level, same shape rules as cpu::matmul in ops/matmul.hpp (batched, broadcasting like the CPU).
template <class T>
Tensor<T, Cuda> matmul(const Tensor<T, Cuda>& a, const Tensor<T, Cuda>& b, bool trans_a = false, bool trans_b = false);

namespace detail {

// The tiled fallback kernel alone (same contract as gemm()); exposed so the tests can check it on every
// layout, not only on those gemm() routes to it.
template <class T>
void gemm_tiled(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M,
                int64_t N, int64_t K, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c, float alpha,
                float beta);

// Number of gemm() calls routed to cuBLASLt / to the tiled kernel since the start (tests and benchmarks
// check that model shapes take the cuBLASLt path).
struct GemmCounters {
  int64_t cublaslt = 0, tiled = 0, heuristic_queries = 0;
};
GemmCounters gemm_counters();

// --- host-side planning (pure functions; no CUDA) -------------------------------------------------

// Largest power of two (capped at 256) dividing the address and, when batch > 1, the batch stride in
// bytes: the alignment cuBLASLt may assume for every matrix of a strided batch.
inline uint32_t batch_alignment(const void* p, int64_t stride_elems, int64_t batch, size_t elem_bytes) {
  uint64_t v = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) | 256u;
  if (batch > 1 && stride_elems != 0) v |= static_cast<uint64_t>(stride_elems) * elem_bytes;
  return static_cast<uint32_t>(v & (~v + 1));  // lowest set bit
}

// Why gemm() does not hand a layout to cuBLASLt's tensor-core kernels (empty string: it can). 16-bit
// types need 16-byte aligned pointers, row strides and batch strides (multiples of 8 elements); f32 needs
// only natural alignment (checked separately, as a misaligned float pointer is an error).
inline std::string cublaslt_unsupported_reason(size_t elem_bytes, const void* A, int64_t lda, const void* B,
                                               int64_t ldb, const void* C, int64_t ldc, int64_t K, int64_t batch,
                                               int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  if (K == 0) return "K = 0 (C = beta * C only)";
  if (elem_bytes >= 4) return "";
  std::string why;
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) why += (why.empty() ? "" : "; ") + what;
  };
  const int64_t per16 = 16 / static_cast<int64_t>(elem_bytes);  // elements per 16 bytes
  need(batch_alignment(A, stride_a, batch, elem_bytes) >= 16, "A's pointer or batch stride is not 16-byte aligned");
  need(batch_alignment(B, stride_b, batch, elem_bytes) >= 16, "B's pointer or batch stride is not 16-byte aligned");
  need(batch_alignment(C, stride_c, batch, elem_bytes) >= 16, "C's pointer or batch stride is not 16-byte aligned");
  need(lda % per16 == 0, "lda = " + std::to_string(lda) + " is not a multiple of " + std::to_string(per16));
  need(ldb % per16 == 0, "ldb = " + std::to_string(ldb) + " is not a multiple of " + std::to_string(per16));
  need(ldc % per16 == 0, "ldc = " + std::to_string(ldc) + " is not a multiple of " + std::to_string(per16));
  return why;
}

// Row-major C = op(A)·op(B) expressed as cuBLASLt's column-major D = op(X)·op(Y): a row-major [r, c]
// matrix with row stride ld is the column-major [c, r] matrix with leading dimension ld, i.e. its
// transpose, so Cᵀ = op(B)ᵀ·op(A)ᵀ: X is B's memory, Y is A's memory, m = N, n = M, k = K.
struct LtOperand {
  uint64_t rows = 0, cols = 0;  // of the stored column-major matrix
  int64_t ld = 0;
  bool trans = false;  // CUBLAS_OP_T
};
struct LtPlan {
  uint64_t m = 0, n = 0, k = 0;
  LtOperand x, y, d;  // x: B's memory, y: A's memory, d: C's memory (never transposed)
};
inline LtPlan lt_plan(int64_t lda, bool ta, int64_t ldb, bool tb, int64_t ldc, int64_t M, int64_t N, int64_t K) {
  LtPlan p;
  p.m = static_cast<uint64_t>(N);
  p.n = static_cast<uint64_t>(M);
  p.k = static_cast<uint64_t>(K);
  // B stored row-major [K, N] (col-major [N, K] = op(B)ᵀ: no op) or [N, K] with tb (col-major [K, N]: op = T).
  p.x = tb ? LtOperand{static_cast<uint64_t>(K), static_cast<uint64_t>(N), ldb, true}
           : LtOperand{static_cast<uint64_t>(N), static_cast<uint64_t>(K), ldb, false};
  // A stored row-major [M, K] (col-major [K, M] = op(A)ᵀ: no op) or [K, M] with ta (col-major [M, K]: op = T).
  p.y = ta ? LtOperand{static_cast<uint64_t>(M), static_cast<uint64_t>(K), lda, true}
           : LtOperand{static_cast<uint64_t>(K), static_cast<uint64_t>(M), lda, false};
  p.d = LtOperand{static_cast<uint64_t>(N), static_cast<uint64_t>(M), ldc, false};
  return p;
}

// How a tensor's last two axes sit in memory: a row-major matrix (possibly the transpose of the logical
// one: `flip`) with row stride `ld`, and one stride between consecutive matrices of its batch dims.
struct MatrixView {
  bool ok = false;  // false: needs a contiguous copy first
  bool flip = false;
  int64_t ld = 0, batch_stride = 0;
};
inline MatrixView matrix_view(const Shape& shape, const Shape& strides) {
  MatrixView v;
  const int r = shape.rank();
  if (r < 2) return v;
  const int64_t rows = shape[r - 2], cols = shape[r - 1], s_r = strides[r - 2], s_c = strides[r - 1];
  if (s_r < 0 || s_c < 0) return v;
  if ((cols <= 1 || s_c == 1) && (rows <= 1 || s_r >= cols)) {
    v.ld = rows <= 1 ? cols : s_r;  // row-major
  } else if ((rows <= 1 || s_r == 1) && (cols <= 1 || s_c >= rows)) {
    v.flip = true;  // column-major: the stored row-major matrix is [cols, rows]
    v.ld = cols <= 1 ? rows : s_c;
  } else {
    return v;
  }
  if (v.ld < 1) v.ld = 1;
  // The batch dims must collapse into one stride (size-1 dims place no constraint).
  int64_t expect = -1;  // the stride the next outer batch dim needs
  for (int i = r - 3; i >= 0; --i) {
    if (shape[i] == 1) continue;
    if (strides[i] < 0) return v;
    if (expect < 0)
      v.batch_stride = strides[i];
    else if (strides[i] != expect)
      return v;
    expect = strides[i] * shape[i];
  }
  v.ok = true;
  return v;
}

}  // namespace detail

}  // namespace distill::cuda
