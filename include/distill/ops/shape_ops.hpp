// Shape ops on the tape: concat, split, reshape, transpose. Negative axes count from the back.
//   concat(xs, axis)         copy; backward hands each input its slice of the gradient.
//   split(x, sizes, axis)    copies, one tape node per piece; each piece's backward adds its gradient into
//                            the matching slice of x's gradient.
//   reshape(x, shape)        a view of x's (contiguous) value, sharing its storage, like torch.reshape;
//                            one extent may be -1 in the braced form. Backward reshapes the gradient back.
//   transpose(x, a, b)       a contiguous copy with axes a and b swapped; backward transposes back.
// Shapes that do not fit throw distill::ShapeError naming the op and both shapes.
// Backward functions accumulate into the parents' gradients, never overwrite.
// Every op takes Var<T, Cpu> or Var<T, Cuda>. On Cuda they are views, Tensor::copy_from (strided device
// copies) and autograd::accumulate: results and gradients equal the CPU's bit for bit.
#pragma once
#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/nvtx.hpp"
#include "distill/core/parallel.hpp"

namespace distill {

namespace detail::shape_ops {

inline constexpr int64_t kElemGrain = 1 << 14;

inline int norm_axis(const Shape& s, int axis, const char* op) {
  const int a = axis < 0 ? axis + s.rank() : axis;
  if (a < 0 || a >= s.rank())
    throw ShapeError(std::string(op) + ": axis " + std::to_string(axis) + " is out of range for shape " + s.str());
  return a;
}

template <class I>
std::string list_str(const std::vector<I>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// The concatenated shape; every input must match the first except along `axis`.
inline Shape concat_shape(const std::vector<Shape>& shapes, int axis, const char* op) {
  DISTILL_CHECK(!shapes.empty(), op, ": needs at least one input");
  const Shape& s0 = shapes[0];
  const int a = norm_axis(s0, axis, op);
  int64_t total = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Shape& s = shapes[i];
    bool ok = s.rank() == s0.rank();
    for (int d = 0; ok && d < s.rank(); ++d) ok = d == a || s[d] == s0[d];
    if (!ok)
      throw ShapeError(std::string(op) + ": input " + std::to_string(i) + " has shape " + s.str() +
                       " but input 0 has " + s0.str() + "; they must agree except along axis " + std::to_string(a));
    total += s[a];
  }
  return s0.with(a, total);
}

// fn(row, offset): for every row (all axes but the last) of a view with this shape and these strides,
// the row's element offset. Rows are split across threads.
template <class F>
void for_each_row(const Shape& shape, const Shape& strides, F&& fn) {
  const int R = shape.rank();
  const int64_t n = R ? shape[R - 1] : 1, numel = shape.numel();
  if (numel == 0) return;
  parallel_for(numel / n, std::max<int64_t>(1, kElemGrain / n), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int64_t rem = r, off = 0;
      for (int i = R - 2; i >= 0; --i) {
        off += (rem % shape[i]) * strides[i];
        rem /= shape[i];
      }
      fn(r, off);
    }
  });
}

// view += src (in the compute type) for a src of the view's shape; the view may be strided (a slice of
// a gradient buffer), which expr::assign does not take as a destination. Plain copies into a view are
// Tensor::copy_from.
template <class T>
void scatter_add(const Tensor<T>& view, const Tensor<T>& src_in) {
  check_same_shape(view.shape(), src_in.shape(), "scatter_add");
  const Tensor<T> src = src_in.contiguous();
  const int R = view.rank();
  const int64_t n = R ? view.shape()[R - 1] : 1, st = R ? view.strides()[R - 1] : 1;
  const T* sp = src.data();
  T* dp = view.data();
  for_each_row(view.shape(), view.strides(), [&](int64_t r, int64_t off) {
    const T* s = sp + r * n;
    for (int64_t j = 0; j < n; ++j)
      dp[off + j * st] = from_compute<T>(to_compute<T>(dp[off + j * st]) + to_compute<T>(s[j]));
  });
}

// Row-major multi-index of flat index k in shape s, and back.
inline void unravel(int64_t k, const Shape& s, int64_t* idx) {
  for (int i = s.rank() - 1; i >= 0; --i) {
    idx[i] = k % s[i];
    k /= s[i];
  }
}
inline int64_t ravel(const int64_t* idx, const Shape& s) {
  int64_t f = 0;
  for (int i = 0; i < s.rank(); ++i) f = f * s[i] + idx[i];
  return f;
}

// Resolves one -1 extent; a target that does not hold x's elements is a ShapeError naming both.
inline Shape resolve_reshape(const Shape& in, const int64_t* dims, int n, const char* op) {
  auto fail = [&] {
    std::vector<int64_t> v(dims, dims + n);
    throw ShapeError(std::string(op) + ": cannot view " + in.str() + " (" + std::to_string(in.numel()) +
                     " elements) as " + list_str(v));
  };
  if (n > kMaxRank) fail();
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < n; ++i) {
    if (dims[i] == -1 && infer < 0)
      infer = i;
    else if (dims[i] < 0)
      fail();
    else
      known *= dims[i];
  }
  Shape s;
  for (int i = 0; i < n; ++i) {
    if (i != infer) {
      s.push_back(dims[i]);
    } else {
      if (known == 0 || in.numel() % known != 0) fail();
      s.push_back(in.numel() / known);
    }
  }
  if (s.numel() != in.numel()) fail();
  return s;
}

}  // namespace detail::shape_ops

// ------------------------------------------------------------------------------------------------
namespace ref {

template <FloatingDtype T>
Tensor<T> concat(const std::vector<Tensor<T>>& xs, int axis) {
  namespace d = detail::shape_ops;
  std::vector<Shape> shapes;
  for (const auto& x : xs) shapes.push_back(x.shape());
  const Shape out = d::concat_shape(shapes, axis, "ref::concat");
  const int a = d::norm_axis(out, axis, "ref::concat");
  auto y = Tensor<T>::empty(out);
  int64_t idx[kMaxRank] = {};
  for (int64_t k = 0; k < y.numel(); ++k) {
    d::unravel(k, out, idx);
    size_t which = 0;
    while (idx[a] >= xs[which].dim(a)) idx[a] -= xs[which++].dim(a);
    y.flat(k) = xs[which].flat(d::ravel(idx, xs[which].shape()));
  }
  return y;
}

// x[..., start:start+length, ...] along `axis`, as a new tensor.
template <FloatingDtype T>
Tensor<T> narrow(const Tensor<T>& x, int axis, int64_t start, int64_t length) {
  namespace d = detail::shape_ops;
  const int a = d::norm_axis(x.shape(), axis, "ref::narrow");
  DISTILL_CHECK(start >= 0 && length >= 0 && start + length <= x.dim(a), "ref::narrow: [", start, ", ", start + length,
                ") out of range for axis ", a, " of ", x.shape().str());
  auto y = Tensor<T>::empty(x.shape().with(a, length));
  int64_t idx[kMaxRank] = {};
  for (int64_t k = 0; k < y.numel(); ++k) {
    d::unravel(k, y.shape(), idx);
    idx[a] += start;
    y.flat(k) = x.flat(d::ravel(idx, x.shape()));
  }
  return y;
}

// dx[..., start:start+g.dim(axis), ...] += g, in double.
template <FloatingDtype T>
void narrow_backward_accumulate(const Tensor<T>& dx, int axis, int64_t start, const Tensor<T>& g) {
  namespace d = detail::shape_ops;
  const int a = d::norm_axis(dx.shape(), axis, "ref::narrow_backward");
  check_same_shape(dx.shape().with(a, g.dim(a)), g.shape(), "ref::narrow_backward");
  DISTILL_CHECK(start >= 0 && start + g.dim(a) <= dx.dim(a), "ref::narrow_backward: slice out of range");
  int64_t idx[kMaxRank] = {};
  for (int64_t k = 0; k < g.numel(); ++k) {
    d::unravel(k, g.shape(), idx);
    idx[a] += start;
    T& dst = dx.flat(d::ravel(idx, dx.shape()));
    const double v = static_cast<double>(to_compute<T>(dst)) + static_cast<double>(to_compute<T>(g.flat(k)));
    dst = static_cast<T>(static_cast<compute_t<T>>(v));
  }
}

template <FloatingDtype T>
Tensor<T> transpose(const Tensor<T>& x, int a, int b) {
  namespace d = detail::shape_ops;
  a = d::norm_axis(x.shape(), a, "ref::transpose");
  b = d::norm_axis(x.shape(), b, "ref::transpose");
  Shape out = x.shape();
  std::swap(out[a], out[b]);
  auto y = Tensor<T>::empty(out);
  int64_t idx[kMaxRank] = {};
  for (int64_t k = 0; k < y.numel(); ++k) {
    d::unravel(k, out, idx);
    std::swap(idx[a], idx[b]);
    y.flat(k) = x.flat(d::ravel(idx, x.shape()));
  }
  return y;
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------
namespace cpu {

template <FloatingDtype T>
Tensor<T> concat(const std::vector<Tensor<T>>& xs, int axis) {
  namespace d = detail::shape_ops;
  std::vector<Shape> shapes;
  for (const auto& x : xs) shapes.push_back(x.shape());
  auto y = Tensor<T>::empty(d::concat_shape(shapes, axis, "concat"));
  const int a = d::norm_axis(y.shape(), axis, "concat");
  int64_t off = 0;
  for (const auto& x : xs) {
    y.slice(a, off, off + x.dim(a)).copy_from(x);
    off += x.dim(a);
  }
  return y;
}

// A contiguous copy of x[..., start:start+length, ...] along `axis`.
template <FloatingDtype T>
Tensor<T> narrow(const Tensor<T>& x, int axis, int64_t start, int64_t length) {
  const int a = detail::shape_ops::norm_axis(x.shape(), axis, "narrow");
  return x.slice(a, start, start + length).clone();
}

// dx[..., start:start+g.dim(axis), ...] += g.
template <FloatingDtype T>
void narrow_backward_accumulate(const Tensor<T>& dx, int axis, int64_t start, const Tensor<T>& g) {
  const int a = detail::shape_ops::norm_axis(dx.shape(), axis, "narrow_backward");
  check_same_shape(dx.shape().with(a, g.dim(a)), g.shape(), "narrow_backward");
  detail::shape_ops::scatter_add(dx.slice(a, start, start + g.dim(a)), g);
}

// A contiguous copy with axes a and b swapped.
template <FloatingDtype T>
Tensor<T> transpose(const Tensor<T>& x, int a, int b) {
  a = detail::shape_ops::norm_axis(x.shape(), a, "transpose");
  b = detail::shape_ops::norm_axis(x.shape(), b, "transpose");
  return x.transpose(a, b).clone();
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------
// Device-generic pieces of the Cuda branches: views plus Tensor::copy_from (strided copies on the device) and
// autograd::accumulate, so the Cuda results are the CPU's bit for bit (copies, and the same f32 additions).
namespace detail::shape_ops {

// view += src for a view (possibly strided: a slice of a gradient buffer) on Cuda. accumulate needs a
// contiguous destination, so a strided view goes through a contiguous copy and back.
template <class T>
void add_into_view(const Tensor<T, Cuda>& view, const Tensor<T, Cuda>& src) {
  check_same_shape(view.shape(), src.shape(), "scatter_add");
  if (view.numel() == 0) return;
  if (view.is_contiguous()) {
    autograd::accumulate(view, src);
    return;
  }
  const Tensor<T, Cuda> tmp = view.clone();
  autograd::accumulate(tmp, src);
  view.copy_from(tmp);
}

}  // namespace detail::shape_ops

template <FloatingDtype T, class D = Cpu>
Var<T, D> concat(const std::vector<Var<T, D>>& xs, int axis) {
  DISTILL_CHECK(!xs.empty(), "concat: needs at least one input");
  std::vector<std::shared_ptr<autograd::Node>> parents;
  for (const auto& x : xs) parents.push_back(x.node());
  if constexpr (std::is_same_v<D, Cpu>) {
    std::vector<Tensor<T>> vals;
    for (const auto& x : xs) vals.push_back(x.value());
    auto y = cpu::concat(vals, axis);
    const int a = detail::shape_ops::norm_axis(y.shape(), axis, "concat");
    return Var<T>::record("concat", y, std::move(parents), [xs, a](auto& self) {
      int64_t off = 0;
      for (const auto& x : xs) {
        if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), cpu::narrow(self.grad, a, off, x.dim(a)));
        off += x.dim(a);
      }
    });
  } else {
#ifndef DISTILL_WITH_CUDA
    static_assert(expr::dependent_false_v<D>,
                  "concat on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
    NvtxRange nvtx("concat");
    namespace d = detail::shape_ops;
    std::vector<Shape> shapes;
    for (const auto& x : xs) shapes.push_back(x.shape());
    auto y = Tensor<T, D>::empty(d::concat_shape(shapes, axis, "concat"));
    const int a = d::norm_axis(y.shape(), axis, "concat");
    int64_t off = 0;
    for (const auto& x : xs) {
      y.slice(a, off, off + x.dim(a)).copy_from(x.value());
      off += x.dim(a);
    }
    return Var<T, D>::record("concat", y, std::move(parents), [xs, a](auto& self) {
      int64_t off = 0;
      for (const auto& x : xs) {
        if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), self.grad.slice(a, off, off + x.dim(a)));
        off += x.dim(a);
      }
    });
  }
}

// Braced form, deducing T: concat({a, b}, -1).
template <FloatingDtype T, class D = Cpu>
Var<T, D> concat(std::initializer_list<Var<T, D>> xs, int axis) {
  return concat(std::vector<Var<T, D>>(xs), axis);
}

// Pieces of x along `axis` with the given extents (which must sum to x.dim(axis)).
template <FloatingDtype T, class D>
std::vector<Var<T, D>> split(const Var<T, D>& x, const std::vector<int64_t>& sizes, int axis) {
  namespace d = detail::shape_ops;
  const int a = d::norm_axis(x.shape(), axis, "split");
  int64_t total = 0;
  bool ok = true;
  for (int64_t s : sizes) {
    ok = ok && s >= 0;
    total += s;
  }
  if (!ok || total != x.dim(a))
    throw ShapeError("split: sizes " + d::list_str(sizes) + " do not split axis " + std::to_string(a) + " of " +
                     x.shape().str() + " (extent " + std::to_string(x.dim(a)) + ")");
  std::vector<Var<T, D>> out;
  int64_t off = 0;
  if constexpr (std::is_same_v<D, Cpu>) {
    for (int64_t s : sizes) {
      out.push_back(Var<T>::record("split", cpu::narrow(x.value(), a, off, s), {x.node()}, [x, a, off](auto& self) {
        if (x.requires_grad()) cpu::narrow_backward_accumulate(x.grad_buffer(), a, off, self.grad);
      }));
      off += s;
    }
  } else {
#ifndef DISTILL_WITH_CUDA
    static_assert(expr::dependent_false_v<D>,
                  "split on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
    NvtxRange nvtx("split");
    for (int64_t s : sizes) {
      auto piece = x.value().slice(a, off, off + s).clone();
      out.push_back(Var<T, D>::record("split", piece, {x.node()}, [x, a, off](auto& self) {
        if (x.requires_grad()) d::add_into_view(x.grad_buffer().slice(a, off, off + self.grad.dim(a)), self.grad);
      }));
      off += s;
    }
  }
  return out;
}

// A view of x with shape s (same number of elements).
template <FloatingDtype T, class D>
Var<T, D> reshape(const Var<T, D>& x, const Shape& s) {
  const Shape t = detail::shape_ops::resolve_reshape(x.shape(), s.begin(), s.rank(), "reshape");
  if constexpr (std::is_same_v<D, Cuda>) {
#ifndef DISTILL_WITH_CUDA
    static_assert(expr::dependent_false_v<D>,
                  "reshape on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  }  // no NVTX range: a view launches nothing (its backward is one accumulate)
  return Var<T, D>::record("reshape", x.value().reshape(t), {x.node()}, [x](auto& self) {
    if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), self.grad.contiguous().reshape(x.shape()));
  });
}
// Braced form; one extent may be -1 (inferred): reshape(x, {B, -1}).
template <FloatingDtype T, class D>
Var<T, D> reshape(const Var<T, D>& x, std::initializer_list<int64_t> dims) {
  return reshape(x,
                 detail::shape_ops::resolve_reshape(x.shape(), dims.begin(), static_cast<int>(dims.size()), "reshape"));
}

// A contiguous copy of x with axes a and b swapped.
template <FloatingDtype T, class D>
Var<T, D> transpose(const Var<T, D>& x, int a, int b) {
  a = detail::shape_ops::norm_axis(x.shape(), a, "transpose");
  b = detail::shape_ops::norm_axis(x.shape(), b, "transpose");
  if constexpr (std::is_same_v<D, Cpu>) {
    return Var<T>::record("transpose", cpu::transpose(x.value(), a, b), {x.node()}, [x, a, b](auto& self) {
      if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), cpu::transpose(self.grad, a, b));
    });
  } else {
#ifndef DISTILL_WITH_CUDA
    static_assert(expr::dependent_false_v<D>,
                  "transpose on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
    NvtxRange nvtx("transpose");
    return Var<T, D>::record("transpose", x.value().transpose(a, b).clone(), {x.node()}, [x, a, b](auto& self) {
      if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), self.grad.transpose(a, b));
    });
  }
}

}  // namespace distill
