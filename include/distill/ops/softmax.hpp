// softmax and log_softmax over the last axis.
//
// Contract:
//  - Input: any rank >= 1 (rank 0 throws ShapeError); views are made contiguous. Output has the input's shape.
//  - Numerically stable: each row is shifted by its max before exp. A row of all -inf gives NaN (as torch);
//    -inf entries elsewhere give probability 0 / log-probability -inf.
//  - Backward, from the saved output y and upstream g (per row):
//      softmax:      dx = y * (g - sum(g * y))
//      log_softmax:  dx = g - exp(y) * sum(g)
//  - ref:: are plain loops in double (the truth); cpu:: computes in compute_t<T> (float for bf16/f16), one row
//    per task (parallel_for over rows), with Eigen's vectorized exp.
//  - cpu:: backward functions ACCUMULATE into `dx` (dx += ...); the two-argument forms return a fresh one.
//  - cuda:: (with DISTILL_WITH_CUDA, i.e. linking distill::kernels) are the same functions on Tensor<T, Cuda>
//    (f32, bf16, f16) with the same contract; kernels in kernels/softmax.cu (see distill/cuda/softmax.hpp).
//  - The recorded ops (softmax(Var), log_softmax(Var)) run on the Var's device.
#pragma once
#include <cmath>
#include <limits>
#include <vector>

#include "distill/ops/reduce.hpp"
#ifdef DISTILL_WITH_CUDA
#include "distill/cuda/softmax.hpp"
#endif

namespace distill {

namespace detail::rowwise {
inline Shape softmax_shape(const Shape& s, const char* op) {
  if (s.rank() < 1)
    throw ShapeError(std::string(op) + ": needs an input of rank >= 1 (normalizes over the last axis), got " + s.str());
  return s;
}

// Row r of a contiguous [R, K] tensor as compute-type values: the row itself when T is its own compute
// type, else converted into `buf`.
template <class T>
const compute_t<T>* row_as_compute(const T* row, int64_t K, std::vector<compute_t<T>>& buf) {
  using C = compute_t<T>;
  if constexpr (std::is_same_v<T, C>) {
    return row;
  } else {
    buf.resize(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) buf[static_cast<size_t>(k)] = to_compute<T>(row[k]);
    return buf.data();
  }
}

// Writes a compute-type row into T storage (a copy, or rounding for 16-bit types).
template <class T, class C>
void store_row(T* dst, const C* src, int64_t K) {
  if (static_cast<const void*>(dst) == static_cast<const void*>(src)) return;
  for (int64_t k = 0; k < K; ++k) dst[k] = from_compute<T>(src[k]);
}

// Per-row softmax (Log = false) or log_softmax (Log = true) forward.
template <bool Log, class T>
Tensor<T> softmax_forward_rows(const Tensor<T>& x, const char* op) {
  using C = compute_t<T>;
  softmax_shape(x.shape(), op);
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back(), R = K ? xc.numel() / K : 0;
  auto y = Tensor<T>::empty(x.shape());
  parallel_for(R, row_grain(K), [&](int64_t b, int64_t e) {
    std::vector<C> in_buf, out_buf(std::is_same_v<T, C> ? 0 : static_cast<size_t>(K));
    for (int64_t r = b; r < e; ++r) {
      const auto xr = ConstArrayMap<C>(row_as_compute(xc.data() + r * K, K, in_buf), K);
      C* out;
      if constexpr (std::is_same_v<T, C>)
        out = y.data() + r * K;
      else
        out = out_buf.data();
      auto yr = ArrayMap<C>(out, K);
      const C m = xr.maxCoeff();
      if constexpr (Log) {
        // (x - m) - log(sum) rather than x - lse: exact where x is near m even when |m| is large.
        const C log_sum = std::log((xr - m).exp().sum());
        yr = (xr - m) - log_sum;
      } else {
        yr = (xr - m).exp();
        yr *= C(1) / yr.sum();
      }
      store_row(y.data() + r * K, out, K);
    }
  });
  return y;
}

// Per-row backward, accumulating into dx.
template <bool Log, class T>
void softmax_backward_rows(const Tensor<T>& y, const Tensor<T>& g, const Tensor<T>& dx, const char* op) {
  using C = compute_t<T>;
  softmax_shape(y.shape(), op);
  check_same_shape(y.shape(), g.shape(), op);
  check_grad_target(dx, y.shape(), op);
  const Tensor<T> yc = y.contiguous(), gc = g.contiguous();
  const int64_t K = y.shape().back(), R = K ? yc.numel() / K : 0;
  parallel_for(R, row_grain(K), [&](int64_t b, int64_t e) {
    std::vector<C> ybuf, gbuf, dbuf(static_cast<size_t>(K));
    for (int64_t r = b; r < e; ++r) {
      const auto yr = ConstArrayMap<C>(row_as_compute(yc.data() + r * K, K, ybuf), K);
      const auto gr = ConstArrayMap<C>(row_as_compute(gc.data() + r * K, K, gbuf), K);
      auto d = ArrayMap<C>(dbuf.data(), K);
      if constexpr (Log)
        d = gr - yr.exp() * gr.sum();
      else
        d = yr * (gr - (gr * yr).sum());
      add_into(dx.data() + r * K, dbuf.data(), K);
    }
  });
}
}  // namespace detail::rowwise

// ------------------------------------------------------------------------------------------------------
namespace ref {

template <FloatingDtype T>
Tensor<T> softmax(const Tensor<T>& x) {
  detail::rowwise::softmax_shape(x.shape(), "ref::softmax");
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back(), R = K ? xc.numel() / K : 0;
  auto y = Tensor<T>::empty(x.shape());
  std::vector<double> e(static_cast<size_t>(K));
  for (int64_t r = 0; r < R; ++r) {
    const T* row = xc.data() + r * K;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < K; ++k) m = std::max(m, detail::rowwise::f64(row[k]));
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += e[static_cast<size_t>(k)] = std::exp(detail::rowwise::f64(row[k]) - m);
    for (int64_t k = 0; k < K; ++k) y.data()[r * K + k] = static_cast<T>(e[static_cast<size_t>(k)] / s);
  }
  return y;
}

template <FloatingDtype T>
Tensor<T> log_softmax(const Tensor<T>& x) {
  detail::rowwise::softmax_shape(x.shape(), "ref::log_softmax");
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back(), R = K ? xc.numel() / K : 0;
  auto y = Tensor<T>::empty(x.shape());
  for (int64_t r = 0; r < R; ++r) {
    const T* row = xc.data() + r * K;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < K; ++k) m = std::max(m, detail::rowwise::f64(row[k]));
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += std::exp(detail::rowwise::f64(row[k]) - m);
    const double log_s = std::log(s);
    for (int64_t k = 0; k < K; ++k) y.data()[r * K + k] = static_cast<T>((detail::rowwise::f64(row[k]) - m) - log_s);
  }
  return y;
}

// dx = y * (g - sum(g * y)) per row.
template <FloatingDtype T>
Tensor<T> softmax_backward(const Tensor<T>& y, const Tensor<T>& g) {
  check_same_shape(y.shape(), g.shape(), "ref::softmax_backward");
  const Tensor<T> yc = y.contiguous(), gc = g.contiguous();
  const int64_t K = y.shape().back(), R = K ? yc.numel() / K : 0;
  auto dx = Tensor<T>::empty(y.shape());
  for (int64_t r = 0; r < R; ++r) {
    double dot = 0;
    for (int64_t k = 0; k < K; ++k)
      dot += detail::rowwise::f64(gc.data()[r * K + k]) * detail::rowwise::f64(yc.data()[r * K + k]);
    for (int64_t k = 0; k < K; ++k)
      dx.data()[r * K + k] = static_cast<T>(detail::rowwise::f64(yc.data()[r * K + k]) *
                                            (detail::rowwise::f64(gc.data()[r * K + k]) - dot));
  }
  return dx;
}

// dx = g - exp(y) * sum(g) per row.
template <FloatingDtype T>
Tensor<T> log_softmax_backward(const Tensor<T>& y, const Tensor<T>& g) {
  check_same_shape(y.shape(), g.shape(), "ref::log_softmax_backward");
  const Tensor<T> yc = y.contiguous(), gc = g.contiguous();
  const int64_t K = y.shape().back(), R = K ? yc.numel() / K : 0;
  auto dx = Tensor<T>::empty(y.shape());
  for (int64_t r = 0; r < R; ++r) {
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += detail::rowwise::f64(gc.data()[r * K + k]);
    for (int64_t k = 0; k < K; ++k)
      dx.data()[r * K + k] = static_cast<T>(detail::rowwise::f64(gc.data()[r * K + k]) -
                                            std::exp(detail::rowwise::f64(yc.data()[r * K + k])) * s);
  }
  return dx;
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------------
namespace cpu {

template <FloatingDtype T>
Tensor<T> softmax(const Tensor<T>& x) {
  return detail::rowwise::softmax_forward_rows<false>(x, "softmax");
}
template <FloatingDtype T>
Tensor<T> log_softmax(const Tensor<T>& x) {
  return detail::rowwise::softmax_forward_rows<true>(x, "log_softmax");
}

// dx += y * (g - sum(g * y)), from the softmax output y.
template <FloatingDtype T>
void softmax_backward(const Tensor<T>& y, const Tensor<T>& g, const Tensor<T>& dx) {
  detail::rowwise::softmax_backward_rows<false>(y, g, dx, "softmax_backward");
}
template <FloatingDtype T>
Tensor<T> softmax_backward(const Tensor<T>& y, const Tensor<T>& g) {
  auto dx = Tensor<T>::zeros(y.shape());
  softmax_backward(y, g, dx);
  return dx;
}

// dx += g - exp(y) * sum(g), from the log_softmax output y.
template <FloatingDtype T>
void log_softmax_backward(const Tensor<T>& y, const Tensor<T>& g, const Tensor<T>& dx) {
  detail::rowwise::softmax_backward_rows<true>(y, g, dx, "log_softmax_backward");
}
template <FloatingDtype T>
Tensor<T> log_softmax_backward(const Tensor<T>& y, const Tensor<T>& g) {
  auto dx = Tensor<T>::zeros(y.shape());
  log_softmax_backward(y, g, dx);
  return dx;
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------------
// The same functions on the GPU (kernels/softmax.cu), for f32, bf16 and f16.
#ifdef DISTILL_WITH_CUDA
namespace cuda {

namespace softmax_detail {
template <bool Log, class T>
Tensor<T, Cuda> forward(const Tensor<T, Cuda>& x, const char* op) {
  static_assert(kernel_dtype_v<T>, "the CUDA softmax serves f32, bf16 and f16; f64 stays on the CPU");
  distill::detail::rowwise::softmax_shape(x.shape(), op);
  const Tensor<T, Cuda> xc = x.contiguous();
  const int64_t K = x.shape().back(), R = K ? xc.numel() / K : 0;
  auto y = Tensor<T, Cuda>::empty(x.shape());
  softmax_rows(xc.data(), y.data(), R, K, Log);
  return y;
}

template <bool Log, class T>
void backward(const Tensor<T, Cuda>& y, const Tensor<T, Cuda>& g, const Tensor<T, Cuda>& dx, const char* op) {
  static_assert(kernel_dtype_v<T>, "the CUDA softmax serves f32, bf16 and f16; f64 stays on the CPU");
  distill::detail::rowwise::softmax_shape(y.shape(), op);
  check_same_shape(y.shape(), g.shape(), op);
  distill::detail::rowwise::check_grad_target(dx, y.shape(), op);
  const Tensor<T, Cuda> yc = y.contiguous(), gc = g.contiguous();
  const int64_t K = y.shape().back(), R = K ? yc.numel() / K : 0;
  softmax_backward_rows(yc.data(), gc.data(), dx.data(), R, K, Log);
}
}  // namespace softmax_detail

template <FloatingDtype T>
Tensor<T, Cuda> softmax(const Tensor<T, Cuda>& x) {
  return softmax_detail::forward<false>(x, "softmax");
}
template <FloatingDtype T>
Tensor<T, Cuda> log_softmax(const Tensor<T, Cuda>& x) {
  return softmax_detail::forward<true>(x, "log_softmax");
}

// dx += y * (g - sum(g * y)), from the softmax output y.
template <FloatingDtype T>
void softmax_backward(const Tensor<T, Cuda>& y, const Tensor<T, Cuda>& g, const Tensor<T, Cuda>& dx) {
  softmax_detail::backward<false>(y, g, dx, "softmax_backward");
}
template <FloatingDtype T>
Tensor<T, Cuda> softmax_backward(const Tensor<T, Cuda>& y, const Tensor<T, Cuda>& g) {
  auto dx = Tensor<T, Cuda>::zeros(y.shape());
  cuda::softmax_backward(y, g, dx);
  return dx;
}

// dx += g - exp(y) * sum(g), from the log_softmax output y.
template <FloatingDtype T>
void log_softmax_backward(const Tensor<T, Cuda>& y, const Tensor<T, Cuda>& g, const Tensor<T, Cuda>& dx) {
  softmax_detail::backward<true>(y, g, dx, "log_softmax_backward");
}
template <FloatingDtype T>
Tensor<T, Cuda> log_softmax_backward(const Tensor<T, Cuda>& y, const Tensor<T, Cuda>& g) {
  auto dx = Tensor<T, Cuda>::zeros(y.shape());
  cuda::log_softmax_backward(y, g, dx);
  return dx;
}

}  // namespace cuda
#endif  // DISTILL_WITH_CUDA

// ------------------------------------------------------------------------------------------------------
// Recorded ops, on the Var's device. Both save only their output y for backward.

// [..., K] -> [..., K]
template <FloatingDtype T, class D>
Var<T, D> softmax(const Var<T, D>& x) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("softmax");
    Tensor<T, D> y = cuda::softmax(x.value());
    return Var<T, D>::record("softmax", y, {x.node()}, [x, y](auto& self) {
      if (x.requires_grad()) cuda::softmax_backward(y, self.grad, x.grad_buffer());
    });
#else
    static_assert(detail::rowwise::needs_cuda_kernels_v<T>,
                  "softmax on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    Tensor<T, D> y = cpu::softmax(x.value());
    return Var<T, D>::record("softmax", y, {x.node()}, [x, y](auto& self) {
      if (x.requires_grad()) cpu::softmax_backward(y, self.grad, x.grad_buffer());
    });
  }
}

// [..., K] -> [..., K]
template <FloatingDtype T, class D>
Var<T, D> log_softmax(const Var<T, D>& x) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("log_softmax");
    Tensor<T, D> y = cuda::log_softmax(x.value());
    return Var<T, D>::record("log_softmax", y, {x.node()}, [x, y](auto& self) {
      if (x.requires_grad()) cuda::log_softmax_backward(y, self.grad, x.grad_buffer());
    });
#else
    static_assert(detail::rowwise::needs_cuda_kernels_v<T>,
                  "log_softmax on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    Tensor<T, D> y = cpu::log_softmax(x.value());
    return Var<T, D>::record("log_softmax", y, {x.node()}, [x, y](auto& self) {
      if (x.requires_grad()) cpu::log_softmax_backward(y, self.grad, x.grad_buffer());
    });
  }
}

// The same ops applied to an element-wise expression (evaluated, and recorded, first).
template <expr::Expression E>
auto softmax(const E& e) {
  return softmax(to_var(e));
}
template <expr::Expression E>
auto log_softmax(const E& e) {
  return log_softmax(to_var(e));
}

}  // namespace distill
