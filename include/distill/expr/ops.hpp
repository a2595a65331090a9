// Op tags: every element-wise op's forward rule and local derivative, in one table (as tinygrad keeps
// its gradient rules together). Unary: f(x), df(x, y) = dy/dx given x and y = f(x).
// Binary: f(a, b), da(a, b, y) = dy/da, db(a, b, y) = dy/db. All in the compute type C (f32 or f64).
// exp and tanh go through math:: so that fused f32 loops vectorize; every rule is __host__ __device__ so
// that the CUDA backend compiles the same table into its generated kernels.
#pragma once
#include <cmath>

#include "distill/core/math.hpp"

namespace distill::op {

struct Neg {
  static constexpr const char* name = "neg";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return -x;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C, C) {
    return C(-1);
  }
};
struct Exp {
  static constexpr const char* name = "exp";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return math::exp(x);
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C, C y) {
    return y;
  }
};
struct Log {
  static constexpr const char* name = "log";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return math::log(x);
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C x, C) {
    return C(1) / x;
  }
};
struct Tanh {
  static constexpr const char* name = "tanh";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return math::tanh(x);
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C, C y) {
    return C(1) - y * y;
  }
};
struct Sigmoid {
  static constexpr const char* name = "sigmoid";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return C(1) / (C(1) + math::exp(-x));
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C, C y) {
    return y * (C(1) - y);
  }
};
// silu(x) = x * sigmoid(x)  (SwiGLU's activation in Qwen3)
struct Silu {
  static constexpr const char* name = "silu";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return x / (C(1) + math::exp(-x));
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C x, C) {
    const C s = C(1) / (C(1) + math::exp(-x));
    return s * (C(1) + x * (C(1) - s));
  }
};
// gelu with the tanh approximation (PyTorch approximate="tanh", Gemma3's gelu_pytorch_tanh):
// 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). Evaluated as x * sigmoid(2u), the same
// function without the cancellation of 1 + tanh(u) for negative x (and without a tanh).
struct GeluTanh {
  static constexpr const char* name = "gelu_tanh";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    const C k = C(0.7978845608028654);
    const C u = k * (x + C(0.044715) * x * x * x);
    return x / (C(1) + math::exp(C(-2) * u));
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C x, C) {
    const C k = C(0.7978845608028654);
    const C u = k * (x + C(0.044715) * x * x * x);
    const C s = C(1) / (C(1) + math::exp(C(-2) * u));
    return s + x * s * (C(1) - s) * C(2) * k * (C(1) + C(3 * 0.044715) * x * x);
  }
};
struct Rsqrt {
  static constexpr const char* name = "rsqrt";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return C(1) / math::sqrt(x);
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C, C y) {
    return C(-0.5) * y * y * y;
  }
};
struct Square {
  static constexpr const char* name = "square";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C x) {
    return x * x;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C df(C x, C) {
    return C(2) * x;
  }
};

struct Add {
  static constexpr const char* name = "add";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C a, C b) {
    return a + b;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C da(C, C, C) {
    return C(1);
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C db(C, C, C) {
    return C(1);
  }
};
struct Sub {
  static constexpr const char* name = "sub";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C a, C b) {
    return a - b;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C da(C, C, C) {
    return C(1);
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C db(C, C, C) {
    return C(-1);
  }
};
struct Mul {
  static constexpr const char* name = "mul";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C a, C b) {
    return a * b;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C da(C, C b, C) {
    return b;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C db(C a, C, C) {
    return a;
  }
};
struct Div {
  static constexpr const char* name = "div";
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C f(C a, C b) {
    return a / b;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C da(C, C b, C) {
    return C(1) / b;
  }
  template <class C>
  DISTILL_FORCEINLINE DISTILL_HOST_DEVICE static C db(C, C b, C y) {
    return -y / b;
  }
};

}  // namespace distill::op
