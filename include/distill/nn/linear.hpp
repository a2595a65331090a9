// Linear<T, D>: one projection of a transformer block (nn.Linear layout [out, in], no bias), with its base
// weight either dense (a frozen Var in T) or bitsandbytes 4-bit (NF4/FP4, nn/nf4_linear.hpp), and optionally
// a trainable LoRA adapter beside it (nn/lora.hpp):
//   y = x · Wᵀ  [+ cast(B(A(dropout(f32(x))))) · scaling]
// This is what makes the model's projections pluggable: the same block code runs a bf16 teacher, an NF4
// student, or an NF4 student with adapters (QLoRA).
#pragma once
#include <memory>

#include "distill/nn/lora.hpp"
#include "distill/nn/nf4_linear.hpp"

namespace distill::nn {

template <class T, class D = Cpu>
struct Linear {
  Var<T, D> weight;                         // dense base [out, in]; undefined when quantized
  std::shared_ptr<const quant::Quant4> q4;  // 4-bit base; null when dense
  std::shared_ptr<LoraAdapter<D>> lora;     // null: no adapter

  Linear() = default;
  explicit Linear(Var<T, D> w) : weight(std::move(w)) {}
  explicit Linear(std::shared_ptr<const quant::Quant4> q) : q4(std::move(q)) {}

  bool defined() const { return weight.defined() || q4 != nullptr; }
  bool quantized() const { return q4 != nullptr; }
  int64_t out_features() const { return q4 ? q4->shape[0] : weight.dim(0); }
  int64_t in_features() const { return q4 ? q4->shape[1] : weight.dim(1); }
  Shape shape() const { return {out_features(), in_features()}; }
  // The base weight as a dense tensor in T (dequantized when 4-bit).
  Tensor<T, D> dense_weight() const { return q4 ? nf4_weight<T, D>(*q4) : weight.value(); }
};

// Options of one forward pass through the projections.
struct LinearRun {
  bool train = false;  // adapter dropout on
  uint64_t seed = 0;   // dropout stream of this projection (derive_seed per layer/projection/micro-batch)
};

// x [..., in] -> [..., out].
template <class T, class D>
Var<T, D> linear(const Var<T, D>& x, const Linear<T, D>& l, const LinearRun& run = {}) {
  DISTILL_CHECK(l.defined(), "linear: the projection has no weight");
  Var<T, D> y;
  if (l.q4) {
    y = nf4_linear(x, l.q4);
  } else {
    const Shape s = x.shape();
    y = reshape(matmul(reshape(x, {s.rows(), s.back()}), l.weight, false, true), s.with(-1, l.weight.dim(0)));
  }
  if (l.lora) y = y + l.lora->delta(x, run.train, run.seed);
  return y;
}

}  // namespace distill::nn
