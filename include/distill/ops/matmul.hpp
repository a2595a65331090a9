// Batched matrix multiply with transposes: C = op(A) · op(B), op(X) = X or Xᵀ (last two axes).
//   A: [..., M, K] (or [..., K, M] with trans_a)       // batch dims ...
//   B: [..., K, N] (or [..., N, K] with trans_b), or a rank-2 B shared by every batch (weights)
//   C: [..., M, N]
// ref:: is a plain triple loop accumulating in double; cpu:: maps each batch onto Eigen's GEMM (with
// OpenMP across batches, or inside Eigen for a single large product). 16-bit inputs compute in f32.
// Backward: dop(A) = dC · op(B)ᵀ, dop(B) = op(A)ᵀ · dC; a shared B sums its gradient over the batch.
// On Cuda (built with distill::kernels) the recorded op runs cuda::matmul forward and cuda::gemm backward
// (include/distill/cuda/matmul.hpp), adding the gradients straight into the gradient buffers (beta = 1).
#pragma once
#include <Eigen/Core>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/parallel.hpp"
#ifdef DISTILL_WITH_CUDA
#include "distill/core/nvtx.hpp"
#include "distill/cuda/matmul.hpp"
#endif

namespace distill {

namespace detail {
struct MatmulDims {
  Shape batch_shape;  // leading dims of A (and of B unless B is shared)
  int64_t batch = 1, M = 0, N = 0, K = 0;
  bool b_shared = false;
};

inline MatmulDims matmul_dims(const Shape& a, const Shape& b, bool ta, bool tb) {
  if (a.rank() < 2 || b.rank() < 2)
    throw ShapeError("matmul: operands need rank >= 2, got " + a.str() + " and " + b.str());
  MatmulDims d;
  d.M = ta ? a.dim(-1) : a.dim(-2);
  const int64_t ka = ta ? a.dim(-2) : a.dim(-1);
  d.K = tb ? b.dim(-1) : b.dim(-2);
  d.N = tb ? b.dim(-2) : b.dim(-1);
  if (ka != d.K)
    throw ShapeError("matmul: inner dimensions differ: " + a.str() + (ta ? "ᵀ" : "") + " · " + b.str() +
                     (tb ? "ᵀ" : ""));
  for (int i = 0; i < a.rank() - 2; ++i) d.batch_shape.push_back(a[i]);
  d.batch = d.batch_shape.numel();
  d.b_shared = b.rank() == 2;
  if (!d.b_shared) {
    bool same = b.rank() == a.rank();
    for (int i = 0; same && i < a.rank() - 2; ++i) same = a[i] == b[i];
    if (!same)
      throw ShapeError("matmul: batch dimensions differ: " + a.str() + " and " + b.str() +
                       " (B must have A's batch dims or be rank 2)");
  }
  return d;
}

inline Shape matmul_out_shape(const MatmulDims& d) {
  Shape s = d.batch_shape;
  s.push_back(d.M);
  s.push_back(d.N);
  return s;
}

// C[M,N] (= or +=) op(A) · op(B) for one row-major block; Eigen GEMM in the compute type.
template <class T>
void gemm_block(const T* A, bool ta, const T* B, bool tb, T* C, int64_t M, int64_t N, int64_t K, bool accumulate) {
  using C_t = compute_t<T>;
  using Mat = Eigen::Matrix<C_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  if constexpr (std::is_same_v<T, C_t>) {
    using Map = Eigen::Map<const Mat>;
    Eigen::Map<Mat> c(C, M, N);
    const Map a(A, ta ? K : M, ta ? M : K), b(B, tb ? N : K, tb ? K : N);
    auto run = [&](const auto& opa, const auto& opb) {
      if (accumulate)
        c.noalias() += opa * opb;
      else
        c.noalias() = opa * opb;
    };
    if (ta && tb)
      run(a.transpose(), b.transpose());
    else if (ta)
      run(a.transpose(), b);
    else if (tb)
      run(a, b.transpose());
    else
      run(a, b);
  } else {
    // 16-bit inputs: widen to f32, multiply, round once on the way out.
    Mat a =
        Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(A, ta ? K : M, ta ? M : K)
            .template cast<C_t>();
    Mat b =
        Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(B, tb ? N : K, tb ? K : N)
            .template cast<C_t>();
    Mat c(M, N);
    c.setZero();
    gemm_block<C_t>(a.data(), ta, b.data(), tb, c.data(), M, N, K, false);
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> out(C, M, N);
    if (accumulate)
      out = (out.template cast<C_t>() + c).template cast<T>();
    else
      out = c.template cast<T>();
  }
}
}  // namespace detail

namespace ref {
template <FloatingDtype T>
Tensor<T> matmul(const Tensor<T>& a0, const Tensor<T>& b0, bool trans_a = false, bool trans_b = false) {
  const auto d = detail::matmul_dims(a0.shape(), b0.shape(), trans_a, trans_b);
  const Tensor<T> a = a0.contiguous(), b = b0.contiguous();
  auto c = Tensor<T>::empty(detail::matmul_out_shape(d));
  const int64_t sa = d.M * d.K, sb = d.b_shared ? 0 : d.K * d.N, sc = d.M * d.N;
  for (int64_t p = 0; p < d.batch; ++p)
    for (int64_t i = 0; i < d.M; ++i)
      for (int64_t j = 0; j < d.N; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < d.K; ++k) {
          const T av = trans_a ? a.data()[p * sa + k * d.M + i] : a.data()[p * sa + i * d.K + k];
          const T bv = trans_b ? b.data()[p * sb + j * d.K + k] : b.data()[p * sb + k * d.N + j];
          acc += static_cast<double>(to_compute<T>(av)) * static_cast<double>(to_compute<T>(bv));
        }
        c.data()[p * sc + i * d.N + j] = from_compute<T>(static_cast<compute_t<T>>(acc));
      }
  return c;
}
}  // namespace ref

namespace cpu {
template <FloatingDtype T>
Tensor<T> matmul(const Tensor<T>& a0, const Tensor<T>& b0, bool trans_a = false, bool trans_b = false) {
  const auto d = detail::matmul_dims(a0.shape(), b0.shape(), trans_a, trans_b);
  const Tensor<T> a = a0.contiguous(), b = b0.contiguous();
  auto c = Tensor<T>::empty(detail::matmul_out_shape(d));
  if (d.b_shared && !trans_a) {
    // [batch*M, K] · op(B): one large GEMM (Eigen parallelizes it).
    detail::gemm_block(a.data(), false, b.data(), trans_b, c.data(), d.batch * d.M, d.N, d.K, false);
    return c;
  }
  const int64_t sa = d.M * d.K, sb = d.b_shared ? 0 : d.K * d.N, sc = d.M * d.N;
  auto one = [&](int64_t p) {
    detail::gemm_block(a.data() + p * sa, trans_a, b.data() + p * sb, trans_b, c.data() + p * sc, d.M, d.N, d.K, false);
  };
  if (d.batch >= max_threads())
    parallel_for(d.batch, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) one(p);
    });
  else
    for (int64_t p = 0; p < d.batch; ++p) one(p);
  return c;
}

// Gradients of C = op(A)·op(B) given dC; returns {dA, dB} (dB has B's shape; summed over the batch when shared).
template <FloatingDtype T>
std::pair<Tensor<T>, Tensor<T>> matmul_backward(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& dc,
                                                bool trans_a, bool trans_b, bool need_a = true, bool need_b = true) {
  const auto d = detail::matmul_dims(a.shape(), b.shape(), trans_a, trans_b);
  Tensor<T> da, db;
  if (need_a) {
    if (!trans_a) {
      da = matmul(dc, b, false, !trans_b);  // dA = dC · op(B)ᵀ
    } else if (!d.b_shared) {
      da = matmul(b, dc, trans_b, true);  // dA = op(B) · dCᵀ   [..., K, M]
    } else {
      const Tensor<T> bc = b.contiguous(), gc = dc.contiguous();
      da = Tensor<T>::empty(a.shape());
      parallel_for(d.batch, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t p = lo; p < hi; ++p)
          detail::gemm_block(bc.data(), trans_b, gc.data() + p * d.M * d.N, true, da.data() + p * d.K * d.M, d.K, d.M,
                             d.N, false);
      });
    }
  }
  if (need_b) {
    if (!d.b_shared) {
      db = trans_b ? matmul(dc, a, true, trans_a) : matmul(a, dc, !trans_a, false);
    } else {
      // Sum over the batch. Without trans_a, fold the batch into the rows: one GEMM.
      const Tensor<T> ac = a.contiguous(), gc = dc.contiguous();
      db = Tensor<T>::empty(b.shape());
      if (!trans_a) {
        const int64_t R = d.batch * d.M;
        if (trans_b)  // dB[N,K] = dCᵀ[N,R] · A[R,K]
          detail::gemm_block(gc.data(), true, ac.data(), false, db.data(), d.N, d.K, R, false);
        else  // dB[K,N] = Aᵀ[K,R] · dC[R,N]
          detail::gemm_block(ac.data(), true, gc.data(), false, db.data(), d.K, d.N, R, false);
      } else {
        // Sum the per-batch products in the compute type (f32 for 16-bit inputs) and round once.
        using C = compute_t<T>;
        const Tensor<C> ac32 = ac.template cast<C>(), gc32 = gc.template cast<C>();
        auto acc = Tensor<C>::zeros(b.shape());
        for (int64_t p = 0; p < d.batch; ++p) {
          const C* ap = ac32.data() + p * d.M * d.K;  // [K, M]
          const C* gp = gc32.data() + p * d.M * d.N;  // [M, N]
          if (trans_b) {                              // dB[N,K] = dCᵀ · op(A) = dCᵀ[N,M] · Aᵀ[M,K]
            detail::gemm_block(gp, true, ap, true, acc.data(), d.N, d.K, d.M, true);
          } else {  // dB[K,N] = op(A)ᵀ · dC = A[K,M] · dC[M,N]
            detail::gemm_block(ap, false, gp, false, acc.data(), d.K, d.N, d.M, true);
          }
        }
        db = acc.template cast<T>();
      }
    }
  }
  return {da, db};
}
}  // namespace cpu

namespace ref {
// Same contract as cpu::matmul_backward, from ref::matmul (plain loops).
template <FloatingDtype T>
std::pair<Tensor<T>, Tensor<T>> matmul_backward(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& dc,
                                                bool trans_a, bool trans_b) {
  const auto d = detail::matmul_dims(a.shape(), b.shape(), trans_a, trans_b);
  Tensor<T> da = trans_a ? Tensor<T>() : matmul(dc, b, false, !trans_b);
  if (trans_a) {  // dA[..., K, M] = op(B) · dCᵀ, one batch at a time (B may be shared)
    da = Tensor<T>::empty(a.shape());
    for (int64_t p = 0; p < d.batch; ++p) {
      auto bp = d.b_shared
                    ? b
                    : b.reshape({d.batch, b.dim(-2), b.dim(-1)}).slice(0, p, p + 1).reshape({b.dim(-2), b.dim(-1)});
      auto gp = dc.contiguous().reshape({d.batch, d.M, d.N}).slice(0, p, p + 1).reshape({d.M, d.N});
      auto r = matmul(bp, gp, trans_b, true);  // [K, M]
      std::copy_n(r.data(), r.numel(), da.data() + p * d.K * d.M);
    }
  }
  // dop(B) = op(A)ᵀ · dC per batch, summed over the batch when B is shared: one double accumulator per
  // element, rounded once.
  const Tensor<T> ac = a.contiguous(), gc = dc.contiguous();
  const int64_t bs = d.K * d.N;
  std::vector<double> acc(static_cast<size_t>(d.b_shared ? bs : d.batch * bs), 0.0);
  for (int64_t p = 0; p < d.batch; ++p)
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t n = 0; n < d.N; ++n) {
        double sum = 0;
        for (int64_t m = 0; m < d.M; ++m) {
          const T av = trans_a ? ac.data()[p * d.M * d.K + k * d.M + m] : ac.data()[p * d.M * d.K + m * d.K + k];
          const T gv = gc.data()[p * d.M * d.N + m * d.N + n];
          sum += static_cast<double>(to_compute<T>(av)) * static_cast<double>(to_compute<T>(gv));
        }
        acc[static_cast<size_t>((d.b_shared ? 0 : p * bs) + (trans_b ? n * d.K + k : k * d.N + n))] += sum;
      }
  Tensor<T> db = Tensor<T>::empty(b.shape());
  for (int64_t i = 0; i < db.numel(); ++i)
    db.data()[i] = from_compute<T>(static_cast<compute_t<T>>(acc[static_cast<size_t>(i)]));
  return {da, db};
}
}  // namespace ref

#ifdef DISTILL_WITH_CUDA
namespace detail {
// Gradients of C = op(A)·op(B) on the GPU from dC, written as out = grad + beta·out into `da` / `db`
// (contiguous, of A's / B's shape; null = not needed): beta = 1 adds into existing gradient buffers.
// Every product is one cuda::gemm (f32 accumulation, one rounding); a shared B sums over the batch inside
// the GEMM (the batch folded into the reduction), never through a 16-bit running sum.
template <class T>
void matmul_backward_cuda(const Tensor<T, Cuda>& a0, const Tensor<T, Cuda>& b0, const Tensor<T, Cuda>& dc0, bool ta,
                          bool tb, const Tensor<T, Cuda>* da, float beta_a, const Tensor<T, Cuda>* db, float beta_b) {
  const auto d = matmul_dims(a0.shape(), b0.shape(), ta, tb);
  const Tensor<T, Cuda> a = a0.contiguous(), b = b0.contiguous(), dc = dc0.contiguous();
  const int64_t M = d.M, N = d.N, K = d.K, P = d.batch;
  const int64_t lda = ta ? M : K, ldb = tb ? K : N;  // row lengths of the stored A and B
  const int64_t sa = M * K, sb = d.b_shared ? 0 : K * N, sc = M * N;
  if (da) {
    if (!ta && d.b_shared)  // dA[P*M, K] = dC[P*M, N] · op(B)ᵀ
      cuda::gemm(dc.data(), N, false, b.data(), ldb, !tb, da->data(), K, P * M, K, N, 1, 0, 0, 0, 1.f, beta_a);
    else if (!ta)  // dA[M, K] = dC[M, N] · op(B)ᵀ per batch
      cuda::gemm(dc.data(), N, false, b.data(), ldb, !tb, da->data(), K, M, K, N, P, sc, sb, sa, 1.f, beta_a);
    else  // dA[K, M] = op(B)[K, N] · dCᵀ[N, M] per batch (stride 0 for a shared B)
      cuda::gemm(b.data(), ldb, tb, dc.data(), N, true, da->data(), M, K, M, N, P, sb, sc, sa, 1.f, beta_a);
  }
  if (db) {
    if (!d.b_shared) {
      if (!tb)  // dB[K, N] = op(A)ᵀ[K, M] · dC[M, N]
        cuda::gemm(a.data(), lda, !ta, dc.data(), N, false, db->data(), N, K, N, M, P, sa, sc, sb, 1.f, beta_b);
      else  // dB[N, K] = dCᵀ[N, M] · op(A)[M, K]
        cuda::gemm(dc.data(), N, true, a.data(), lda, ta, db->data(), K, N, K, M, P, sc, sa, sb, 1.f, beta_b);
    } else {
      // Sum over the batch = a reduction over R = P*M rows of op(A) stacked [R, K]: stored as A itself
      // ([P*M, K]), or with trans_a as A's batch moved inside ([K, P, M] contiguous = [K, R], transposed).
      const int64_t R = P * M;
      const Tensor<T, Cuda> af = ta ? a.reshape({P, K, M}).transpose(0, 1).contiguous() : a;
      const int64_t ldf = ta ? R : K;
      if (!tb)  // dB[K, N] = op(A)ᵀ[K, R] · dC[R, N]
        cuda::gemm(af.data(), ldf, !ta, dc.data(), N, false, db->data(), N, K, N, R, 1, 0, 0, 0, 1.f, beta_b);
      else  // dB[N, K] = dCᵀ[N, R] · op(A)[R, K]
        cuda::gemm(dc.data(), N, true, af.data(), ldf, ta, db->data(), K, N, K, R, 1, 0, 0, 0, 1.f, beta_b);
    }
  }
}
}  // namespace detail
#endif

// The recorded op. On Cuda: cuBLASLt forward, and a backward that adds each gradient into its buffer
// within the GEMM (beta = 1) when the buffer is contiguous (else through a temporary and accumulate).
template <FloatingDtype T, class D>
Var<T, D> matmul(const Var<T, D>& a, const Var<T, D>& b, bool trans_a = false, bool trans_b = false) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    static_assert(!std::is_same_v<T, double>, "matmul on Cuda takes f32, bf16 or f16 (f64 stays on the CPU)");
    NvtxRange nvtx("matmul");
    auto c = cuda::matmul(a.value(), b.value(), trans_a, trans_b);
    return Var<T, D>::record("matmul", c, {a.node(), b.node()}, [a, b, trans_a, trans_b](auto& self) {
      NvtxRange nvtx_bw("matmul_backward");
      // Where each gradient goes: its buffer itself (beta = 1), or a temporary added afterwards.
      auto target = [](const Var<T, D>& v, Tensor<T, D>& out, float& beta) {
        out = v.grad_buffer();
        beta = 1.f;
        if (!out.is_contiguous()) {
          out = Tensor<T, D>::empty(v.shape());
          beta = 0.f;
        }
      };
      Tensor<T, D> da, db;
      float beta_a = 1.f, beta_b = 1.f;
      if (a.requires_grad()) target(a, da, beta_a);
      if (b.requires_grad()) target(b, db, beta_b);
      detail::matmul_backward_cuda(a.value(), b.value(), self.grad, trans_a, trans_b, a.requires_grad() ? &da : nullptr,
                                   beta_a, b.requires_grad() ? &db : nullptr, beta_b);
      if (a.requires_grad() && beta_a == 0.f) autograd::accumulate(a.grad_buffer(), da);
      if (b.requires_grad() && beta_b == 0.f) autograd::accumulate(b.grad_buffer(), db);
    });
#else
    static_assert(expr::dependent_false_v<T>,
                  "matmul on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    auto c = cpu::matmul(a.value(), b.value(), trans_a, trans_b);
    return Var<T>::record("matmul", c, {a.node(), b.node()}, [a, b, trans_a, trans_b](auto& self) {
      auto [da, db] =
          cpu::matmul_backward(a.value(), b.value(), self.grad, trans_a, trans_b, a.requires_grad(), b.requires_grad());
      if (a.requires_grad()) autograd::accumulate(a.grad_buffer(), da);
      if (b.requires_grad()) autograd::accumulate(b.grad_buffer(), db);
    });
  }
}

}  // namespace distill
