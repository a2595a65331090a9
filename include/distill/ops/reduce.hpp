// Reductions over the last axis (sum_last, mean_last, max_last) and over everything (sum_all).
//
// Contract:
//  - Input: any rank >= 1 (a rank-0 input throws ShapeError); strided views are made contiguous first.
//  - Output of the *_last ops drops the last axis: [B, T, V] -> [B, T]; a rank-1 input [K] gives a rank-0
//    tensor (Shape(), one element), as torch's x.sum(-1) does. sum_all gives a rank-0 one-element tensor.
//  - Empty last axis: sum is 0, mean is NaN (0/0, as torch), max throws distill::Error.
//  - max_last propagates NaN (a row holding NaN has max NaN, at its first NaN); its gradient goes to the
//    first argmax only (ties are not split), as torch's max(dim) does.
//  - ref:: are plain loops accumulating in double (the truth); cpu:: computes in compute_t<T> with one
//    row per task (parallel_for over rows), so results do not depend on the thread count.
//  - cpu:: backward functions ACCUMULATE into `dx` (dx += ...); the two-argument forms return a fresh one.
//  - cuda:: (with DISTILL_WITH_CUDA, i.e. linking distill::kernels) are the same functions on Tensor<T, Cuda>
//    (f32, bf16, f16), with the same contract; kernels in kernels/reduce.cu (see distill/cuda/reduce.hpp).
//  - The recorded ops (sum_last(Var), ...) run on the Var's device.
#pragma once
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "distill/autograd/var.hpp"
#include "distill/core/nvtx.hpp"
#include "distill/core/parallel.hpp"
#ifdef DISTILL_WITH_CUDA
#include "distill/cuda/reduce.hpp"
#endif

namespace distill {

namespace detail::rowwise {
// An element as a double (ref:: loops accumulate in double).
template <class T>
inline double f64(T x) {
  return static_cast<double>(to_compute<T>(x));
}

// The output shape of a last-axis reduction: the input shape without its last axis.
inline Shape reduce_last_shape(const Shape& s, const char* op) {
  if (s.rank() < 1)
    throw ShapeError(std::string(op) + ": needs an input of rank >= 1 (reduces over the last axis), got " + s.str());
  return s.without(-1);
}
// Rows of at least ~32K elements per parallel task.
inline int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(cols, 1)); }

template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// dx[i] += v[i] for a row, rounding once into T.
template <class T, class C>
inline void add_into(T* dx, const C* v, int64_t n) {
  if constexpr (std::is_same_v<T, C>) {
    ArrayMap<T>(dx, n) += ConstArrayMap<C>(v, n);
  } else {
    for (int64_t j = 0; j < n; ++j) dx[j] = from_compute<T>(to_compute<T>(dx[j]) + v[j]);
  }
}

template <class T, class D>
inline void check_grad_target(const Tensor<T, D>& dx, const Shape& want, const char* op) {
  check_same_shape(dx.shape(), want, op);
  DISTILL_CHECK(dx.is_contiguous(), op, ": the gradient buffer must be contiguous");
}

// Index of the first maximum of a row (NaN counts as the maximum, at its first occurrence).
template <class T>
int64_t first_argmax_ref(const T* row, int64_t K) {
  int64_t best = 0;
  double m = f64(row[0]);
  for (int64_t k = 1; k < K && !std::isnan(m); ++k) {
    const double v = f64(row[k]);
    if (v > m || std::isnan(v)) m = v, best = k;
  }
  return best;
}

// The static_assert of a Cuda branch compiled without the kernels (dependent, so it fires only when used).
template <class T>
inline constexpr bool needs_cuda_kernels_v = false;
}  // namespace detail::rowwise

// ------------------------------------------------------------------------------------------------------
namespace ref {

template <FloatingDtype T>
Tensor<T> sum_last(const Tensor<T>& x) {
  const Shape os = detail::rowwise::reduce_last_shape(x.shape(), "ref::sum_last");
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back(), R = os.numel();
  auto y = Tensor<T>::empty(os);  // [...]
  for (int64_t r = 0; r < R; ++r) {
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += detail::rowwise::f64(xc.data()[r * K + k]);
    y.data()[r] = static_cast<T>(s);
  }
  return y;
}

template <FloatingDtype T>
Tensor<T> mean_last(const Tensor<T>& x) {
  const Shape os = detail::rowwise::reduce_last_shape(x.shape(), "ref::mean_last");
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back(), R = os.numel();
  auto y = Tensor<T>::empty(os);
  for (int64_t r = 0; r < R; ++r) {
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += detail::rowwise::f64(xc.data()[r * K + k]);
    y.data()[r] = static_cast<T>(s / static_cast<double>(K));
  }
  return y;
}

template <FloatingDtype T>
Tensor<T> max_last(const Tensor<T>& x) {
  const Shape os = detail::rowwise::reduce_last_shape(x.shape(), "ref::max_last");
  const int64_t K = x.shape().back(), R = os.numel();
  DISTILL_CHECK(K > 0 || R == 0, "ref::max_last: cannot take the max over an empty last axis (shape ", x.shape().str(),
                ")");
  const Tensor<T> xc = x.contiguous();
  auto y = Tensor<T>::empty(os);
  for (int64_t r = 0; r < R; ++r)
    y.data()[r] = xc.data()[r * K + detail::rowwise::first_argmax_ref(xc.data() + r * K, K)];
  return y;
}

template <FloatingDtype T>
Tensor<T> sum_all(const Tensor<T>& x) {
  double s = 0;
  for (int64_t i = 0; i < x.numel(); ++i) s += detail::rowwise::f64(x.flat(i));
  return Tensor<T>::full(Shape(), static_cast<T>(s));
}

// dx = broadcast of g ([...]) along the last axis of x_shape ([..., K]).
template <FloatingDtype T>
Tensor<T> sum_last_backward(const Tensor<T>& g, const Shape& x_shape) {
  check_same_shape(g.shape(), detail::rowwise::reduce_last_shape(x_shape, "ref::sum_last_backward"),
                   "ref::sum_last_backward");
  const int64_t K = x_shape.back();
  auto dx = Tensor<T>::empty(x_shape);
  for (int64_t i = 0; i < dx.numel(); ++i) dx.data()[i] = g.flat(i / K);
  return dx;
}

template <FloatingDtype T>
Tensor<T> mean_last_backward(const Tensor<T>& g, const Shape& x_shape) {
  check_same_shape(g.shape(), detail::rowwise::reduce_last_shape(x_shape, "ref::mean_last_backward"),
                   "ref::mean_last_backward");
  const int64_t K = x_shape.back();
  auto dx = Tensor<T>::empty(x_shape);
  for (int64_t i = 0; i < dx.numel(); ++i)
    dx.data()[i] = static_cast<T>(detail::rowwise::f64(g.flat(i / K)) / static_cast<double>(K));
  return dx;
}

// dx = g at the first argmax of each row of x, 0 elsewhere.
template <FloatingDtype T>
Tensor<T> max_last_backward(const Tensor<T>& x, const Tensor<T>& g) {
  check_same_shape(g.shape(), detail::rowwise::reduce_last_shape(x.shape(), "ref::max_last_backward"),
                   "ref::max_last_backward");
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back(), R = g.numel();
  auto dx = Tensor<T>::zeros(x.shape());
  for (int64_t r = 0; r < R; ++r)
    dx.data()[r * K + detail::rowwise::first_argmax_ref(xc.data() + r * K, K)] = g.flat(r);
  return dx;
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------------
// The row maxima and the index of each row's first argmax (what the backward needs), on device D.
template <FloatingDtype T, class D = Cpu>
struct MaxLast {
  Tensor<T, D> values;         // [...]
  Tensor<int64_t, D> indices;  // [...]
};

// ------------------------------------------------------------------------------------------------------
namespace cpu {

using distill::MaxLast;

template <FloatingDtype T>
Tensor<T> sum_last(const Tensor<T>& x) {
  using C = compute_t<T>;
  const Shape os = detail::rowwise::reduce_last_shape(x.shape(), "sum_last");
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back();
  auto y = Tensor<T>::empty(os);  // [...]
  parallel_for(os.numel(), detail::rowwise::row_grain(K), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      y.data()[r] = from_compute<T>(detail::rowwise::ConstArrayMap<T>(xc.data() + r * K, K).template cast<C>().sum());
  });
  return y;
}

template <FloatingDtype T>
Tensor<T> mean_last(const Tensor<T>& x) {
  using C = compute_t<T>;
  const Shape os = detail::rowwise::reduce_last_shape(x.shape(), "mean_last");
  const Tensor<T> xc = x.contiguous();
  const int64_t K = x.shape().back();
  auto y = Tensor<T>::empty(os);
  parallel_for(os.numel(), detail::rowwise::row_grain(K), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      y.data()[r] = from_compute<T>(detail::rowwise::ConstArrayMap<T>(xc.data() + r * K, K).template cast<C>().sum() /
                                    static_cast<C>(K));
  });
  return y;
}

template <FloatingDtype T>
MaxLast<T> max_last_with_indices(const Tensor<T>& x) {
  using C = compute_t<T>;
  const Shape os = detail::rowwise::reduce_last_shape(x.shape(), "max_last");
  const int64_t K = x.shape().back(), R = os.numel();
  DISTILL_CHECK(K > 0 || R == 0, "max_last: cannot take the max over an empty last axis (shape ", x.shape().str(), ")");
  const Tensor<T> xc = x.contiguous();
  MaxLast<T> out{Tensor<T>::empty(os), Tensor<int64_t>::empty(os)};
  parallel_for(R, detail::rowwise::row_grain(K), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* row = xc.data() + r * K;
      int64_t best = 0;
      C m = to_compute<T>(row[0]);
      for (int64_t k = 1; k < K && !std::isnan(m); ++k) {
        const C v = to_compute<T>(row[k]);
        if (v > m || std::isnan(v)) m = v, best = k;
      }
      out.values.data()[r] = row[best];
      out.indices.data()[r] = best;
    }
  });
  return out;
}

template <FloatingDtype T>
Tensor<T> max_last(const Tensor<T>& x) {
  return max_last_with_indices(x).values;
}

// Sum of all elements, in fixed blocks of 4096 summed in order (deterministic for any thread count).
template <FloatingDtype T>
Tensor<T> sum_all(const Tensor<T>& x) {
  using C = compute_t<T>;
  const Tensor<T> xc = x.contiguous();
  constexpr int64_t kBlock = 4096;
  const int64_t n = xc.numel(), nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(nb));
  parallel_for(nb, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t lo = i * kBlock, len = std::min(kBlock, n - lo);
      part[static_cast<size_t>(i)] = detail::rowwise::ConstArrayMap<T>(xc.data() + lo, len).template cast<C>().sum();
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return Tensor<T>::full(Shape(), from_compute<T>(static_cast<C>(s)));
}

// dx[..., k] += g[...] * scale for every k (sum: scale 1, mean: scale 1/K).
template <FloatingDtype T>
void sum_last_backward(const Tensor<T>& g, const Tensor<T>& dx, double scale = 1.0) {
  using C = compute_t<T>;
  const Shape os = detail::rowwise::reduce_last_shape(dx.shape(), "sum_last_backward");
  check_same_shape(g.shape(), os, "sum_last_backward");
  detail::rowwise::check_grad_target(dx, dx.shape(), "sum_last_backward");
  const Tensor<T> gc = g.contiguous();
  const int64_t K = dx.shape().back();
  parallel_for(os.numel(), detail::rowwise::row_grain(K), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const C v = static_cast<C>(detail::rowwise::f64(gc.data()[r]) * scale);
      T* d = dx.data() + r * K;
      if constexpr (std::is_same_v<T, C>)
        detail::rowwise::ArrayMap<T>(d, K) += v;
      else
        for (int64_t k = 0; k < K; ++k) d[k] = from_compute<T>(to_compute<T>(d[k]) + v);
    }
  });
}
template <FloatingDtype T>
Tensor<T> sum_last_backward(const Tensor<T>& g, const Shape& x_shape) {
  auto dx = Tensor<T>::zeros(x_shape);
  sum_last_backward(g, dx);
  return dx;
}

template <FloatingDtype T>
void mean_last_backward(const Tensor<T>& g, const Tensor<T>& dx) {
  sum_last_backward(g, dx, 1.0 / static_cast<double>(dx.shape().back()));
}
template <FloatingDtype T>
Tensor<T> mean_last_backward(const Tensor<T>& g, const Shape& x_shape) {
  auto dx = Tensor<T>::zeros(x_shape);
  mean_last_backward(g, dx);
  return dx;
}

// dx[..., indices[...]] += g[...].
template <FloatingDtype T>
void max_last_backward(const Tensor<int64_t>& indices, const Tensor<T>& g, const Tensor<T>& dx) {
  const Shape os = detail::rowwise::reduce_last_shape(dx.shape(), "max_last_backward");
  check_same_shape(g.shape(), os, "max_last_backward");
  check_same_shape(indices.shape(), os, "max_last_backward (indices)");
  detail::rowwise::check_grad_target(dx, dx.shape(), "max_last_backward");
  const Tensor<T> gc = g.contiguous();
  const Tensor<int64_t> ic = indices.contiguous();
  const int64_t K = dx.shape().back();
  parallel_for(os.numel(), 4096, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      T& d = dx.data()[r * K + ic.data()[r]];
      d = from_compute<T>(to_compute<T>(d) + to_compute<T>(gc.data()[r]));
    }
  });
}
template <FloatingDtype T>
Tensor<T> max_last_backward(const Tensor<int64_t>& indices, const Tensor<T>& g, const Shape& x_shape) {
  auto dx = Tensor<T>::zeros(x_shape);
  max_last_backward(indices, g, dx);
  return dx;
}

// dx += g (one element) everywhere.
template <FloatingDtype T>
void sum_all_backward(const Tensor<T>& g, const Tensor<T>& dx) {
  using C = compute_t<T>;
  DISTILL_CHECK(g.numel() == 1, "sum_all_backward: the upstream gradient must have one element, got ", g.shape().str());
  detail::rowwise::check_grad_target(dx, dx.shape(), "sum_all_backward");
  const C v = to_compute<T>(g.flat(0));
  parallel_for(dx.numel(), 1 << 15, [&](int64_t b, int64_t e) {
    if constexpr (std::is_same_v<T, C>)
      detail::rowwise::ArrayMap<T>(dx.data() + b, e - b) += v;
    else
      for (int64_t i = b; i < e; ++i) dx.data()[i] = from_compute<T>(to_compute<T>(dx.data()[i]) + v);
  });
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------------
// The same functions on the GPU (kernels/reduce.cu), for f32, bf16 and f16.
#ifdef DISTILL_WITH_CUDA
namespace cuda {

// The dtypes the kernels are instantiated for.
template <class T>
inline constexpr bool kernel_dtype_v = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

template <FloatingDtype T>
Tensor<T, Cuda> sum_last(const Tensor<T, Cuda>& x) {
  static_assert(kernel_dtype_v<T>, "the CUDA reductions serve f32, bf16 and f16; f64 stays on the CPU");
  const Shape os = distill::detail::rowwise::reduce_last_shape(x.shape(), "sum_last");
  const int64_t K = x.shape().back(), R = os.numel();
  if (K == 0) return Tensor<T, Cuda>::zeros(os);
  const Tensor<T, Cuda> xc = x.contiguous();
  auto y = Tensor<T, Cuda>::empty(os);  // [...]
  sum_last_rows(xc.data(), y.data(), R, K, /*mean=*/false);
  return y;
}

template <FloatingDtype T>
Tensor<T, Cuda> mean_last(const Tensor<T, Cuda>& x) {
  static_assert(kernel_dtype_v<T>, "the CUDA reductions serve f32, bf16 and f16; f64 stays on the CPU");
  const Shape os = distill::detail::rowwise::reduce_last_shape(x.shape(), "mean_last");
  const int64_t K = x.shape().back(), R = os.numel();
  if (K == 0) return Tensor<T, Cuda>::full(os, static_cast<T>(std::numeric_limits<float>::quiet_NaN()));  // 0/0
  const Tensor<T, Cuda> xc = x.contiguous();
  auto y = Tensor<T, Cuda>::empty(os);
  sum_last_rows(xc.data(), y.data(), R, K, /*mean=*/true);
  return y;
}

template <FloatingDtype T>
MaxLast<T, Cuda> max_last_with_indices(const Tensor<T, Cuda>& x) {
  static_assert(kernel_dtype_v<T>, "the CUDA reductions serve f32, bf16 and f16; f64 stays on the CPU");
  const Shape os = distill::detail::rowwise::reduce_last_shape(x.shape(), "max_last");
  const int64_t K = x.shape().back(), R = os.numel();
  DISTILL_CHECK(K > 0 || R == 0, "max_last: cannot take the max over an empty last axis (shape ", x.shape().str(), ")");
  const Tensor<T, Cuda> xc = x.contiguous();
  MaxLast<T, Cuda> out{Tensor<T, Cuda>::empty(os), Tensor<int64_t, Cuda>::empty(os)};
  max_last_rows(xc.data(), out.values.data(), out.indices.data(), R, K);
  return out;
}

template <FloatingDtype T>
Tensor<T, Cuda> max_last(const Tensor<T, Cuda>& x) {
  return cuda::max_last_with_indices(x).values;
}

// Fixed partials, then one block adding them in f64: the same bits on every run.
template <FloatingDtype T>
Tensor<T, Cuda> sum_all(const Tensor<T, Cuda>& x) {
  static_assert(kernel_dtype_v<T>, "the CUDA reductions serve f32, bf16 and f16; f64 stays on the CPU");
  const Tensor<T, Cuda> xc = x.contiguous();
  auto y = Tensor<T, Cuda>::empty(Shape());
  sum_all_flat(xc.data(), y.data(), xc.numel());
  return y;
}

// dx[..., k] += g[...] * scale for every k (sum: scale 1, mean: scale 1/K).
template <FloatingDtype T>
void sum_last_backward(const Tensor<T, Cuda>& g, const Tensor<T, Cuda>& dx, double scale = 1.0) {
  static_assert(kernel_dtype_v<T>, "the CUDA reductions serve f32, bf16 and f16; f64 stays on the CPU");
  const Shape os = distill::detail::rowwise::reduce_last_shape(dx.shape(), "sum_last_backward");
  check_same_shape(g.shape(), os, "sum_last_backward");
  distill::detail::rowwise::check_grad_target(dx, dx.shape(), "sum_last_backward");
  const Tensor<T, Cuda> gc = g.contiguous();
  sum_last_backward_rows(gc.data(), dx.data(), os.numel(), dx.shape().back(), scale);
}
template <FloatingDtype T>
Tensor<T, Cuda> sum_last_backward(const Tensor<T, Cuda>& g, const Shape& x_shape) {
  auto dx = Tensor<T, Cuda>::zeros(x_shape);
  cuda::sum_last_backward(g, dx);
  return dx;
}

template <FloatingDtype T>
void mean_last_backward(const Tensor<T, Cuda>& g, const Tensor<T, Cuda>& dx) {
  cuda::sum_last_backward(g, dx, 1.0 / static_cast<double>(dx.shape().back()));
}
template <FloatingDtype T>
Tensor<T, Cuda> mean_last_backward(const Tensor<T, Cuda>& g, const Shape& x_shape) {
  auto dx = Tensor<T, Cuda>::zeros(x_shape);
  cuda::mean_last_backward(g, dx);
  return dx;
}

// dx[..., indices[...]] += g[...].
template <FloatingDtype T>
void max_last_backward(const Tensor<int64_t, Cuda>& indices, const Tensor<T, Cuda>& g, const Tensor<T, Cuda>& dx) {
  static_assert(kernel_dtype_v<T>, "the CUDA reductions serve f32, bf16 and f16; f64 stays on the CPU");
  const Shape os = distill::detail::rowwise::reduce_last_shape(dx.shape(), "max_last_backward");
  check_same_shape(g.shape(), os, "max_last_backward");
  check_same_shape(indices.shape(), os, "max_last_backward (indices)");
  distill::detail::rowwise::check_grad_target(dx, dx.shape(), "max_last_backward");
  const Tensor<T, Cuda> gc = g.contiguous();
  const Tensor<int64_t, Cuda> ic = indices.contiguous();
  max_last_backward_rows(ic.data(), gc.data(), dx.data(), os.numel(), dx.shape().back());
}
template <FloatingDtype T>
Tensor<T, Cuda> max_last_backward(const Tensor<int64_t, Cuda>& indices, const Tensor<T, Cuda>& g,
                                  const Shape& x_shape) {
  auto dx = Tensor<T, Cuda>::zeros(x_shape);
  cuda::max_last_backward(indices, g, dx);
  return dx;
}

// dx += g (one element, read on the device) everywhere.
template <FloatingDtype T>
void sum_all_backward(const Tensor<T, Cuda>& g, const Tensor<T, Cuda>& dx) {
  static_assert(kernel_dtype_v<T>, "the CUDA reductions serve f32, bf16 and f16; f64 stays on the CPU");
  DISTILL_CHECK(g.numel() == 1, "sum_all_backward: the upstream gradient must have one element, got ", g.shape().str());
  distill::detail::rowwise::check_grad_target(dx, dx.shape(), "sum_all_backward");
  const Tensor<T, Cuda> gc = g.contiguous();
  sum_all_backward_flat(gc.data(), dx.data(), dx.numel());
}

}  // namespace cuda
#endif  // DISTILL_WITH_CUDA

// ------------------------------------------------------------------------------------------------------
// Recorded ops, on the Var's device.

// [..., K] -> [...]
template <FloatingDtype T, class D>
Var<T, D> sum_last(const Var<T, D>& x) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("sum_last");
    return Var<T, D>::record("sum_last", cuda::sum_last(x.value()), {x.node()}, [x](auto& self) {
      if (x.requires_grad()) cuda::sum_last_backward(self.grad, x.grad_buffer());
    });
#else
    static_assert(detail::rowwise::needs_cuda_kernels_v<T>,
                  "sum_last on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    return Var<T, D>::record("sum_last", cpu::sum_last(x.value()), {x.node()}, [x](auto& self) {
      if (x.requires_grad()) cpu::sum_last_backward(self.grad, x.grad_buffer());
    });
  }
}

// [..., K] -> [...]
template <FloatingDtype T, class D>
Var<T, D> mean_last(const Var<T, D>& x) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("mean_last");
    return Var<T, D>::record("mean_last", cuda::mean_last(x.value()), {x.node()}, [x](auto& self) {
      if (x.requires_grad()) cuda::mean_last_backward(self.grad, x.grad_buffer());
    });
#else
    static_assert(detail::rowwise::needs_cuda_kernels_v<T>,
                  "mean_last on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    return Var<T, D>::record("mean_last", cpu::mean_last(x.value()), {x.node()}, [x](auto& self) {
      if (x.requires_grad()) cpu::mean_last_backward(self.grad, x.grad_buffer());
    });
  }
}

// [..., K] -> [...]; the gradient goes to each row's first argmax.
template <FloatingDtype T, class D>
Var<T, D> max_last(const Var<T, D>& x) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("max_last");
    auto m = cuda::max_last_with_indices(x.value());
    return Var<T, D>::record("max_last", m.values, {x.node()}, [x, idx = m.indices](auto& self) {
      if (x.requires_grad()) cuda::max_last_backward(idx, self.grad, x.grad_buffer());
    });
#else
    static_assert(detail::rowwise::needs_cuda_kernels_v<T>,
                  "max_last on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    auto m = cpu::max_last_with_indices(x.value());
    return Var<T, D>::record("max_last", m.values, {x.node()}, [x, idx = m.indices](auto& self) {
      if (x.requires_grad()) cpu::max_last_backward(idx, self.grad, x.grad_buffer());
    });
  }
}

// any shape -> [] (one element)
template <FloatingDtype T, class D>
Var<T, D> sum_all(const Var<T, D>& x) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    NvtxRange nvtx("sum_all");
    return Var<T, D>::record("sum_all", cuda::sum_all(x.value()), {x.node()}, [x](auto& self) {
      if (x.requires_grad()) cuda::sum_all_backward(self.grad, x.grad_buffer());
    });
#else
    static_assert(detail::rowwise::needs_cuda_kernels_v<T>,
                  "sum_all on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    return Var<T, D>::record("sum_all", cpu::sum_all(x.value()), {x.node()}, [x](auto& self) {
      if (x.requires_grad()) cpu::sum_all_backward(self.grad, x.grad_buffer());
    });
  }
}

// The same ops applied to an element-wise expression (evaluated, and recorded, first).
template <expr::Expression E>
auto sum_last(const E& e) {
  return sum_last(to_var(e));
}
template <expr::Expression E>
auto mean_last(const E& e) {
  return mean_last(to_var(e));
}
template <expr::Expression E>
auto max_last(const E& e) {
  return max_last(to_var(e));
}
template <expr::Expression E>
auto sum_all(const E& e) {
  return sum_all(to_var(e));
}

}  // namespace distill
