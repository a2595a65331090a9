// Precompiled element-wise kernels (kernels/elementwise.cu) that host-compiled code needs on Cuda tensors:
// accumulation (autograd's dst += src), strided copies, dtype casts and fills. Arbitrary element-wise
// expressions are compiled into their own kernels instead (distill/cuda/expr.cuh, nvcc translation units).
#pragma once
#include <cstdint>

#include "distill/tensor/shape.hpp"

namespace distill::cuda {

// dst[i] += src[i] for contiguous buffers of n elements (T: f32, f64, bf16, f16), computed in compute_t<T>.
template <class T>
void add_into(T* dst, const T* src, int64_t n);

// dst = src element by element for views of the same shape with any strides (in elements), both on the
// current device. T: any storable dtype.
template <class T>
void strided_copy(T* dst, const Shape& dst_strides, const T* src, const Shape& src_strides, const Shape& shape);

// dst[i] = U(src[i]) for contiguous buffers (rounding to nearest even into the 16-bit types).
template <class T, class U>
void cast(U* dst, const T* src, int64_t n);

// dst[i] = v for a contiguous buffer.
template <class T>
void fill(T* dst, T v, int64_t n);

}  // namespace distill::cuda
