// Element-wise expressions on the GPU: each expression type becomes its own kernel. The host expression
// tree (expr/nodes.hpp, autograd's VarLeaf) is lowered to a tree of small trivially-copyable device
// functors (the kernel's argument), whose per-element code is the same op table as the CPU's
// (expr/ops.hpp, __host__ __device__). Forward and backward are each ONE kernel:
//  - forward: out[i] = e(i). When every operand has the output's shape, is contiguous and 16-byte
//    aligned, each thread loads 16 bytes per operand and stores 16 bytes (a scalar tail does the rest);
//    otherwise every thread decomposes its flat index into coordinates once and each leaf applies its
//    own (broadcast, zero-stride) strides;
//  - backward: each thread recomputes the forward tree at its element (keeping intermediates, as the
//    CPU pass does) and pushes the upstream gradient down to the leaves that want one. A leaf that is
//    not broadcast owns its gradient element (one writer; the same Var used twice is the same thread);
//    a broadcast leaf sums into a zeroed double scratch with atomicAdd (as the CPU sums in double), added
//    into its gradient by a second small kernel (so broadcast gradients are not bitwise deterministic on
//    the GPU, and a huge broadcast — a bias over millions of rows — contends on few addresses; a
//    per-block pre-reduction is the known improvement).
// Only CUDA translation units include this (autograd/var.hpp does, under __CUDACC__).
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/cuda/check.hpp"

namespace distill::cuda {

namespace ew {

constexpr int kThreads = 256;

// The element a thread works on: its flat index and (in strided mode) its coordinates.
struct Idx {
  int64_t lin;
  int64_t c[kMaxRank];
};

struct OutShape {
  int64_t dims[kMaxRank];
  int rank;
};

template <class T, int N>
struct alignas(16) Vec {
  T v[N];
};

// Broadcast gradients accumulate in double, as the CPU pass does (summing 2^24 f32 terms stalls); double
// atomicAdd is native on sm_60+.
template <class T>
using scratch_t = double;

// --- device functors -------------------------------------------------------------------------------
template <class T>
struct Leaf {
  using value_type = T;
  using C = compute_t<T>;
  using Cache = C;
  const T* p;
  int64_t st[kMaxRank];   // strides aligned to the output's rank; 0 where broadcast
  T* grad;                // gradient with the value's layout (same offsets), when owned by this element
  scratch_t<T>* scratch;  // broadcast gradient accumulator (value's layout), or null
  bool flat;              // same shape as the output and contiguous: offset = flat index

  template <bool Flat>
  __device__ __forceinline__ int64_t offset(const Idx& ix, int R) const {
    if (Flat) return ix.lin;
    int64_t off = 0;
#pragma unroll
    for (int d = 0; d < kMaxRank; ++d)
      if (d < R) off += ix.c[d] * st[d];
    return off;
  }
  template <bool Flat>
  __device__ __forceinline__ C value(const Idx& ix, int R) const {
    return to_compute<T>(p[offset<Flat>(ix, R)]);
  }
  template <bool Flat>
  __device__ __forceinline__ Cache fwd(const Idx& ix, int R) const {
    return value<Flat>(ix, R);
  }
  __device__ __forceinline__ static C out(Cache c) { return c; }
  template <bool Flat>
  __device__ __forceinline__ void bwd(const Idx& ix, int R, Cache, C g) const {
    if (scratch) {
      atomicAdd(scratch + offset<Flat>(ix, R), static_cast<scratch_t<T>>(g));
    } else if (grad) {
      T& dst = grad[offset<Flat>(ix, R)];
      dst = from_compute<T>(to_compute<T>(dst) + g);
    }
  }
  template <class U, int N>
  __device__ __forceinline__ void value_vec(int64_t i0, C (&out)[N]) const {
    static_assert(sizeof(U) == sizeof(T));
    const Vec<T, N> v = *reinterpret_cast<const Vec<T, N>*>(p + i0);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = to_compute<T>(v.v[k]);
  }
};

template <class C>
struct ScalarF {
  using Cache = C;
  C v;
  template <bool Flat>
  __device__ __forceinline__ C value(const Idx&, int) const {
    return v;
  }
  template <bool Flat>
  __device__ __forceinline__ Cache fwd(const Idx&, int) const {
    return v;
  }
  __device__ __forceinline__ static C out(Cache c) { return c; }
  template <bool Flat>
  __device__ __forceinline__ void bwd(const Idx&, int, Cache, C) const {}
  template <class U, int N>
  __device__ __forceinline__ void value_vec(int64_t, C (&out)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = v;
  }
};

template <class Op, class E, class C>
struct UnaryF {
  struct Cache {
    typename E::Cache c;
    C y;
  };
  E e;
  template <bool Flat>
  __device__ __forceinline__ C value(const Idx& ix, int R) const {
    return Op::f(e.template value<Flat>(ix, R));
  }
  template <bool Flat>
  __device__ __forceinline__ Cache fwd(const Idx& ix, int R) const {
    auto c = e.template fwd<Flat>(ix, R);
    return Cache{c, Op::f(E::out(c))};
  }
  __device__ __forceinline__ static C out(const Cache& c) { return c.y; }
  template <bool Flat>
  __device__ __forceinline__ void bwd(const Idx& ix, int R, const Cache& c, C g) const {
    e.template bwd<Flat>(ix, R, c.c, g * Op::df(E::out(c.c), c.y));
  }
  template <class U, int N>
  __device__ __forceinline__ void value_vec(int64_t i0, C (&out)[N]) const {
    C a[N];
    e.template value_vec<U, N>(i0, a);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = Op::f(a[k]);
  }
};

template <class Op, class L, class R_, class C>
struct BinaryF {
  struct Cache {
    typename L::Cache a;
    typename R_::Cache b;
    C y;
  };
  L l;
  R_ r;
  template <bool Flat>
  __device__ __forceinline__ C value(const Idx& ix, int R) const {
    return Op::f(l.template value<Flat>(ix, R), r.template value<Flat>(ix, R));
  }
  template <bool Flat>
  __device__ __forceinline__ Cache fwd(const Idx& ix, int R) const {
    auto a = l.template fwd<Flat>(ix, R);
    auto b = r.template fwd<Flat>(ix, R);
    return Cache{a, b, Op::f(L::out(a), R_::out(b))};
  }
  __device__ __forceinline__ static C out(const Cache& c) { return c.y; }
  template <bool Flat>
  __device__ __forceinline__ void bwd(const Idx& ix, int R, const Cache& c, C g) const {
    const C a = L::out(c.a), b = R_::out(c.b);
    l.template bwd<Flat>(ix, R, c.a, g * Op::da(a, b, c.y));
    r.template bwd<Flat>(ix, R, c.b, g * Op::db(a, b, c.y));
  }
  template <class U, int N>
  __device__ __forceinline__ void value_vec(int64_t i0, C (&out)[N]) const {
    C a[N], b[N];
    l.template value_vec<U, N>(i0, a);
    r.template value_vec<U, N>(i0, b);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = Op::f(a[k], b[k]);
  }
};

// --- lowering: host expression -> device functor -----------------------------------------------------
// What lowering learns about the whole tree.
struct LowerInfo {
  bool all_flat = true;     // every leaf has the output's shape and is contiguous
  bool all_aligned = true;  // every leaf pointer is 16-byte aligned
  bool with_grads = false;  // lowering for the backward pass: bind gradient targets
  // Broadcast gradient scratches: (scratch, grad, n, merge function) to add into the gradient afterwards.
  struct Pending {
    std::shared_ptr<void> scratch;
    std::function<void()> merge;
  };
  std::vector<Pending> pending;
};

template <class T>
Leaf<T> lower_strided(const T* base, const Shape& shape, const Shape& strides, const Shape& out, LowerInfo& info,
                      bool* bcast_out) {
  Leaf<T> f{};
  f.p = base;
  const int R = out.rank(), r = shape.rank();
  bool bcast = false;
  for (int i = 0; i < R; ++i) {
    const int li = i - (R - r);
    int64_t s = 0;
    if (li >= 0 && !(shape[li] == 1 && out[i] != 1)) s = strides[li];
    if (s == 0 && out[i] > 1 && (li < 0 || shape[li] == 1)) bcast = true;
    f.st[i] = s;
  }
  bool contiguous = true;
  int64_t acc = 1;
  for (int i = r - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[i] != acc) contiguous = false;
    acc *= shape[i];
  }
  f.flat = shape == out && contiguous;
  info.all_flat = info.all_flat && f.flat;
  info.all_aligned = info.all_aligned && (reinterpret_cast<uintptr_t>(base) % 16 == 0);
  f.grad = nullptr;
  f.scratch = nullptr;
  if (bcast_out) *bcast_out = bcast;
  return f;
}

template <class T, class D>
Leaf<T> lower(const expr::StridedLeaf<T, D>& l, const Shape& out, LowerInfo& info) {
  return lower_strided(l.base, l.shape, l.strides, out, info, nullptr);
}

template <class T, class D>
ScalarF<compute_t<T>> lower(const expr::Scalar<T, D>& s, const Shape&, LowerInfo&) {
  return ScalarF<compute_t<T>>{s.v};
}

template <class Op, class E>
auto lower(const expr::Unary<Op, E>& u, const Shape& out, LowerInfo& info) {
  auto inner = lower(u.e, out, info);
  return UnaryF<Op, decltype(inner), compute_t<typename E::value_type>>{inner};
}

template <class Op, class L, class R>
auto lower(const expr::Binary<Op, L, R>& b, const Shape& out, LowerInfo& info) {
  auto l = lower(b.l, out, info);
  auto r = lower(b.r, out, info);
  return BinaryF<Op, decltype(l), decltype(r), compute_t<typename L::value_type>>{l, r};
}

template <class T, class S>
__global__ void merge_scratch_kernel(T* __restrict__ grad, const S* __restrict__ scratch, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    grad[i] = from_compute<T>(static_cast<compute_t<T>>(static_cast<double>(to_compute<T>(grad[i])) + scratch[i]));
}

template <class T>
Leaf<T> lower(const expr::VarLeaf<T, Cuda>& l, const Shape& out, LowerInfo& info) {
  bool bcast = false;
  Leaf<T> f = lower_strided(l.base, l.shape, l.strides, out, info, &bcast);
  if (!info.with_grads || !l.node->requires_grad) return f;
  Tensor<T, Cuda>& g = l.node->grad_buffer();  // zeros on first use; same shape and layout as the value
  if (!bcast) {
    f.grad = g.data();
    return f;
  }
  using S = scratch_t<T>;
  const int64_t n = g.numel();
  auto scratch = std::make_shared<DeviceBuffer<S>>(static_cast<size_t>(n));
  DISTILL_CHECK_CUDA(cudaMemsetAsync(scratch->data(), 0, sizeof(S) * static_cast<size_t>(n), stream()));
  f.scratch = scratch->data();
  T* gp = g.data();
  S* sp = scratch->data();
  info.pending.push_back({scratch, [gp, sp, n] {
                            merge_scratch_kernel<T, S><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(gp, sp, n);
                            DISTILL_CHECK_LAUNCH();
                          }});
  return f;
}

// --- kernels -----------------------------------------------------------------------------------------
__device__ __forceinline__ void decompose(int64_t i, const OutShape& s, Idx& ix) {
  ix.lin = i;
#pragma unroll
  for (int d = kMaxRank - 1; d >= 0; --d) {
    if (d < s.rank) {
      ix.c[d] = i % s.dims[d];
      i /= s.dims[d];
    }
  }
}

template <bool Flat, class F, class T>
__global__ void forward_kernel(F f, T* __restrict__ out, int64_t begin, int64_t n, OutShape s) {
  for (int64_t i = begin + blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    Idx ix;
    if (Flat)
      ix.lin = i;
    else
      decompose(i, s, ix);
    out[i] = from_compute<T>(f.template value<Flat>(ix, s.rank));
  }
}

template <class F, class T>
__global__ void forward_vec_kernel(F f, T* __restrict__ out, int64_t nvec) {
  constexpr int N = 16 / sizeof(T);
  using C = compute_t<T>;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < nvec; v += int64_t{gridDim.x} * blockDim.x) {
    C vals[N];
    f.template value_vec<T, N>(v * N, vals);
    Vec<T, N> o;
#pragma unroll
    for (int k = 0; k < N; ++k) o.v[k] = from_compute<T>(vals[k]);
    reinterpret_cast<Vec<T, N>*>(out)[v] = o;
  }
}

template <bool Flat, class F, class T>
__global__ void backward_kernel(F f, const T* __restrict__ g, int64_t n, OutShape s) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    Idx ix;
    if (Flat)
      ix.lin = i;
    else
      decompose(i, s, ix);
    const auto c = f.template fwd<Flat>(ix, s.rank);
    f.template bwd<Flat>(ix, s.rank, c, to_compute<T>(g[i]));
  }
}

inline OutShape out_shape_of(const Shape& s) {
  OutShape o{};
  o.rank = s.rank();
  for (int i = 0; i < s.rank(); ++i) o.dims[i] = s[i];
  return o;
}

}  // namespace ew

template <class E, class T>
void expr_assign(const Tensor<T, Cuda>& out, const E& e) {
  const Shape shape = out.shape();
  const int64_t n = shape.numel();
  if (n == 0) return;
  ew::LowerInfo info;
  const auto f = ew::lower(e, shape, info);
  const ew::OutShape s = ew::out_shape_of(shape);
  T* o = out.data();
  if (info.all_flat) {
    constexpr int N = 16 / sizeof(T);
    int64_t done = 0;
    if (info.all_aligned && reinterpret_cast<uintptr_t>(o) % 16 == 0 && n >= N) {
      const int64_t nvec = n / N;
      ew::forward_vec_kernel<<<grid_for(nvec, ew::kThreads), ew::kThreads, 0, stream()>>>(f, o, nvec);
      DISTILL_CHECK_LAUNCH();
      done = nvec * N;
    }
    if (done < n) {
      ew::forward_kernel<true><<<grid_for(n - done, ew::kThreads), ew::kThreads, 0, stream()>>>(f, o, done, n, s);
      DISTILL_CHECK_LAUNCH();
    }
  } else {
    ew::forward_kernel<false><<<grid_for(n, ew::kThreads), ew::kThreads, 0, stream()>>>(f, o, int64_t{0}, n, s);
    DISTILL_CHECK_LAUNCH();
  }
}

template <class E, class T>
void expr_backward(E e, const Tensor<T, Cuda>& g_out) {
  const Shape shape = e.out_shape();
  check_same_shape(shape, g_out.shape(), "backward");
  const int64_t n = shape.numel();
  if (n == 0) return;
  const Tensor<T, Cuda> g = g_out.contiguous();
  ew::LowerInfo info;
  info.with_grads = true;
  const auto f = ew::lower(e, shape, info);
  const ew::OutShape s = ew::out_shape_of(shape);
  if (info.all_flat)
    ew::backward_kernel<true><<<grid_for(n, ew::kThreads), ew::kThreads, 0, stream()>>>(f, g.data(), n, s);
  else
    ew::backward_kernel<false><<<grid_for(n, ew::kThreads), ew::kThreads, 0, stream()>>>(f, g.data(), n, s);
  DISTILL_CHECK_LAUNCH();
  for (auto& p : info.pending) p.merge();  // scratch buffers return to the allocator after, in stream order
}

}  // namespace distill::cuda
