// Tensor<T, Device>: a strided view over shared, owning storage.
// Views (slice, transpose, reshape of contiguous data) share storage with their source; `contiguous()`
// and `clone()` copy. Element access is host-only (Cpu); copies, casts and fills run on either device.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/cuda/elementwise.hpp"  // device copies, casts and fills (defined in kernels/)
#include "distill/tensor/shape.hpp"
#include "distill/tensor/storage.hpp"

namespace distill {

namespace detail {
// double -> float rounding to odd (truncate, then set the last bit if anything was dropped). A following
// float -> bf16/f16 round-to-nearest-even then gives the correctly rounded double -> 16-bit result,
// which double -> float (RNE) -> 16-bit (RNE) does not (double rounding).
inline float f64_to_f32_round_to_odd(double x) {
  float f = static_cast<float>(x);
  if (!std::isfinite(x) || static_cast<double>(f) == x) return f;
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if (std::abs(static_cast<double>(f)) > std::abs(x)) --b;  // rounded away from zero: step back (truncate)
  b |= 1u;
  std::memcpy(&f, &b, 4);
  return f;
}
}  // namespace detail

template <class T, class D = Cpu>
class Tensor {
  static_assert(StorableDtype<T>, "Tensor element type must be f32, f64, bf16, f16, i32, i64 or u8");
  static_assert(DeviceTag<D>, "Tensor device must be distill::Cpu or distill::Cuda");

 public:
  using value_type = T;
  using device_type = D;

  Tensor() = default;

  // Uninitialized contiguous tensor.
  static Tensor empty(const Shape& shape) {
    Tensor t;
    t.storage_ = std::make_shared<Storage<T, D>>(static_cast<size_t>(shape.numel()));
    t.data_ = t.storage_->data();
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    return t;
  }
  static Tensor zeros(const Shape& shape) {
    Tensor t = empty(shape);
    t.zero_();
    return t;
  }
  static Tensor full(const Shape& shape, T v) {
    Tensor t = empty(shape);
    if constexpr (std::is_same_v<D, Cpu>)
      std::fill_n(t.data_, shape.numel(), v);
    else
      cuda::fill(t.data_, v, shape.numel());
    return t;
  }
  static Tensor from_vector(const Shape& shape, const std::vector<T>& v) {
    static_assert(std::is_same_v<D, Cpu>, "from_vector() builds on the host; copy with to<Cuda>()");
    DISTILL_CHECK(static_cast<int64_t>(v.size()) == shape.numel(), "from_vector: ", v.size(), " values for shape ",
                  shape.str(), " (", shape.numel(), " elements)");
    Tensor t = empty(shape);
    std::copy(v.begin(), v.end(), t.data_);
    return t;
  }
  // Uniform random values in [lo, hi) from a seeded generator (tests, benchmarks, init).
  // On Cuda: the same values as on Cpu (drawn on the host, then copied).
  static Tensor uniform(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
    static_assert(is_floating_dtype_v<T>, "uniform() needs a floating dtype");
    if constexpr (std::is_same_v<D, Cuda>) return Tensor<T, Cpu>::uniform(shape, seed, lo, hi).template to<Cuda>();
    Tensor t = empty(shape);
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<double> u(lo, hi);
    for (int64_t i = 0; i < shape.numel(); ++i) t.data_[i] = static_cast<T>(u(g));
    return t;
  }

  bool defined() const { return storage_ != nullptr; }
  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int i) const { return shape_.dim(i); }
  int64_t numel() const { return shape_.numel(); }
  int64_t stride(int i) const { return strides_[shape_.normalize(i)]; }
  const std::shared_ptr<Storage<T, D>>& storage() const { return storage_; }

  bool is_contiguous() const {
    int64_t acc = 1;
    for (int i = rank() - 1; i >= 0; --i) {
      if (shape_[i] != 1 && strides_[i] != acc) return false;
      acc *= shape_[i];
    }
    return true;
  }

  // Host element access by multi-index.
  template <class... I>
  T& operator()(I... idx) const {
    static_assert(std::is_same_v<D, Cpu>, "element access is host-only; copy to Cpu first");
    DISTILL_CHECK(static_cast<int>(sizeof...(I)) == rank(), "indexing a rank-", rank(), " tensor with ", sizeof...(I),
                  " indices");
    int64_t off = 0, k = 0;
    ((off += static_cast<int64_t>(idx) * strides_[static_cast<int>(k++)]), ...);
    return data_[off];
  }
  // Host element access by flat (row-major logical) index; works for non-contiguous views.
  T& flat(int64_t i) const {
    static_assert(std::is_same_v<D, Cpu>, "element access is host-only; copy to Cpu first");
    int64_t off = 0;
    for (int d = rank() - 1; d >= 0; --d) {
      off += (i % shape_[d]) * strides_[d];
      i /= shape_[d];
    }
    return data_[off];
  }

  // --- views -------------------------------------------------------------------------------------
  // Elements [start, stop) of dimension `d`.
  Tensor slice(int d, int64_t start, int64_t stop) const {
    d = shape_.normalize(d);
    DISTILL_CHECK(0 <= start && start <= stop && stop <= shape_[d], "slice [", start, ", ", stop,
                  ") out of range for dimension ", d, " of shape ", shape_.str());
    Tensor t = *this;
    t.data_ = data_ + start * strides_[d];
    t.shape_[d] = stop - start;
    return t;
  }
  Tensor transpose(int a, int b) const {
    a = shape_.normalize(a);
    b = shape_.normalize(b);
    Tensor t = *this;
    std::swap(t.shape_[a], t.shape_[b]);
    std::swap(t.strides_[a], t.strides_[b]);
    return t;
  }
  // Reshape of contiguous data; in the braced form one extent may be -1 (inferred).
  Tensor reshape(const Shape& s) const { return reshape_impl(s.begin(), s.rank()); }
  Tensor reshape(std::initializer_list<int64_t> dims) const {
    return reshape_impl(dims.begin(), static_cast<int>(dims.size()));
  }

  // --- copies ------------------------------------------------------------------------------------
  Tensor contiguous() const { return is_contiguous() ? *this : clone(); }
  Tensor clone() const {
    Tensor t = empty(shape_);
    t.copy_from(*this);
    return t;
  }
  // Element-wise copy from a tensor of the same shape (any strides).
  void copy_from(const Tensor& src) const {
    check_same_shape(shape_, src.shape_, "copy_from");
    if constexpr (std::is_same_v<D, Cpu>) {
      if (numel() == 0) return;
      if (is_contiguous() && src.is_contiguous()) {
        std::copy_n(src.data_, numel(), data_);
        return;
      }
      // Strided views: row by row along the last axis (one index computation per row, not per element),
      // rows split across threads. This is what contiguous() and clone() of a view cost.
      const int R = rank();
      const int64_t n = R ? shape_[R - 1] : 1, ds = R ? strides_[R - 1] : 1, ss = R ? src.strides_[R - 1] : 1;
      parallel_for(numel() / n, std::max<int64_t>(1, (int64_t{1} << 14) / n), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          int64_t rem = r, doff = 0, soff = 0;
          for (int i = R - 2; i >= 0; --i) {
            const int64_t k = rem % shape_[i];
            rem /= shape_[i];
            doff += k * strides_[i];
            soff += k * src.strides_[i];
          }
          T* d = data_ + doff;
          const T* sp = src.data_ + soff;
          if (ds == 1 && ss == 1)
            std::copy_n(sp, n, d);
          else
            for (int64_t j = 0; j < n; ++j) d[j * ds] = sp[j * ss];
        }
      });
    } else {
      if (numel() == 0) return;
      if (is_contiguous() && src.is_contiguous())
        cuda::memcpy_device_to_device(data_, src.data_, sizeof(T) * static_cast<size_t>(numel()));
      else
        cuda::strided_copy(data_, strides_, src.data_, src.strides_, shape_);
    }
  }
  void zero_() const {
    if (numel() == 0) return;
    if constexpr (std::is_same_v<D, Cpu>) {
      if (is_contiguous())
        std::memset(static_cast<void*>(data_), 0, sizeof(T) * static_cast<size_t>(numel()));
      else
        for (int64_t i = 0; i < numel(); ++i) flat(i) = T(0);
    } else {
      if (is_contiguous())
        cuda::memset_device_zero(data_, sizeof(T) * static_cast<size_t>(numel()));
      else
        copy_from(Tensor::zeros(shape_));
    }
  }
  void fill_(T v) const {
    if constexpr (std::is_same_v<D, Cpu>) {
      for (int64_t i = 0; i < numel(); ++i) flat(i) = v;
    } else {
      if (is_contiguous())
        cuda::fill(data_, v, numel());
      else
        copy_from(Tensor::full(shape_, v));
    }
  }
  // Host <-> device copy (contiguous result).
  template <class D2>
  Tensor<T, D2> to() const {
    if constexpr (std::is_same_v<D, D2>) {
      return *this;
    } else {
      Tensor src = contiguous();
      auto dst = Tensor<T, D2>::empty(shape_);
      const size_t bytes = sizeof(T) * static_cast<size_t>(numel());
      if constexpr (std::is_same_v<D2, Cuda>)
        cuda::memcpy_host_to_device(dst.data(), src.data_, bytes);
      else
        cuda::memcpy_device_to_host(dst.data(), src.data_, bytes);
      return dst;
    }
  }
  // dtype cast, rounding to nearest even for the 16-bit types (f64 -> 16-bit rounds once, exactly), on
  // the tensor's device.
  template <class U>
  Tensor<U, D> cast() const {
    auto out = Tensor<U, D>::empty(shape_);
    if constexpr (std::is_same_v<D, Cuda>) {
      const Tensor src = contiguous();
      cuda::cast<T, U>(out.data(), src.data_, numel());
    } else {
      for (int64_t i = 0; i < numel(); ++i) {
        if constexpr (std::is_same_v<T, double> && (std::is_same_v<U, bf16> || std::is_same_v<U, f16>))
          out.data()[i] = static_cast<U>(detail::f64_to_f32_round_to_odd(flat(i)));  // then RNE: exact
        else
          out.data()[i] = static_cast<U>(static_cast<compute_t<U>>(to_compute<T>(flat(i))));
      }
    }
    return out;
  }
  std::vector<T> to_vector() const {
    static_assert(std::is_same_v<D, Cpu>, "to_vector is host-only; copy to Cpu first");
    std::vector<T> v(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) v[static_cast<size_t>(i)] = flat(i);
    return v;
  }

 private:
  Tensor reshape_impl(const int64_t* dims, int n) const {
    DISTILL_CHECK(is_contiguous(), "reshape needs contiguous data (shape ", shape_.str(), "); call contiguous() first");
    DISTILL_CHECK(n <= kMaxRank, "reshape: rank ", n, " exceeds the maximum of ", kMaxRank);
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < n; ++i) {
      if (dims[i] == -1) {
        DISTILL_CHECK(infer < 0, "reshape: at most one -1 extent");
        infer = i;
      } else {
        DISTILL_CHECK(dims[i] >= 0, "reshape: negative extent ", dims[i]);
        known *= dims[i];
      }
    }
    Shape s;
    for (int i = 0; i < n; ++i) {
      int64_t d = dims[i];
      if (i == infer) {
        DISTILL_CHECK(known > 0 && numel() % known == 0, "reshape: cannot infer -1 for ", shape_.str());
        d = numel() / known;
      }
      s.push_back(d);
    }
    if (s.numel() != numel())
      throw ShapeError("reshape: " + shape_.str() + " has " + std::to_string(numel()) + " elements, " + s.str() +
                       " has " + std::to_string(s.numel()));
    Tensor t = *this;
    t.shape_ = s;
    t.strides_ = contiguous_strides(s);
    return t;
  }

  template <class, class>
  friend class Tensor;
  std::shared_ptr<Storage<T, D>> storage_;
  T* data_ = nullptr;
  Shape shape_;
  Shape strides_;
};

}  // namespace distill
