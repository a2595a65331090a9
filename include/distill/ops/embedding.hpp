// Embedding lookup: y[..., :] = weight[ids[...], :]. weight [V, C], ids int32 of any shape -> [ids..., C].
// No scaling here (Gemma3's sqrt(hidden) scale is a separate multiply, SPEC §2.1).
// Every id is checked against [0, V) before anything is read; a bad one throws distill::Error naming the
// id, where it sits, and V.
// Backward scatter-adds rows of the output gradient into weight's gradient (repeated ids add up). It is
// deterministic: occurrences are grouped by id with a stable sort, each id's row is owned by one thread and
// summed in order of appearance, in compute_t<T>, and added once. A frozen weight gets nothing.
// Backward functions accumulate into the parents' gradients, never overwrite.
// On Cuda (kernels/embedding.cu): the same checks on the host, a warp-per-row gather, and a deterministic
// scatter-add (ids stably sorted on the device, each id's row summed in f32 in order of appearance by the
// thread that owns it, added once: no float atomics; for f32 the CPU's bits).
#pragma once
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/nvtx.hpp"
#include "distill/core/parallel.hpp"
#ifdef DISTILL_WITH_CUDA
#include "distill/cuda/embedding.hpp"
#endif

namespace distill {

namespace detail::embedding {

inline constexpr int64_t kElemGrain = 1 << 14;

inline void check_weight(const Shape& w, const char* op) {
  if (w.rank() != 2) throw ShapeError(std::string(op) + ": weight must be [V, C], got " + w.str());
}

// Throws distill::Error on the first id outside [0, V).
inline void check_ids(const Tensor<int32_t>& ids, int64_t V, const char* op) {
  for (int64_t k = 0; k < ids.numel(); ++k) {
    const int32_t id = ids.flat(k);
    if (id < 0 || id >= V)
      throw Error(std::string(op) + ": id " + std::to_string(id) + " at flat index " + std::to_string(k) + " of ids " +
                  ids.shape().str() + " is out of range [0, " + std::to_string(V) + ") (V = " + std::to_string(V) +
                  ")");
  }
}

inline Shape out_shape(const Shape& ids, int64_t C, const char* op) {
  if (ids.rank() + 1 > kMaxRank)
    throw ShapeError(std::string(op) + ": ids " + ids.str() + " plus the embedding axis exceed rank " +
                     std::to_string(kMaxRank));
  Shape s = ids;
  s.push_back(C);
  return s;
}

}  // namespace detail::embedding

// ------------------------------------------------------------------------------------------------
namespace ref {

template <FloatingDtype T>
Tensor<T> embedding(const Tensor<T>& weight, const Tensor<int32_t>& ids) {
  detail::embedding::check_weight(weight.shape(), "ref::embedding");
  detail::embedding::check_ids(ids, weight.dim(0), "ref::embedding");
  const int64_t C = weight.dim(1);
  auto y = Tensor<T>::empty(detail::embedding::out_shape(ids.shape(), C, "ref::embedding"));
  for (int64_t k = 0; k < ids.numel(); ++k)
    for (int64_t c = 0; c < C; ++c) y.flat(k * C + c) = weight(ids.flat(k), c);
  return y;
}

// dw += scatter of g [ids..., C] by ids, summed in double per weight element.
template <FloatingDtype T>
void embedding_backward_accumulate(const Tensor<T>& dw, const Tensor<int32_t>& ids, const Tensor<T>& g) {
  detail::embedding::check_weight(dw.shape(), "ref::embedding_backward");
  detail::embedding::check_ids(ids, dw.dim(0), "ref::embedding_backward");
  const int64_t V = dw.dim(0), C = dw.dim(1);
  check_same_shape(g.shape(), detail::embedding::out_shape(ids.shape(), C, "ref::embedding_backward"),
                   "ref::embedding_backward");
  std::vector<double> acc(static_cast<size_t>(V * C));
  for (int64_t i = 0; i < V * C; ++i) acc[static_cast<size_t>(i)] = static_cast<double>(to_compute<T>(dw.flat(i)));
  for (int64_t k = 0; k < ids.numel(); ++k)
    for (int64_t c = 0; c < C; ++c)
      acc[static_cast<size_t>(ids.flat(k) * C + c)] += static_cast<double>(to_compute<T>(g.flat(k * C + c)));
  for (int64_t i = 0; i < V * C; ++i)
    dw.flat(i) = static_cast<T>(static_cast<compute_t<T>>(acc[static_cast<size_t>(i)]));
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------
namespace cpu {

template <FloatingDtype T>
Tensor<T> embedding_forward(const Tensor<T>& weight_in, const Tensor<int32_t>& ids_in) {
  detail::embedding::check_weight(weight_in.shape(), "embedding");
  const Tensor<int32_t> ids = ids_in.contiguous();
  detail::embedding::check_ids(ids, weight_in.dim(0), "embedding");
  const Tensor<T> w = weight_in.contiguous();
  const int64_t C = w.dim(1), n = ids.numel();
  auto y = Tensor<T>::empty(detail::embedding::out_shape(ids.shape(), C, "embedding"));  // [ids..., C]
  const int32_t* ip = ids.data();
  parallel_for(n, std::max<int64_t>(1, detail::embedding::kElemGrain / std::max<int64_t>(C, 1)),
               [&](int64_t b, int64_t e) {
                 for (int64_t k = b; k < e; ++k) std::copy_n(w.data() + ip[k] * C, C, y.data() + k * C);
               });
  return y;
}

// dw += scatter of g by ids. dw must be contiguous [V, C] (a Var's gradient buffer).
template <FloatingDtype T>
void embedding_backward_accumulate(const Tensor<T>& dw, const Tensor<int32_t>& ids_in, const Tensor<T>& g_in) {
  using C_t = compute_t<T>;
  detail::embedding::check_weight(dw.shape(), "embedding_backward");
  DISTILL_CHECK(dw.is_contiguous(), "embedding_backward: the gradient buffer must be contiguous");
  const Tensor<int32_t> ids = ids_in.contiguous();
  detail::embedding::check_ids(ids, dw.dim(0), "embedding_backward");
  const int64_t C = dw.dim(1), n = ids.numel();
  check_same_shape(g_in.shape(), detail::embedding::out_shape(ids.shape(), C, "embedding_backward"),
                   "embedding_backward");
  const Tensor<T> g = g_in.contiguous();
  if (n == 0 || C == 0) return;

  // Occurrences grouped by id, each group in order of appearance.
  const int32_t* ip = ids.data();
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [ip](int64_t a, int64_t b) { return ip[a] < ip[b]; });
  std::vector<int64_t> starts;  // group boundaries into `order`
  for (int64_t k = 0; k < n; ++k)
    if (k == 0 || ip[order[static_cast<size_t>(k)]] != ip[order[static_cast<size_t>(k - 1)]]) starts.push_back(k);
  starts.push_back(n);
  const int64_t groups = static_cast<int64_t>(starts.size()) - 1;

  T* dwp = dw.data();
  const T* gp = g.data();
  parallel_for(groups, std::max<int64_t>(1, detail::embedding::kElemGrain / std::max<int64_t>(C * (n / groups), 1)),
               [&](int64_t gb, int64_t ge) {
                 std::vector<C_t> acc(static_cast<size_t>(C));
                 for (int64_t q = gb; q < ge; ++q) {
                   const int64_t k0 = starts[static_cast<size_t>(q)], k1 = starts[static_cast<size_t>(q + 1)];
                   T* row = dwp + static_cast<int64_t>(ip[order[static_cast<size_t>(k0)]]) * C;  // [C]
                   std::fill(acc.begin(), acc.end(), C_t(0));
                   for (int64_t k = k0; k < k1; ++k) {
                     const T* gr = gp + order[static_cast<size_t>(k)] * C;
                     for (int64_t c = 0; c < C; ++c) acc[static_cast<size_t>(c)] += to_compute<T>(gr[c]);
                   }
                   for (int64_t c = 0; c < C; ++c)
                     row[c] = from_compute<T>(to_compute<T>(row[c]) + acc[static_cast<size_t>(c)]);
                 }
               });
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------
#ifdef DISTILL_WITH_CUDA
namespace detail::embedding {

// The Cuda op on validated device ids (the op's own copy, kept for backward).
template <FloatingDtype T>
Var<T, Cuda> embedding_cuda(const Var<T, Cuda>& weight, const Tensor<int32_t, Cuda>& ids) {
  NvtxRange nvtx("embedding");
  const Tensor<T, Cuda>& w = weight.value();  // a Var's value is contiguous
  const int64_t V = w.dim(0), C = w.dim(1), n = ids.numel();
  auto y = Tensor<T, Cuda>::empty(out_shape(ids.shape(), C, "embedding"));  // [ids..., C]
  ::distill::cuda::embedding_forward(w.data(), C, ids.data(), n, C, y.data(), C);
  return Var<T, Cuda>::record("embedding", y, {weight.node()}, [weight, ids, V, C, n](auto& self) {
    if (!weight.requires_grad()) return;
    const Tensor<T, Cuda>& dw = weight.grad_buffer();
    const Tensor<T, Cuda> g = self.grad.contiguous();
    ::distill::cuda::embedding_backward_accumulate(dw.data(), V, C, ids.data(), n, g.data());
  });
}

}  // namespace detail::embedding
#endif

// y = weight[ids]; weight [V, C], ids any shape -> [ids..., C]. The ids are copied for backward, so the
// caller may reuse its buffer. On Cuda the host ids are checked, then copied to the device.
template <FloatingDtype T, class D>
Var<T, D> embedding(const Var<T, D>& weight, const Tensor<int32_t>& ids) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    detail::embedding::check_weight(weight.shape(), "embedding");
    const Tensor<int32_t> host = ids.contiguous();
    detail::embedding::check_ids(host, weight.dim(0), "embedding");
    return detail::embedding::embedding_cuda(weight, host.template to<Cuda>());
#else
    static_assert(expr::dependent_false_v<T>,
                  "embedding on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    auto y = cpu::embedding_forward(weight.value(), ids);
    const Tensor<int32_t> saved = ids.clone();
    return Var<T>::record("embedding", y, {weight.node()}, [weight, saved](auto& self) {
      if (weight.requires_grad()) cpu::embedding_backward_accumulate(weight.grad_buffer(), saved, self.grad);
    });
  }
}

// The same with ids already on the device: they are copied to the host once to be checked (a synchronizing
// copy of n int32 values), and cloned on the device for backward.
template <FloatingDtype T>
Var<T, Cuda> embedding(const Var<T, Cuda>& weight, const Tensor<int32_t, Cuda>& ids) {
#ifdef DISTILL_WITH_CUDA
  detail::embedding::check_weight(weight.shape(), "embedding");
  detail::embedding::check_ids(ids.template to<Cpu>(), weight.dim(0), "embedding");
  return detail::embedding::embedding_cuda(weight, ids.clone());
#else
  static_assert(expr::dependent_false_v<T>,
                "embedding on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
}

}  // namespace distill
