// Element types: f32, f64 (for gradient checks), bf16 and f16 (Eigen's bfloat16/half on the host,
// round-to-nearest-even, NaN/Inf preserved). Every floating dtype computes in `compute_t<T>`:
// float for the 16-bit types, itself otherwise.
#pragma once
#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

#include "distill/core/config.hpp"

namespace distill {

using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;

template <class T>
inline constexpr bool is_floating_dtype_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// The dtypes an element-wise expression or differentiable op may hold.
template <class T>
concept FloatingDtype = is_floating_dtype_v<T>;

// Anything a Tensor may store (floating dtypes, plus integer ids and masks).
template <class T>
concept StorableDtype =
    is_floating_dtype_v<T> || std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t> || std::is_same_v<T, uint8_t>;

template <class T>
struct dtype_traits;
template <>
struct dtype_traits<float> {
  using compute_t = float;
  static constexpr const char* name = "f32";
};
template <>
struct dtype_traits<double> {
  using compute_t = double;
  static constexpr const char* name = "f64";
};
template <>
struct dtype_traits<bf16> {
  using compute_t = float;
  static constexpr const char* name = "bf16";
};
template <>
struct dtype_traits<f16> {
  using compute_t = float;
  static constexpr const char* name = "f16";
};
template <>
struct dtype_traits<int32_t> {
  using compute_t = int32_t;
  static constexpr const char* name = "i32";
};
template <>
struct dtype_traits<int64_t> {
  using compute_t = int64_t;
  static constexpr const char* name = "i64";
};
template <>
struct dtype_traits<uint8_t> {
  using compute_t = uint8_t;
  static constexpr const char* name = "u8";
};

template <class T>
using compute_t = typename dtype_traits<T>::compute_t;

template <class T>
inline constexpr const char* dtype_name_v = dtype_traits<T>::name;

// Conversions through the compute type. Eigen's float->bfloat16/half conversions round to nearest even
// and keep NaN (as a quiet NaN) and +-Inf.
template <class T>
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE compute_t<T> to_compute(T x) {
  return static_cast<compute_t<T>>(x);
}
template <class T>
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE T from_compute(compute_t<T> x) {
  return static_cast<T>(x);
}

// Raw bit access for tests and serialization.
inline uint16_t bits_of(bf16 x) { return Eigen::numext::bit_cast<uint16_t>(x); }
inline uint16_t bits_of(f16 x) { return Eigen::numext::bit_cast<uint16_t>(x); }
inline bf16 bf16_from_bits(uint16_t b) { return Eigen::numext::bit_cast<bf16>(b); }
inline f16 f16_from_bits(uint16_t b) { return Eigen::numext::bit_cast<f16>(b); }

}  // namespace distill
