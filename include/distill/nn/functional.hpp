// Small recorded ops the layers need: a dtype cast that gradients pass through, and dropout with a
// counter-based mask (the same seed gives the same mask, so activation checkpointing recomputes it exactly
// and a resumed run draws what the uninterrupted one drew).
//
//   cast<U>(x)                 value rounded to U (RNE for 16-bit); backward casts the gradient back to T
//   dropout(x, p, seed)        x * keep / (1 - p), keep[i] = hash(seed, i) >= p; identity for p = 0
//
// Dropout masks are not torch's (torch's generator is not reproducible outside torch): the distribution is
// the same (Bernoulli(1 - p) per element, scaled by 1 / (1 - p)), the draws are not.
#pragma once
#include <cstdint>

#include "distill/autograd/var.hpp"

namespace distill::nn {

// splitmix64 finalizer: a well-mixed 64-bit hash of a 64-bit counter.
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// A seed derived from a parent seed and a tag (layer, projection, micro-batch, ...).
inline uint64_t derive_seed(uint64_t seed, uint64_t tag) { return mix64(seed ^ mix64(tag + 0x632BE59BD9B4E019ull)); }
// Uniform in [0, 1) with 24 bits, from element i of the stream `seed`.
inline float uniform01(uint64_t seed, uint64_t i) {
  return static_cast<float>(mix64(seed + i * 0xD1B54A32D192ED03ull) >> 40) * 0x1.0p-24f;
}
// Whether dropout with probability p keeps element i of the mask stream `seed` (every dropout path uses this).
inline bool dropout_keeps(uint64_t seed, uint64_t i, double p) { return uniform01(seed, i) >= static_cast<float>(p); }

// Cast with gradient: y = U(x); dx = T(dy).
template <class U, class T, class D>
Var<U, D> cast(const Var<T, D>& x) {
  if constexpr (std::is_same_v<U, T>) {
    return x;
  } else {
    return Var<U, D>::record("cast", x.value().template cast<U>(), {x.node()}, [x](auto& self) {
      if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), self.grad.template cast<T>());
    });
  }
}

namespace ref {
// The dropout mask scaled by 1 / (1 - p), as a tensor of x's shape (host).
template <class T>
Tensor<T> dropout_mask(const Shape& s, double p, uint64_t seed) {
  auto m = Tensor<T>::empty(s);
  const auto keep_scale = static_cast<compute_t<T>>(1.0 / (1.0 - p));
  for (int64_t i = 0; i < m.numel(); ++i)
    m.data()[i] = dropout_keeps(seed, static_cast<uint64_t>(i), p) ? from_compute<T>(keep_scale) : from_compute<T>(0);
  return m;
}
}  // namespace ref

template <class T, class D>
Var<T, D> dropout(const Var<T, D>& x, double p, uint64_t seed) {
  DISTILL_CHECK(p >= 0 && p < 1, "dropout: probability must be in [0, 1), got ", p);
  if (p == 0) return x;
  Tensor<T, D> mask;
  if constexpr (std::is_same_v<D, Cpu>)
    mask = ref::dropout_mask<T>(x.shape(), p, seed);
  else
    mask = ref::dropout_mask<T>(x.shape(), p, seed).template to<D>();
  return x * Var<T, D>(mask, false);
}

}  // namespace distill::nn
