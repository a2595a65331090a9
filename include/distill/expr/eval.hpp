// Evaluation of expressions: the forward pass and the derived backward pass, each ONE fused loop over
// the output. Same-shape contiguous operands run as a flat loop; broadcasting runs row by row with
// per-leaf strides. Loops are split across OpenMP threads; each thread works on its own copy of the
// (small) expression object.
#pragma once
#include <algorithm>
#include <vector>

#include "distill/core/config.hpp"
#include "distill/core/parallel.hpp"
#include "distill/expr/nodes.hpp"

namespace distill::expr {

inline constexpr int64_t kEwiseGrain = 1 << 14;

namespace detail {
// Calls body(local_expr, begin, end, unit, base) over output ranges [begin, end); the leaves index the
// range as j - base (base = 0 in flat mode, the row start in row mode). Parallel unless `serial`.
// Row mode over rows [rb, re) of `shape` with an expression already bound to it.
template <class E, class Body>
void run_rows(E& local, const Shape& shape, int64_t rb, int64_t re, Body&& body) {
  const int R = shape.rank();
  const int64_t n = shape.back();
  int64_t idx[kMaxRank] = {};
  for (int64_t r = rb; r < re; ++r) {
    int64_t rem = r;
    for (int i = R - 2; i >= 0; --i) {
      idx[i] = rem % shape[i];
      rem /= shape[i];
    }
    local.seek(idx, R);
    body(local, r * n, r * n + n, local.all_unit(), r * n);
  }
}

template <class E, class Body>
void for_each_row(const E& e0, const Shape& shape, bool serial, Body&& body) {
  const int64_t numel = shape.numel();
  if (numel == 0) return;
  E e = e0;
  if (e.flat_ok(shape)) {
    e.bind_flat();
    auto run = [&](int64_t b, int64_t end) {
      E local = e;
      local.seek(nullptr, 0);
      body(local, b, end, true, int64_t{0});
    };
    if (serial)
      run(0, numel);
    else
      parallel_for(numel, kEwiseGrain, run);
    return;
  }
  e.bind(shape);
  const int64_t n = shape.back(), rows = numel / n;
  auto run = [&](int64_t rb, int64_t re) {
    E local = e;
    run_rows(local, shape, rb, re, body);
  };
  if (serial)
    run(0, rows);
  else
    parallel_for(rows, std::max<int64_t>(1, kEwiseGrain / std::max<int64_t>(n, 1)), run);
}
// The innermost loops. They vectorize (math::exp and friends included) when the compiler may
// if-convert float selects: clang by default, GCC with -fno-trapping-math, which distill::distill
// adds to its users' flags (results are unchanged; only FP exception flags are not honoured).
template <bool Unit, class E, class T>
DISTILL_TARGET_CLONES void assign_range(const E& x, T* o, int64_t b, int64_t end, int64_t base) {
  // Auto-vectorized (GCC versions the loop for the possible aliasing of `o` with the operands; assign
  // rejects operands that overlap `out` as another view, and same-index reads/writes are fine).
  for (int64_t j = b; j < end; ++j) o[j] = from_compute<T>(x.template value<Unit>(j - base));
}

template <bool Unit, bool Scratch, class E, class T>
DISTILL_TARGET_CLONES void backward_range(const E& x, const T* g, int64_t b, int64_t end, int64_t base) {
  for (int64_t j = b; j < end; ++j) {
    const auto c = x.template fwd<Unit>(j - base);
    x.template bwd<Unit, Scratch>(j - base, c, to_compute<T>(g[j]));
  }
}
}  // namespace detail

template <class>
inline constexpr bool dependent_false_v = false;

}  // namespace distill::expr

#if defined(__CUDACC__)
// Defined in distill/cuda/expr.cuh (included by autograd/var.hpp in CUDA translation units).
namespace distill::cuda {
template <class E, class T>
void expr_assign(const Tensor<T, Cuda>& out, const E& e);
template <class E, class T>
void expr_backward(E e, const Tensor<T, Cuda>& g_out);
}  // namespace distill::cuda
#endif

namespace distill::expr {

#define DISTILL_EXPR_NEEDS_NVCC                                                                                 \
  "evaluating an element-wise expression on Cuda compiles it into its own CUDA kernel: build this translation " \
  "unit with nvcc (a .cu file linking distill::kernels); host-compiled code can use the precompiled ops "       \
  "(distill/ops, autograd::accumulate, Tensor copies/casts/fills)"

// out = e, element-wise, in one pass. `out` must be contiguous with e's shape.
template <class E, class T, class D>
void assign(const Tensor<T, D>& out, const E& e) {
  check_same_shape(out.shape(), e.out_shape(), "assign");
  DISTILL_CHECK(out.is_contiguous(), "assign: the destination must be contiguous");
  DISTILL_CHECK(!e.overlaps_other_view(out),
                "assign: the destination overlaps an operand that is a different view of the same memory (a slice, "
                "transpose or broadcast of it); evaluate into a new tensor with eval() first");
  if constexpr (std::is_same_v<D, Cuda>) {
#if defined(__CUDACC__)
    cuda::expr_assign(out, e);
#else
    static_assert(dependent_false_v<E>, DISTILL_EXPR_NEEDS_NVCC);
#endif
    return;
  } else {
    T* o = out.data();
    detail::for_each_row(e, out.shape(), false, [&](const E& x, int64_t b, int64_t end, bool unit, int64_t base) {
      if (unit)
        detail::assign_range<true>(x, o, b, end, base);
      else
        detail::assign_range<false>(x, o, b, end, base);
    });
  }
}

template <class E, class T>
void backward_pass_cpu(E e, const Tensor<T, Cpu>& g_out);

// Fused backward: for every element, recompute the forward tree once (keeping intermediates) and push
// g_out down to every leaf that wants a gradient. Leaves accumulate (+=) into their gradient buffers.
// When a differentiated leaf is broadcast, several outputs hit one of its gradient elements: the rows
// are then split into a fixed number of chunks, each summing such leaves into its own double scratch
// buffer, merged in chunk order and rounded into the gradient once (race-free, deterministic for a
// given thread count, and exact enough: summing thousands of terms in bf16, or 2^24 in f32, stalls).
template <class E, class T, class D>
void backward_pass(E e, const Tensor<T, D>& g_out) {
  if constexpr (std::is_same_v<D, Cuda>) {
#if defined(__CUDACC__)
    cuda::expr_backward(std::move(e), g_out);
#else
    static_assert(dependent_false_v<E>, DISTILL_EXPR_NEEDS_NVCC);
#endif
  } else {
    backward_pass_cpu(std::move(e), g_out);
  }
}

template <class E, class T>
void backward_pass_cpu(E e, const Tensor<T, Cpu>& g_out) {
  const Shape shape = e.out_shape();
  check_same_shape(shape, g_out.shape(), "backward");
  if (shape.numel() == 0) return;
  e.prepare_grads(shape);
  const T* g = g_out.data();
  E bound = e;
  bound.bind(shape);
  if (!bound.grad_broadcast()) {
    detail::for_each_row(e, shape, false, [&](const E& x, int64_t b, int64_t end, bool unit, int64_t base) {
      if (unit)
        detail::backward_range<true, false>(x, g, b, end, base);
      else
        detail::backward_range<false, false>(x, g, b, end, base);
    });
  } else {
    // A broadcast leaf never passes flat_ok, so this is row mode.
    const int64_t rows = shape.numel() / shape.back();
    const int64_t chunks = std::min<int64_t>({max_threads(), rows, std::max<int64_t>(1, shape.numel() / kEwiseGrain)});
    std::vector<E> parts(static_cast<size_t>(chunks), bound);
    parallel_for(chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        E& local = parts[static_cast<size_t>(c)];
        local.fork_scratch();
        detail::run_rows(local, shape, rows * c / chunks, rows * (c + 1) / chunks,
                         [&](const E& x, int64_t b, int64_t end, bool unit, int64_t base) {
                           if (unit)
                             detail::backward_range<true, true>(x, g, b, end, base);
                           else
                             detail::backward_range<false, true>(x, g, b, end, base);
                         });
      }
    });
    for (const E& p : parts) e.merge_scratch(p);
  }
  e.finish_grads();
}

}  // namespace distill::expr

namespace distill {
// Evaluate an expression into a new contiguous tensor.
template <expr::Expression E>
auto eval(const E& e) {
  using T = typename E::value_type;
  using D = typename E::device_type;
  auto out = Tensor<T, D>::empty(e.out_shape());
  expr::assign(out, e);
  return out;
}
}  // namespace distill
