// cuda::gemm (cuBLASLt in kernels/matmul.cu) for the CPU emulator: plain loops with f32 accumulation and one
// rounding to T, the contract of include/distill/cuda/matmul.hpp. It lets the dequantize + GEMM path of
// kernels/nf4.cu run on the CPU; it says nothing about cuBLASLt itself (tests/test_cuda_matmul.cpp does, on a GPU).
#include <cstdint>

#include "distill/core/dtype.hpp"
#include "distill/cuda/matmul.hpp"

namespace distill::cuda {

template <class T>
void gemm(const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb, T* C, int64_t ldc, int64_t M, int64_t N,
          int64_t K, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c, float alpha, float beta) {
  for (int64_t b = 0; b < batch; ++b) {
    const T* a = A + b * stride_a;
    const T* bb = B + b * stride_b;
    T* c = C + b * stride_c;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        float s = 0.f;
        for (int64_t k = 0; k < K; ++k) {
          const float av = static_cast<float>(to_compute<T>(ta ? a[k * lda + i] : a[i * lda + k]));
          const float bv = static_cast<float>(to_compute<T>(tb ? bb[j * ldb + k] : bb[k * ldb + j]));
          s += av * bv;
        }
        float v = alpha * s;
        if (beta != 0.f) v += beta * static_cast<float>(to_compute<T>(c[i * ldc + j]));
        c[i * ldc + j] = from_compute<T>(static_cast<compute_t<T>>(v));
      }
  }
}

template void gemm<float>(const float*, int64_t, bool, const float*, int64_t, bool, float*, int64_t, int64_t, int64_t,
                          int64_t, int64_t, int64_t, int64_t, int64_t, float, float);
template void gemm<bf16>(const bf16*, int64_t, bool, const bf16*, int64_t, bool, bf16*, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t, float, float);
template void gemm<f16>(const f16*, int64_t, bool, const f16*, int64_t, bool, f16*, int64_t, int64_t, int64_t, int64_t,
                        int64_t, int64_t, int64_t, int64_t, float, float);

}  // namespace distill::cuda
