// RMSNorm over the last axis, in the two flavours our models use (SPEC §1.2, §2.2):
//   x̂ = x * rsqrt(mean(x^2) + eps)            (per row, in compute_t<T>: f32 for bf16/f16)
//   Weight        (Qwen3RMSNorm):  y = w * T(x̂)      — x̂ is cast to the input dtype FIRST, then the
//                                                       product with w is rounded to T again;
//   OnePlusWeight (Gemma3RMSNorm): y = T(x̂ * (1 + w)) — multiplied in f32, cast once at the end.
// For f32/f64 inputs both casts are identities (CPU f32 has no extra rounding); they matter for bf16/f16.
//
// Shapes: x [..., C], w [C], y like x. The forward saves the per-row rstd = rsqrt(mean(x^2) + eps) [rows].
// Backward (s = w or 1 + w, ĝ = g * s):
//   dx = rstd * (ĝ - x̂ * mean(ĝ * x̂))   per row,
//   dw = Σ_rows g * x̂                   (both styles: d(1 + w)/dw = 1; Weight uses T(x̂), as the forward).
// dw is reduced deterministically: rows are cut into blocks whose size depends only on the row count
// (never on the thread count), each block sums into its own partial, and the partials are added in
// block order. Backward functions accumulate into the parents' gradients, never overwrite.
// On Cuda (f32, bf16, f16) the same rounding points and formulas run in kernels/rmsnorm.cu (see
// distill/cuda/rmsnorm.hpp); only the order of the sums differs.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/nvtx.hpp"
#include "distill/core/parallel.hpp"
#include "distill/cuda/rmsnorm.hpp"

namespace distill {

enum class RmsNormStyle {
  Weight,        // Qwen3: w * x̂, x̂ rounded to the input dtype before the multiply
  OnePlusWeight  // Gemma3: (1 + w) * x̂ in f32, rounded once
};

// What the forward hands back: the output and what backward needs besides x and w.
template <class T, class D = Cpu>
struct RmsNormForward {
  Tensor<T, D> y;                // [..., C]
  Tensor<compute_t<T>, D> rstd;  // [rows]
};

// Gradients of rms_norm; a tensor is left undefined when it was not asked for.
template <class T, class D = Cpu>
struct RmsNormGrads {
  Tensor<T, D> dx;  // [..., C]
  Tensor<T, D> dw;  // [C]
};

namespace detail::rmsnorm {

inline constexpr int64_t kElemGrain = 1 << 14;  // elements per parallel chunk, at least
inline constexpr int64_t kMaxBlocks = 256;      // partial-dw buffers, at most
inline constexpr int64_t kMinBlockRows = 16;

template <class T>
inline constexpr bool is_16bit_v = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

inline void check_shapes(const Shape& x, const Shape& w, const char* op) {
  if (x.rank() < 1 || w.rank() != 1 || w[0] != x.back())
    throw ShapeError(std::string(op) + ": x " + x.str() + " needs a weight of shape [" +
                     std::to_string(x.rank() ? x.back() : 0) + "], got " + w.str());
}

// Rows per dw block: a function of the row count only, so the reduction order is thread-count free.
inline int64_t block_rows(int64_t rows) {
  return std::max<int64_t>(kMinBlockRows, (rows + kMaxBlocks - 1) / kMaxBlocks);
}

// s[j] = w[j] (Weight) or 1 + w[j] (OnePlusWeight), in the compute type (Gemma3 adds in f32).
template <class T>
std::vector<compute_t<T>> scale_of(const Tensor<T>& w, RmsNormStyle style) {
  using C = compute_t<T>;
  std::vector<C> s(static_cast<size_t>(w.numel()));
  for (int64_t j = 0; j < w.numel(); ++j)
    s[static_cast<size_t>(j)] = (style == RmsNormStyle::Weight ? C(0) : C(1)) + to_compute<T>(w.data()[j]);
  return s;
}

// Row in the compute type: a map over x itself when T is the compute type, else a converted copy.
template <class T>
const compute_t<T>* row_in_compute(const T* xr, int64_t n, std::vector<compute_t<T>>& buf) {
  if constexpr (std::is_same_v<T, compute_t<T>>) {
    return xr;
  } else {
    buf.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) buf[static_cast<size_t>(j)] = to_compute<T>(xr[j]);
    return buf.data();
  }
}

template <class C>
C sum_of_squares(const C* v, int64_t n) {
  return Eigen::Map<const Eigen::Array<C, Eigen::Dynamic, 1>>(v, n).square().sum();
}

}  // namespace detail::rmsnorm

// ------------------------------------------------------------------------------------------------
namespace ref {

// Plain loops in double; the 16-bit rounding points of SPEC §1.2 / §2.2 are applied for bf16/f16.
template <FloatingDtype T>
Tensor<T> rms_norm(const Tensor<T>& x, const Tensor<T>& w, double eps, RmsNormStyle style) {
  detail::rmsnorm::check_shapes(x.shape(), w.shape(), "ref::rms_norm");
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  auto y = Tensor<T>::empty(x.shape());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double v = static_cast<double>(to_compute<T>(x.flat(r * n + j)));
      ss += v * v;
    }
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    for (int64_t j = 0; j < n; ++j) {
      const double xh = static_cast<double>(to_compute<T>(x.flat(r * n + j))) * rstd;
      const double wj = static_cast<double>(to_compute<T>(w.flat(j)));
      double out;
      if (style == RmsNormStyle::Weight) {
        // x̂ lives in f32 in HF; for 16-bit T it is rounded to T before the multiply.
        const double xq = detail::rmsnorm::is_16bit_v<T>
                              ? static_cast<double>(to_compute<T>(static_cast<T>(static_cast<float>(xh))))
                              : xh;
        out = wj * xq;
      } else {
        out = xh * (1.0 + wj);
      }
      y.flat(r * n + j) = static_cast<T>(static_cast<compute_t<T>>(out));
    }
  }
  return y;
}

// Exact-math gradients in double (recomputes rstd; takes nothing saved from a forward).
template <FloatingDtype T>
RmsNormGrads<T> rms_norm_backward(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>& g, double eps,
                                  RmsNormStyle style) {
  detail::rmsnorm::check_shapes(x.shape(), w.shape(), "ref::rms_norm_backward");
  check_same_shape(x.shape(), g.shape(), "ref::rms_norm_backward");
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  auto at = [](const Tensor<T>& t, int64_t i) { return static_cast<double>(to_compute<T>(t.flat(i))); };
  RmsNormGrads<T> out{Tensor<T>::empty(x.shape()), Tensor<T>::empty(w.shape())};
  std::vector<double> dw(static_cast<size_t>(n), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < n; ++j) ss += at(x, r * n + j) * at(x, r * n + j);
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    double dot = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double s = (style == RmsNormStyle::Weight ? 0.0 : 1.0) + at(w, j);
      dot += at(g, r * n + j) * s * at(x, r * n + j) * rstd;
    }
    const double mean_dot = dot / static_cast<double>(n);
    for (int64_t j = 0; j < n; ++j) {
      const double s = (style == RmsNormStyle::Weight ? 0.0 : 1.0) + at(w, j);
      const double xh = at(x, r * n + j) * rstd, gj = at(g, r * n + j);
      out.dx.flat(r * n + j) = static_cast<T>(static_cast<compute_t<T>>(rstd * (gj * s - xh * mean_dot)));
      dw[static_cast<size_t>(j)] += gj * xh;
    }
  }
  for (int64_t j = 0; j < n; ++j)
    out.dw.flat(j) = static_cast<T>(static_cast<compute_t<T>>(dw[static_cast<size_t>(j)]));
  return out;
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------
namespace cpu {

template <FloatingDtype T>
RmsNormForward<T> rms_norm_forward(const Tensor<T>& x_in, const Tensor<T>& w_in, double eps, RmsNormStyle style) {
  using C = compute_t<T>;
  namespace d = detail::rmsnorm;
  d::check_shapes(x_in.shape(), w_in.shape(), "rms_norm");
  const Tensor<T> x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  RmsNormForward<T> out{Tensor<T>::empty(x.shape()), Tensor<C>::empty(Shape{rows})};
  const std::vector<C> s = d::scale_of(w, style);
  const T* xp = x.data();
  T* yp = out.y.data();
  C* rp = out.rstd.data();
  parallel_for(rows, std::max<int64_t>(1, d::kElemGrain / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
    std::vector<C> buf;
    for (int64_t r = b; r < e; ++r) {
      const C* xr = d::row_in_compute(xp + r * n, n, buf);  // [C]
      T* yr = yp + r * n;
      const C rstd = C(1) / std::sqrt(d::sum_of_squares(xr, n) / static_cast<C>(n) + static_cast<C>(eps));
      rp[r] = rstd;
      if (style == RmsNormStyle::Weight) {
        // Qwen3: T(x̂) first, then w * T(x̂) rounded to T (identity casts for f32/f64).
        for (int64_t j = 0; j < n; ++j)
          yr[j] = from_compute<T>(to_compute<T>(from_compute<T>(xr[j] * rstd)) * s[static_cast<size_t>(j)]);
      } else {
        // Gemma3: x̂ * (1 + w) in the compute type, one rounding.
        for (int64_t j = 0; j < n; ++j) yr[j] = from_compute<T>(xr[j] * rstd * s[static_cast<size_t>(j)]);
      }
    }
  });
  return out;
}

// Gradients from the saved rstd; dx / dw are computed only when asked for (a frozen weight skips dw).
template <FloatingDtype T>
RmsNormGrads<T> rms_norm_backward(const Tensor<T>& x_in, const Tensor<T>& w_in, const Tensor<compute_t<T>>& rstd,
                                  const Tensor<T>& g_in, RmsNormStyle style, bool need_dx = true, bool need_dw = true) {
  using C = compute_t<T>;
  namespace d = detail::rmsnorm;
  d::check_shapes(x_in.shape(), w_in.shape(), "rms_norm_backward");
  check_same_shape(x_in.shape(), g_in.shape(), "rms_norm_backward");
  const Tensor<T> x = x_in.contiguous(), w = w_in.contiguous(), g = g_in.contiguous();
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  DISTILL_CHECK(rstd.numel() == rows, "rms_norm_backward: rstd has ", rstd.numel(), " values for ", rows, " rows");
  RmsNormGrads<T> out;
  if (need_dx) out.dx = Tensor<T>::empty(x.shape());
  if (need_dw) out.dw = Tensor<T>::empty(w.shape());
  if (!need_dx && !need_dw) return out;

  const std::vector<C> s = d::scale_of(w, style);
  const int64_t brows = d::block_rows(rows), nblocks = rows ? (rows + brows - 1) / brows : 0;
  std::vector<C> partial(need_dw ? static_cast<size_t>(nblocks * n) : 0, C(0));  // [nblocks, C]
  const Tensor<C> rs = rstd.contiguous();
  const T *xp = x.data(), *gp = g.data();
  T* dxp = need_dx ? out.dx.data() : nullptr;

  parallel_for(nblocks, 1, [&](int64_t bb, int64_t be) {
    std::vector<C> xbuf, gbuf;
    for (int64_t blk = bb; blk < be; ++blk) {
      C* pdw = need_dw ? partial.data() + blk * n : nullptr;
      for (int64_t r = blk * brows; r < std::min(rows, (blk + 1) * brows); ++r) {
        const C* xr = d::row_in_compute(xp + r * n, n, xbuf);  // [C]
        const C* gr = d::row_in_compute(gp + r * n, n, gbuf);  // [C]
        const C rstd_r = rs.data()[r];
        if (need_dw) {
          for (int64_t j = 0; j < n; ++j) {
            C xh = xr[j] * rstd_r;
            if (style == RmsNormStyle::Weight) xh = to_compute<T>(from_compute<T>(xh));  // forward's rounding point
            pdw[j] += gr[j] * xh;
          }
        }
        if (need_dx) {
          C dot = 0;
          for (int64_t j = 0; j < n; ++j) dot += gr[j] * s[static_cast<size_t>(j)] * xr[j];
          const C mean_dot = dot * rstd_r / static_cast<C>(n);
          T* dxr = dxp + r * n;
          for (int64_t j = 0; j < n; ++j)
            dxr[j] = from_compute<T>(rstd_r * (gr[j] * s[static_cast<size_t>(j)] - xr[j] * rstd_r * mean_dot));
        }
      }
    }
  });

  if (need_dw) {
    T* dwp = out.dw.data();
    parallel_for(n, 256, [&](int64_t jb, int64_t je) {
      for (int64_t j = jb; j < je; ++j) {
        C acc = 0;
        for (int64_t blk = 0; blk < nblocks; ++blk) acc += partial[static_cast<size_t>(blk * n + j)];
        dwp[j] = from_compute<T>(acc);
      }
    });
  }
  return out;
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------
#ifdef DISTILL_WITH_CUDA
namespace cuda {

// The Tensor-level GPU entry points: cpu::'s contract on device tensors (launchers in distill/cuda/rmsnorm.hpp).
template <FloatingDtype T>
RmsNormForward<T, Cuda> rms_norm_forward(const Tensor<T, Cuda>& x_in, const Tensor<T, Cuda>& w_in, double eps,
                                         RmsNormStyle style) {
  static_assert(!std::is_same_v<T, double>, "rms_norm on Cuda takes f32, bf16 or f16; f64 stays on the CPU");
  ::distill::detail::rmsnorm::check_shapes(x_in.shape(), w_in.shape(), "rms_norm");
  const Tensor<T, Cuda> x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  RmsNormForward<T, Cuda> out{Tensor<T, Cuda>::empty(x.shape()), Tensor<float, Cuda>::empty(Shape{rows})};
  if (rows > 0)
    rms_norm_forward(x.data(), w.data(), out.y.data(), out.rstd.data(), rows, n, static_cast<float>(eps), style);
  return out;
}

template <FloatingDtype T>
RmsNormGrads<T, Cuda> rms_norm_backward(const Tensor<T, Cuda>& x_in, const Tensor<T, Cuda>& w_in,
                                        const Tensor<float, Cuda>& rstd_in, const Tensor<T, Cuda>& g_in,
                                        RmsNormStyle style, bool need_dx = true, bool need_dw = true) {
  static_assert(!std::is_same_v<T, double>, "rms_norm on Cuda takes f32, bf16 or f16; f64 stays on the CPU");
  ::distill::detail::rmsnorm::check_shapes(x_in.shape(), w_in.shape(), "rms_norm_backward");
  check_same_shape(x_in.shape(), g_in.shape(), "rms_norm_backward");
  const Tensor<T, Cuda> x = x_in.contiguous(), w = w_in.contiguous(), g = g_in.contiguous();
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  DISTILL_CHECK(rstd_in.numel() == rows, "rms_norm_backward: rstd has ", rstd_in.numel(), " values for ", rows,
                " rows");
  RmsNormGrads<T, Cuda> out;
  if (need_dx) out.dx = Tensor<T, Cuda>::empty(x.shape());
  if (need_dw) out.dw = Tensor<T, Cuda>::empty(w.shape());
  if ((!need_dx && !need_dw) || n == 0) return out;
  const Tensor<float, Cuda> rstd = rstd_in.contiguous();
  rms_norm_backward(x.data(), w.data(), rstd.data(), g.data(), need_dx ? out.dx.data() : nullptr,
                    need_dw ? out.dw.data() : nullptr, rows, n, style);
  return out;
}

}  // namespace cuda
#endif

// ------------------------------------------------------------------------------------------------
// y = rms_norm(x, w) over the last axis; x [..., C], w [C] (Qwen3 norm weights init to ones, Gemma3's to zeros).
template <FloatingDtype T, class D>
Var<T, D> rms_norm(const Var<T, D>& x, const Var<T, D>& w, double eps, RmsNormStyle style) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    static_assert(!std::is_same_v<T, double>, "rms_norm on Cuda takes f32, bf16 or f16; f64 stays on the CPU");
    NvtxRange nvtx("rms_norm");
    auto fwd = cuda::rms_norm_forward(x.value(), w.value(), eps, style);
    auto rstd = fwd.rstd;  // [rows]
    return Var<T, D>::record("rms_norm", fwd.y, {x.node(), w.node()}, [x, w, rstd, style](auto& self) {
      NvtxRange nvtx_bwd("rms_norm_backward");
      const bool gx = x.requires_grad(), gw = w.requires_grad();
      auto gr = cuda::rms_norm_backward(x.value(), w.value(), rstd, self.grad, style, gx, gw);
      if (gx) autograd::accumulate(x.grad_buffer(), gr.dx);
      if (gw) autograd::accumulate(w.grad_buffer(), gr.dw);
    });
#else
    static_assert(expr::dependent_false_v<D>,
                  "rms_norm on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    auto fwd = cpu::rms_norm_forward(x.value(), w.value(), eps, style);
    auto rstd = fwd.rstd;  // [rows]
    return Var<T>::record("rms_norm", fwd.y, {x.node(), w.node()}, [x, w, rstd, style](auto& self) {
      const bool gx = x.requires_grad(), gw = w.requires_grad();
      auto gr = cpu::rms_norm_backward(x.value(), w.value(), rstd, self.grad, style, gx, gw);
      if (gx) autograd::accumulate(x.grad_buffer(), gr.dx);
      if (gw) autograd::accumulate(w.grad_buffer(), gr.dw);
    });
  }
}

}  // namespace distill
