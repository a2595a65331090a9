// Shape: a small fixed-capacity list of extents (rank <= kMaxRank), a value type.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "distill/core/error.hpp"

namespace distill {

inline constexpr int kMaxRank = 8;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) {
    DISTILL_CHECK(dims.size() <= kMaxRank, "rank ", dims.size(), " exceeds the maximum of ", kMaxRank);
    for (int64_t d : dims) push_back(d);
  }
  template <class It>
  static Shape from_range(It first, It last) {
    Shape s;
    for (; first != last; ++first) s.push_back(static_cast<int64_t>(*first));
    return s;
  }

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return d_[static_cast<size_t>(i)]; }
  int64_t& operator[](int i) { return d_[static_cast<size_t>(i)]; }
  // Negative indices count from the back, as in PyTorch.
  int64_t dim(int i) const { return d_[static_cast<size_t>(normalize(i))]; }
  int normalize(int i) const {
    const int j = i < 0 ? i + rank_ : i;
    DISTILL_CHECK(j >= 0 && j < rank_, "dimension ", i, " is out of range for a rank-", rank_, " shape");
    return j;
  }
  int64_t back() const { return rank_ ? d_[static_cast<size_t>(rank_ - 1)] : 1; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= d_[static_cast<size_t>(i)];
    return n;
  }
  // Product of all extents but the last (the number of "rows").
  int64_t rows() const { return rank_ ? numel() / (back() ? back() : 1) : 1; }
  void push_back(int64_t d) {
    DISTILL_CHECK(rank_ < kMaxRank, "rank exceeds the maximum of ", kMaxRank);
    DISTILL_CHECK(d >= 0, "negative extent ", d);
    d_[static_cast<size_t>(rank_++)] = d;
  }
  Shape without(int i) const {
    i = normalize(i);
    Shape s;
    for (int k = 0; k < rank_; ++k)
      if (k != i) s.push_back(d_[static_cast<size_t>(k)]);
    return s;
  }
  Shape with(int i, int64_t v) const {
    Shape s = *this;
    s[normalize(i)] = v;
    return s;
  }
  const int64_t* begin() const { return d_.data(); }
  const int64_t* end() const { return d_.data() + rank_; }

  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.d_[static_cast<size_t>(i)] != b.d_[static_cast<size_t>(i)]) return false;
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(d_[static_cast<size_t>(i)]);
    return s + "]";
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

 private:
  std::array<int64_t, kMaxRank> d_{};
  int rank_ = 0;
};

// Row-major (C-order) strides for a shape, in elements.
inline Shape contiguous_strides(const Shape& s) {
  Shape st = s;
  int64_t acc = 1;
  for (int i = s.rank() - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

// NumPy broadcasting of two shapes; throws ShapeError naming the op and both shapes.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const int r = a.rank() > b.rank() ? a.rank() : b.rank();
  Shape out;
  for (int i = 0; i < r; ++i) {
    const int ia = i - (r - a.rank()), ib = i - (r - b.rank());
    const int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1)
      throw ShapeError(std::string(op) + ": shapes " + a.str() + " and " + b.str() + " do not broadcast");
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

// Throws ShapeError unless a == b, naming the op and both shapes.
inline void check_same_shape(const Shape& a, const Shape& b, const char* op) {
  if (a != b) throw ShapeError(std::string(op) + ": shape mismatch " + a.str() + " vs " + b.str());
}

}  // namespace distill
