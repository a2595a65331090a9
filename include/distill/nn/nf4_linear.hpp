// nf4_linear(x, q): y = x · Wᵀ with W a frozen bitsandbytes 4-bit weight [out, in] (NF4 or FP4, double quant
// or not), as bitsandbytes' MatMul4Bit computes it: W is dequantized to its original dtype (code · absmax in
// f32, rounded to q.dtype: bf16 for a bf16 checkpoint), converted to the compute dtype T, and multiplied with
// f32 accumulation. The dequantized matrix is a temporary: it is rebuilt in backward (dx = dy · W) rather
// than kept, so a QLoRA step holds only the packed weights (0.5 byte per parameter + scales).
//
// Gradients flow to x only: the base weight is frozen (QLoRA trains adapters beside it, see nn/lora.hpp).
//
//   ref::nf4_linear   ref:: dequantization and ref::matmul (double accumulation), the truth
//   cpu               the parallel dequantizer and the Eigen GEMM of ops/matmul.hpp
//   Cuda              kernels/nf4.cu (cuda/nf4.hpp): the packed weight lives on the device (an Nf4Device,
//                     uploaded once by Linear<T, Cuda>, or per call when none is given); M <= 16 rows take
//                     the decode GEMV, more rows dequantize into scratch memory + cuBLASLt; backward dy·W
//                     the same way. Bit-identical weights, f32 accumulation.
#pragma once
#include <memory>

#include "distill/cuda/nf4.hpp"
#include "distill/nn/functional.hpp"
#include "distill/ops/matmul.hpp"
#include "distill/quant/nf4.hpp"

namespace distill::nn {

namespace detail {
inline void check_nf4_operand(const Shape& x, const quant::Quant4& q, const char* op) {
  DISTILL_CHECK(q.shape.size() == 2, op, ": the 4-bit weight must be 2-D [out, in], got rank ", q.shape.size());
  if (x.rank() < 1 || x.back() != q.shape[1])
    throw ShapeError(std::string(op) + ": input " + x.str() + " does not end in the weight's in_features " +
                     std::to_string(q.shape[1]));
}

// W in T, rounded through the checkpoint's dtype first (bitsandbytes dequantizes to quant_state.dtype).
template <class T>
Tensor<T> dequantize_as(const quant::Quant4& q, bool use_ref) {
  auto f = Tensor<float>::empty(Shape::from_range(q.shape.begin(), q.shape.end()));
  if (use_ref)
    quant::ref::dequantize_4bit(q, f.data());
  else
    quant::dequantize_4bit(q, f.data());
  if (q.dtype == io::StDtype::BF16) {
    if constexpr (std::is_same_v<T, bf16>) return f.template cast<bf16>();
    return f.template cast<bf16>().template cast<T>();
  }
  if (q.dtype == io::StDtype::F16) {
    if constexpr (std::is_same_v<T, f16>) return f.template cast<f16>();
    return f.template cast<f16>().template cast<T>();
  }
  if constexpr (std::is_same_v<T, float>) return f;
  return f.template cast<T>();
}
// a · op(b) on a's device.
template <class T, class D>
Tensor<T, D> mm(const Tensor<T, D>& a, const Tensor<T, D>& b, bool trans_b) {
  if constexpr (std::is_same_v<D, Cpu>) {
    return cpu::matmul(a, b, false, trans_b);
  } else {
#ifdef DISTILL_WITH_CUDA
    return cuda::matmul(a, b, false, trans_b);
#else
    static_assert(expr::dependent_false_v<T>, "nf4_linear on Cuda needs the CUDA kernels (distill::kernels)");
#endif
  }
}
}  // namespace detail

namespace ref {
// x [..., in] -> [..., out], plain loops.
template <FloatingDtype T>
Tensor<T> nf4_linear(const Tensor<T>& x, const quant::Quant4& q) {
  detail::check_nf4_operand(x.shape(), q, "ref::nf4_linear");
  const Tensor<T> w = detail::dequantize_as<T>(q, true);
  const Shape s = x.shape();
  return distill::ref::matmul(x.contiguous().reshape({s.rows(), s.back()}), w, false, true)
      .reshape(s.with(-1, q.shape[0]));
}
}  // namespace ref

// The dequantized weight on device D (on Cuda from the device copy `dev` when given).
template <class T, class D>
Tensor<T, D> nf4_weight(const quant::Quant4& q, const std::shared_ptr<const cuda::Nf4Device>& dev = nullptr) {
  if constexpr (std::is_same_v<D, Cpu>) {
    return detail::dequantize_as<T>(q, false);
  } else {
    if constexpr (!std::is_same_v<T, double>)
      if (dev) return cuda::nf4_dequantize<T>(*dev);
    return detail::dequantize_as<T>(q, false).template to<D>();
  }
}

namespace detail {
// y = x2 · Wᵀ (x2 [M, in] contiguous) and dx = g · W on device D.
template <class T, class D>
Tensor<T, D> nf4_forward(const Tensor<T, D>& x2, const quant::Quant4& q, const cuda::Nf4Device* dev) {
  if constexpr (std::is_same_v<D, Cuda> && !std::is_same_v<T, double>)
    return cuda::nf4_matmul(x2, *dev);
  else
    return mm(x2, nf4_weight<T, D>(q), true);
}
template <class T, class D>
Tensor<T, D> nf4_backward(const Tensor<T, D>& g, const quant::Quant4& q, const cuda::Nf4Device* dev) {
  if constexpr (std::is_same_v<D, Cuda> && !std::is_same_v<T, double>)
    return cuda::nf4_matmul_dx(g, *dev);
  else
    return mm(g, nf4_weight<T, D>(q), false);
}
}  // namespace detail

// x [..., in] -> [..., out]; `q` is shared so the tape keeps the packed weight, not a dequantized copy. On Cuda
// `dev` is the weight's device copy (Linear<T, Cuda> holds one); without it the weight is uploaded for this
// call (and its backward).
template <FloatingDtype T, class D>
Var<T, D> nf4_linear(const Var<T, D>& x, std::shared_ptr<const quant::Quant4> q,
                     std::shared_ptr<const cuda::Nf4Device> dev = nullptr) {
  DISTILL_CHECK(q != nullptr, "nf4_linear: no weight");
  detail::check_nf4_operand(x.shape(), *q, "nf4_linear");
  if constexpr (std::is_same_v<D, Cuda> && !std::is_same_v<T, double>)
    if (!dev) dev = cuda::upload_nf4(*q);
  const Shape s = x.shape();
  const int64_t out = q->shape[0];
  const Tensor<T, D> y = detail::nf4_forward(x.value().contiguous().reshape({s.rows(), s.back()}), *q, dev.get());
  return Var<T, D>::record("nf4_linear", y.reshape(s.with(-1, out)), {x.node()}, [x, q, dev, s](auto& self) {
    if (!x.requires_grad()) return;
    const Tensor<T, D> g = self.grad.contiguous().reshape({s.rows(), q->shape[0]});
    autograd::accumulate(x.grad_buffer(), detail::nf4_backward(g, *q, dev.get()).reshape(s));
  });
}

}  // namespace distill::nn
