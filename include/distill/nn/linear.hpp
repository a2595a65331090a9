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
  Var<T, D> weight;                               // dense base [out, in]; undefined when quantized
  std::shared_ptr<const quant::Quant4> q4;        // 4-bit base; null when dense (the host copy: saved, exported)
  std::shared_ptr<const cuda::Nf4Device> q4_dev;  // on Cuda: q4 uploaded once (kernels/nf4.cu reads it)
  std::shared_ptr<LoraAdapter<D>> lora;           // null: no adapter

  Linear() = default;
  explicit Linear(Var<T, D> w) : weight(std::move(w)) {}
  explicit Linear(std::shared_ptr<const quant::Quant4> q) : q4(std::move(q)) {
    if constexpr (std::is_same_v<D, Cuda> && !std::is_same_v<T, double>)
      if (q4) q4_dev = cuda::upload_nf4(*q4);
  }

  bool defined() const { return weight.defined() || q4 != nullptr; }
  bool quantized() const { return q4 != nullptr; }
  int64_t out_features() const { return q4 ? q4->shape[0] : weight.dim(0); }
  int64_t in_features() const { return q4 ? q4->shape[1] : weight.dim(1); }
  Shape shape() const { return {out_features(), in_features()}; }
  // The base weight as a dense tensor in T (dequantized when 4-bit).
  Tensor<T, D> dense_weight() const { return q4 ? nf4_weight<T, D>(*q4, q4_dev) : weight.value(); }
};

// Options of one forward pass through the projections.
struct LinearRun {
  bool train = false;  // adapter dropout on
  uint64_t seed = 0;   // dropout stream of this projection (derive_seed per layer/projection/micro-batch)
};

namespace cpu {

// A frozen base (dense or 4-bit) plus its LoRA adapter as ONE recorded op, y = x·Wᵀ + s·(B(A(drop(x)))):
// the forward adds the adapter's product into the base output (one rounding to T, as PEFT's
// `result + lora_out * scaling` upcast then cast back) and keeps only h = drop(x)·Aᵀ [N, r]; the dropout mask is
// recomputed from its seed. The composed graph (nf4_linear/matmul + LoraAdapter::delta + add) keeps three
// [N, out] tensors per projection and makes four more passes over them.
template <class T>
Var<T> lora_linear(const Var<T>& x, const Linear<T>& l, const LinearRun& run) {
  const LoraAdapter<Cpu>& ad = *l.lora;
  const Shape s = x.shape();
  const int64_t N = s.rows(), in = l.in_features(), out = l.out_features(), r = ad.rank();
  DISTILL_CHECK(s.back() == in, "linear: input ", s.str(), " does not end in in_features ", in);
  const double p = run.train ? ad.dropout : 0.0;
  const float scale = static_cast<float>(ad.scaling), keep = static_cast<float>(1.0 / (1.0 - p));
  const uint64_t seed = run.seed;
  const Tensor<T> X = x.value().contiguous().reshape({N, in});
  // f32(drop(x)) [N, in]: the input itself when T = f32 and no dropout.
  auto dropped = [X, p, keep, seed, N, in]() -> Tensor<float> {
    if constexpr (std::is_same_v<T, float>)
      if (p == 0) return X;
    auto xf = Tensor<float>::empty({N, in});
    const T* src = X.data();
    float* dst = xf.data();
    parallel_for(N * in, int64_t{1} << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float v = static_cast<float>(to_compute<T>(src[i]));
        dst[i] = p == 0 ? v : (dropout_keeps(seed, static_cast<uint64_t>(i), p) ? v * keep : 0.f);
      }
    });
    return xf;
  };
  const Tensor<float> xd = dropped();
  auto h = std::make_shared<Tensor<float>>(Tensor<float>::empty({N, r}));
  distill::detail::gemm_block(xd.data(), false, ad.A.value().data(), true, h->data(), N, r, in, false);
  auto t = Tensor<float>::empty({N, out});
  distill::detail::gemm_block(h->data(), false, ad.B.value().data(), true, t.data(), N, out, r, false);
  Tensor<T> y = distill::cpu::matmul(X, l.dense_weight(), false, true);
  {
    T* yp = y.data();
    const float* tp = t.data();
    parallel_for(N * out, int64_t{1} << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float lo = tp[i] * scale;
        yp[i] = from_compute<T>(static_cast<compute_t<T>>(static_cast<float>(to_compute<T>(yp[i])) + lo));
      }
    });
  }
  const Var<float> A = ad.A, B = ad.B;
  return Var<T>::record(
      "lora_linear", y.reshape(s.with(-1, out)), {x.node(), A.node(), B.node()},
      [x, l, A, B, h, X, dropped, scale, s, N, in, out, r, p, keep, seed](auto& self) {
        const Tensor<T> G = self.grad.contiguous().reshape({N, out});
        auto gs = Tensor<float>::empty({N, out});  // s·dy in f32 (PEFT scales the adapter output)
        parallel_for(N * out, int64_t{1} << 15, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) gs.data()[i] = static_cast<float>(to_compute<T>(G.data()[i])) * scale;
        });
        if (B.requires_grad()) {
          auto dB = Tensor<float>::empty({out, r});
          distill::detail::gemm_block(gs.data(), true, h->data(), false, dB.data(), out, r, N, false);
          autograd::accumulate(B.grad_buffer(), dB);
        }
        auto gB = Tensor<float>::empty({N, r});
        distill::detail::gemm_block(gs.data(), false, B.value().data(), false, gB.data(), N, r, out, false);
        if (A.requires_grad()) {
          const Tensor<float> xd = dropped();
          auto dA = Tensor<float>::empty({r, in});
          distill::detail::gemm_block(gB.data(), true, xd.data(), false, dA.data(), r, in, N, false);
          autograd::accumulate(A.grad_buffer(), dA);
        }
        if (x.requires_grad()) {
          auto dl = Tensor<float>::empty({N, in});  // through the adapter: (gB·A) ⊙ mask
          distill::detail::gemm_block(gB.data(), false, A.value().data(), false, dl.data(), N, in, r, false);
          Tensor<T> dx = distill::cpu::matmul(G, l.dense_weight(), false, false);
          parallel_for(N * in, int64_t{1} << 15, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
              float v = dl.data()[i];
              if (p > 0)  // the same mask as the forward, from its seed
                v = dropout_keeps(seed, static_cast<uint64_t>(i), p) ? v * keep : 0.f;
              dx.data()[i] =
                  from_compute<T>(static_cast<compute_t<T>>(static_cast<float>(to_compute<T>(dx.data()[i])) + v));
            }
          });
          autograd::accumulate(x.grad_buffer(), dx.reshape(s));
        }
      });
}

}  // namespace cpu

// x [..., in] -> [..., out].
template <class T, class D>
Var<T, D> linear(const Var<T, D>& x, const Linear<T, D>& l, const LinearRun& run = {}) {
  DISTILL_CHECK(l.defined(), "linear: the projection has no weight");
  if constexpr (std::is_same_v<D, Cpu> && !std::is_same_v<T, double>)
    if (l.lora && !(l.weight.defined() && l.weight.requires_grad())) return cpu::lora_linear(x, l, run);
  Var<T, D> y;
  if (l.q4) {
    y = nf4_linear(x, l.q4, l.q4_dev);
  } else {
    const Shape s = x.shape();
    y = reshape(matmul(reshape(x, {s.rows(), s.back()}), l.weight, false, true), s.with(-1, l.weight.dim(0)));
  }
  if (l.lora) y = y + l.lora->delta(x, run.train, run.seed);
  return y;
}

}  // namespace distill::nn
