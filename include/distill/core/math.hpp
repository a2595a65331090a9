// Branch-free float math that the compiler can vectorize inside fused element-wise loops (std::exp is
// an opaque libm call and keeps the loop scalar). Cephes-style range reduction and polynomial, the
// same scheme as Eigen's pexp and ggml's: relative error within a few ulp of std::exp over the whole
// range; overflow gives +inf, underflow 0, NaN stays NaN. double uses the standard library.
// In CUDA device code every function maps to the CUDA math library (expf, tanhf, ...): the GPU has
// no vectorizer to please, and those are within 2 ulp.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "distill/core/config.hpp"

namespace distill::math {

DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE float exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  // Clamp so that 2^n below spans [2^-150, 2^128]: past the ends the product itself rounds to 0 or
  // overflows to +inf, with no data-dependent select (a select on a float compare keeps GCC from
  // vectorizing under the default -ftrapping-math). min/max-style clamps keep NaN.
  const float hi = 89.0f, lo = -104.0f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  // n = round(x / ln 2) with the 1.5 * 2^23 trick: no float->int conversion (which may trap and so keeps
  // GCC from vectorizing without -fno-trapping-math); n sits in the low mantissa bits.
  const float magic = 12582912.0f;
  const float shifted = xc * 1.44269504088896341f + magic;
  uint32_t sb;
  std::memcpy(&sb, &shifted, 4);
  const int32_t n = static_cast<int32_t>(sb - 0x4B400000u);
  const float fn = shifted - magic;
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  // 2^n as a float; n in [-150, 128]: split in two normal factors 2^n1 * 2^n2.
  const int32_t n1 = n >> 1, n2 = n - n1;
  uint32_t b1 = static_cast<uint32_t>(n1 + 127) << 23, b2 = static_cast<uint32_t>(n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  float y = p * s1 * s2;
  return y;
#endif
}
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE double exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// tanh as an odd rational function on [-7.9, 7.9] (beyond it tanh is 1 in float): the minimax
// approximation Eigen uses for its vectorized float tanh. No exp, no cancellation near 0.
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE float tanh(float x0) {
#if defined(__CUDA_ARCH__)
  return ::tanhf(x0);
#else
  const float c = 7.90531110763549805f;
  float x = x0 > c ? c : x0;
  x = x < -c ? -c : x;
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const float r = p / q;
  // Past |x| = 9, tanh(x) rounds to +-1 in float; say so exactly whatever the compiler contracted.
  return x0 > 9.0f ? 1.0f : (x0 < -9.0f ? -1.0f : r);
#endif
}
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE double tanh(double x) {
#if defined(__CUDA_ARCH__)
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}

// log and sqrt: the standard library on the host, the CUDA math library on the device.
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE float log(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  return std::log(x);
#endif
}
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE double log(double x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE float sqrt(float x) {
#if defined(__CUDA_ARCH__)
  return ::sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
DISTILL_ALWAYS_INLINE DISTILL_HOST_DEVICE double sqrt(double x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

}  // namespace distill::math
