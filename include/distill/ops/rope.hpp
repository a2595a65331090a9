// Rotary position embedding, rotate-half (NeoX) convention over the full head dim D (SPEC §1.4, §2.5):
// dims i and i + D/2 form a rotation pair (not interleaved 2i, 2i+1).
//   inv_freq[i] = 1 / theta^(float32(2i) / D)    all in float32, exactly as HF/torch, then / linear_factor
//   angle[p, i] = float32(p) * inv_freq[i]       in float32
//   y1 = x1 * cos - x2 * sin,  y2 = x2 * cos + x1 * sin          (x1 = x[..., :D/2], x2 = x[..., D/2:])
// Backward is the inverse rotation: dx1 = g1 * cos + g2 * sin, dx2 = g2 * cos - g1 * sin.
// Rounding points for bf16/f16 (HF): cos/sin are cast to the model dtype, each product is rounded to it,
// and so is the sum. For f32/f64 those casts are identities (tables stay f32).
//
// Layout: x [B, T, H, D]; positions [T] (shared by the batch) or [B, T], int32. Tables: [positions..., D/2].
// Backward functions accumulate into the parents' gradients, never overwrite.
// On Cuda (f32, bf16, f16) the tables are still made on the host by rope_cos_sin (so both backends use the
// same bits), uploaded once and cached (see detail::rope::device_tables), and kernels/rope.cu rotates with
// the CPU's rounding points.
#pragma once
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/core/nvtx.hpp"
#include "distill/core/parallel.hpp"
#include "distill/cuda/rope.hpp"

namespace distill {

struct RopeConfig {
  double theta;                // rope_theta / rope_local_base_freq
  double linear_factor = 1.0;  // rope_scaling {"rope_type": "linear", "factor": f}: inv_freq / f
};

// cos and sin of the angles, float32 as HF computes them. [T, D/2] or [B, T, D/2].
struct RopeTables {
  Tensor<float> cos;
  Tensor<float> sin;
};

namespace detail::rope {

inline constexpr int64_t kElemGrain = 1 << 14;

template <class T>
inline constexpr bool is_16bit_v = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

inline void check_config(int64_t D, const RopeConfig& cfg) {
  DISTILL_CHECK(D > 0 && D % 2 == 0, "rope: the head dim must be positive and even, got ", D);
  DISTILL_CHECK(cfg.theta > 0 && std::isfinite(cfg.theta), "rope: theta must be positive, got ", cfg.theta);
  DISTILL_CHECK(cfg.linear_factor > 0 && std::isfinite(cfg.linear_factor),
                "rope: the linear scaling factor must be positive, got ", cfg.linear_factor);
}

inline void check_positions(const Shape& x, const Shape& pos) {
  if (x.rank() != 4) throw ShapeError("rope: x must be [B, T, H, D], got " + x.str());
  const bool ok = (pos.rank() == 1 && pos[0] == x[1]) || (pos.rank() == 2 && pos[0] == x[0] && pos[1] == x[1]);
  if (!ok) throw ShapeError("rope: positions " + pos.str() + " must be [T] or [B, T] for x " + x.str());
}

// Tables [T, D/2] or [B, T, D/2] for x [B, T, H, D].
inline void check_tables(const Shape& x, const RopeTables& tab) {
  if (x.rank() != 4) throw ShapeError("rope: x must be [B, T, H, D], got " + x.str());
  check_same_shape(tab.cos.shape(), tab.sin.shape(), "rope tables");
  const Shape& t = tab.cos.shape();
  const bool ok = t.rank() >= 2 && t.back() * 2 == x[3] &&
                  ((t.rank() == 2 && t[0] == x[1]) || (t.rank() == 3 && t[0] == x[0] && t[1] == x[1]));
  if (!ok) throw ShapeError("rope: tables " + t.str() + " must be [T, D/2] or [B, T, D/2] for x " + x.str());
}

// Rotates every [D] row of x by the table row of its (b, t); `inverse` flips the sign of sin.
template <class T>
Tensor<T> rotate(const Tensor<T>& x_in, const RopeTables& tab, bool inverse) {
  using C = compute_t<T>;
  check_tables(x_in.shape(), tab);
  const Tensor<T> x = x_in.contiguous();
  const Tensor<float> ct = tab.cos.contiguous(), st = tab.sin.contiguous();
  const int64_t B = x.dim(0), Tn = x.dim(1), H = x.dim(2), D = x.dim(3), half = D / 2;
  const bool per_batch = ct.rank() == 3;
  auto y = Tensor<T>::empty(x.shape());  // [B, T, H, D]
  const T* xp = x.data();
  T* yp = y.data();
  const C sign = inverse ? C(-1) : C(1);
  parallel_for(B * Tn, std::max<int64_t>(1, kElemGrain / std::max<int64_t>(H * D, 1)), [&](int64_t b0, int64_t e0) {
    std::vector<C> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t bt = b0; bt < e0; ++bt) {
      const int64_t trow = per_batch ? bt : bt % Tn;
      for (int64_t i = 0; i < half; ++i) {
        // HF casts cos/sin to the model dtype before use.
        c[static_cast<size_t>(i)] = to_compute<T>(static_cast<T>(ct.data()[trow * half + i]));
        s[static_cast<size_t>(i)] = sign * to_compute<T>(static_cast<T>(st.data()[trow * half + i]));
      }
      for (int64_t h = 0; h < H; ++h) {
        const T* xr = xp + (bt * H + h) * D;  // [D]
        T* yr = yp + (bt * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const C x1 = to_compute<T>(xr[i]), x2 = to_compute<T>(xr[i + half]);
          const C ci = c[static_cast<size_t>(i)], si = s[static_cast<size_t>(i)];
          if constexpr (is_16bit_v<T>) {
            auto r = [](C v) { return to_compute<T>(from_compute<T>(v)); };  // a bf16/f16 product
            yr[i] = from_compute<T>(r(x1 * ci) - r(x2 * si));
            yr[i + half] = from_compute<T>(r(x2 * ci) + r(x1 * si));
          } else {
            yr[i] = from_compute<T>(x1 * ci - x2 * si);
            yr[i + half] = from_compute<T>(x2 * ci + x1 * si);
          }
        }
      }
    }
  });
  return y;
}

// Rotation in double with HF's 16-bit rounding points; sign = -1 for the inverse.
template <class T>
Tensor<T> ref_rotate(const Tensor<T>& x, const Tensor<int32_t>& positions, const RopeConfig& cfg, double sign) {
  check_positions(x.shape(), positions.shape());
  const int64_t B = x.dim(0), Tn = x.dim(1), H = x.dim(2), D = x.dim(3), half = D / 2;
  check_config(D, cfg);
  // inv_freq exactly per SPEC (float32), recomputed here by plain loop.
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float v = 1.0f / std::pow(static_cast<float>(cfg.theta), static_cast<float>(2 * i) / static_cast<float>(D));
    if (cfg.linear_factor != 1.0) v /= static_cast<float>(cfg.linear_factor);
    inv[static_cast<size_t>(i)] = v;
  }
  constexpr bool q16 = is_16bit_v<T>;
  auto r = [](double v) {  // a value rounded to T (16-bit only)
    return q16 ? static_cast<double>(to_compute<T>(static_cast<T>(static_cast<float>(v)))) : v;
  };
  auto y = Tensor<T>::empty(x.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const int32_t p = positions.rank() == 1 ? positions(t) : positions(b, t);
      for (int64_t i = 0; i < half; ++i) {
        const float a = static_cast<float>(p) * inv[static_cast<size_t>(i)];  // float32 angle, as HF
        const double c = r(std::cos(static_cast<double>(a))), s = sign * r(std::sin(static_cast<double>(a)));
        for (int64_t h = 0; h < H; ++h) {
          const double x1 = static_cast<double>(to_compute<T>(x(b, t, h, i)));
          const double x2 = static_cast<double>(to_compute<T>(x(b, t, h, i + half)));
          y(b, t, h, i) = static_cast<T>(static_cast<compute_t<T>>(r(r(x1 * c) - r(x2 * s))));
          y(b, t, h, i + half) = static_cast<T>(static_cast<compute_t<T>>(r(r(x2 * c) + r(x1 * s))));
        }
      }
    }
  return y;
}

}  // namespace detail::rope

// inv_freq[i] = 1 / theta^(2i / D), i < D/2, float32 throughout (torch: base ** (arange(0, D, 2).float() / D)),
// then divided by the linear scaling factor in float32.
inline std::vector<float> rope_inv_freq(int64_t D, const RopeConfig& cfg) {
  detail::rope::check_config(D, cfg);
  const float base = static_cast<float>(cfg.theta), factor = static_cast<float>(cfg.linear_factor);
  std::vector<float> inv(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(D);
    float v = 1.0f / std::pow(base, expo);
    if (cfg.linear_factor != 1.0) v = v / factor;
    inv[static_cast<size_t>(i)] = v;
  }
  return inv;
}

// cos/sin tables for positions [T] or [B, T] -> [T, D/2] or [B, T, D/2]; angles float32(p) * inv_freq[i].
inline RopeTables rope_cos_sin(const Tensor<int32_t>& positions, int64_t D, const RopeConfig& cfg) {
  DISTILL_CHECK(positions.rank() == 1 || positions.rank() == 2, "rope: positions must be [T] or [B, T], got ",
                positions.shape().str());
  const std::vector<float> inv = rope_inv_freq(D, cfg);
  const int64_t half = D / 2, n = positions.numel();
  Shape ts = positions.shape();
  ts.push_back(half);
  RopeTables tab{Tensor<float>::empty(ts), Tensor<float>::empty(ts)};
  const Tensor<int32_t> pos = positions.contiguous();
  parallel_for(n, std::max<int64_t>(1, detail::rope::kElemGrain / std::max<int64_t>(half, 1)),
               [&](int64_t b, int64_t e) {
                 for (int64_t k = b; k < e; ++k) {
                   const float p = static_cast<float>(pos.data()[k]);
                   for (int64_t i = 0; i < half; ++i) {
                     const float a = p * inv[static_cast<size_t>(i)];
                     tab.cos.data()[k * half + i] = std::cos(a);
                     tab.sin.data()[k * half + i] = std::sin(a);
                   }
                 }
               });
  return tab;
}

// ------------------------------------------------------------------------------------------------
namespace ref {

template <FloatingDtype T>
Tensor<T> rope(const Tensor<T>& x, const Tensor<int32_t>& positions, const RopeConfig& cfg) {
  return detail::rope::ref_rotate(x, positions, cfg, 1.0);
}
// dx from dy: the inverse rotation.
template <FloatingDtype T>
Tensor<T> rope_backward(const Tensor<T>& g, const Tensor<int32_t>& positions, const RopeConfig& cfg) {
  return detail::rope::ref_rotate(g, positions, cfg, -1.0);
}

}  // namespace ref

// ------------------------------------------------------------------------------------------------
namespace cpu {

template <FloatingDtype T>
Tensor<T> rope_forward(const Tensor<T>& x, const RopeTables& tab) {
  return detail::rope::rotate(x, tab, false);
}
template <FloatingDtype T>
Tensor<T> rope_backward(const Tensor<T>& g, const RopeTables& tab) {
  return detail::rope::rotate(g, tab, true);
}

}  // namespace cpu

// ------------------------------------------------------------------------------------------------
#ifdef DISTILL_WITH_CUDA
// rope_cos_sin's tables on the device (contiguous f32, the same bits).
struct RopeDeviceTables {
  Tensor<float, Cuda> cos;  // [T, D/2] or [B, T, D/2]
  Tensor<float, Cuda> sin;
};

namespace detail::rope {

inline void check_device_tables(const Shape& x, const RopeDeviceTables& tab) {
  if (x.rank() != 4) throw ShapeError("rope: x must be [B, T, H, D], got " + x.str());
  check_same_shape(tab.cos.shape(), tab.sin.shape(), "rope tables");
  const Shape& t = tab.cos.shape();
  const bool ok = t.rank() >= 2 && t.back() * 2 == x[3] &&
                  ((t.rank() == 2 && t[0] == x[1]) || (t.rank() == 3 && t[0] == x[0] && t[1] == x[1]));
  if (!ok) throw ShapeError("rope: tables " + t.str() + " must be [T, D/2] or [B, T, D/2] for x " + x.str());
}

// Uploads of the host tables, cached so a step's layers (and repeated calls) copy them once:
//  - by the identity of the host RopeTables' storage (held weakly: an entry dies with its tables, so a new
//    table at a recycled address is never mistaken for an old one). Tables are treated as immutable once
//    made (rope_cos_sin always makes fresh ones); writing into them after a Cuda rope call is not seen.
//  - by (positions, D, theta, linear factor) for rope(x, positions, cfg), which then skips rope_cos_sin too.
// Both per device, at most kTableCacheEntries each (oldest dropped first). The cache is never destroyed:
// device memory must not be returned after the CUDA runtime has shut down at exit.
inline constexpr size_t kTableCacheEntries = 8;

struct TableCache {
  struct ByStorage {
    std::weak_ptr<Storage<float, Cpu>> cos, sin;
    const float* cos_data;
    const float* sin_data;
    Shape shape;
    int device;
    RopeDeviceTables dev;
  };
  struct ByPositions {
    std::vector<int32_t> positions;
    Shape shape;
    int64_t D;
    double theta, linear_factor;
    int device;
    RopeDeviceTables dev;
  };
  std::mutex mu;
  std::vector<ByStorage> by_storage;
  std::vector<ByPositions> by_positions;
};

inline TableCache& table_cache() {
  static TableCache* cache = new TableCache;  // intentionally leaked (see above)
  return *cache;
}

inline RopeDeviceTables upload(const RopeTables& tab) {
  return RopeDeviceTables{tab.cos.contiguous().template to<Cuda>(), tab.sin.contiguous().template to<Cuda>()};
}

inline RopeDeviceTables device_tables(const RopeTables& tab) {
  if (!tab.cos.is_contiguous() || !tab.sin.is_contiguous() || !tab.cos.storage() || !tab.sin.storage())
    return upload(tab);  // views (and empty tables) are not cached
  TableCache& c = table_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  std::erase_if(c.by_storage, [](const TableCache::ByStorage& e) { return e.cos.expired() || e.sin.expired(); });
  const int device = cuda::current_device();
  for (const auto& e : c.by_storage)
    if (e.device == device && e.cos_data == tab.cos.data() && e.sin_data == tab.sin.data() &&
        e.shape == tab.cos.shape() && e.cos.lock() == tab.cos.storage() && e.sin.lock() == tab.sin.storage())
      return e.dev;
  RopeDeviceTables dev = upload(tab);
  if (c.by_storage.size() >= kTableCacheEntries) c.by_storage.erase(c.by_storage.begin());
  c.by_storage.push_back(
      {tab.cos.storage(), tab.sin.storage(), tab.cos.data(), tab.sin.data(), tab.cos.shape(), device, dev});
  return dev;
}

inline RopeDeviceTables device_tables(const Tensor<int32_t>& positions, int64_t D, const RopeConfig& cfg) {
  const Tensor<int32_t> pos = positions.contiguous();
  const int32_t* p = pos.data();
  TableCache& c = table_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const int device = cuda::current_device();
  for (const auto& e : c.by_positions)
    if (e.device == device && e.D == D && e.theta == cfg.theta && e.linear_factor == cfg.linear_factor &&
        e.shape == pos.shape() && std::equal(e.positions.begin(), e.positions.end(), p))
      return e.dev;
  RopeDeviceTables dev = upload(rope_cos_sin(pos, D, cfg));
  if (c.by_positions.size() >= kTableCacheEntries) c.by_positions.erase(c.by_positions.begin());
  c.by_positions.push_back(
      {std::vector<int32_t>(p, p + pos.numel()), pos.shape(), D, cfg.theta, cfg.linear_factor, device, dev});
  return dev;
}

}  // namespace detail::rope

namespace cuda {

// The Tensor-level GPU rotation (launcher in distill/cuda/rope.hpp); inverse = the backward.
template <FloatingDtype T>
Tensor<T, Cuda> rope_rotate(const Tensor<T, Cuda>& x_in, const RopeDeviceTables& tab, bool inverse) {
  static_assert(!std::is_same_v<T, double>, "rope on Cuda takes f32, bf16 or f16; f64 stays on the CPU");
  ::distill::detail::rope::check_device_tables(x_in.shape(), tab);
  const Tensor<T, Cuda> x = x_in.contiguous();
  const Tensor<float, Cuda> c = tab.cos.contiguous(), s = tab.sin.contiguous();
  auto y = Tensor<T, Cuda>::empty(x.shape());  // [B, T, H, D]
  rope_rotate(x.data(), y.data(), c.data(), s.data(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), c.rank() == 3, inverse);
  return y;
}
template <FloatingDtype T>
Tensor<T, Cuda> rope_forward(const Tensor<T, Cuda>& x, const RopeDeviceTables& tab) {
  return rope_rotate(x, tab, false);
}
template <FloatingDtype T>
Tensor<T, Cuda> rope_backward(const Tensor<T, Cuda>& g, const RopeDeviceTables& tab) {
  return rope_rotate(g, tab, true);
}
// With host tables (uploaded through the cache).
template <FloatingDtype T>
Tensor<T, Cuda> rope_forward(const Tensor<T, Cuda>& x, const RopeTables& tab) {
  return rope_rotate(x, ::distill::detail::rope::device_tables(tab), false);
}
template <FloatingDtype T>
Tensor<T, Cuda> rope_backward(const Tensor<T, Cuda>& g, const RopeTables& tab) {
  return rope_rotate(g, ::distill::detail::rope::device_tables(tab), true);
}

}  // namespace cuda

namespace detail::rope {
// The recorded op on the GPU.
template <class T>
Var<T, Cuda> rope_on_device(const Var<T, Cuda>& x, const RopeDeviceTables& tab) {
  auto y = cuda::rope_forward(x.value(), tab);  // [B, T, H, D]
  return Var<T, Cuda>::record("rope", y, {x.node()}, [x, tab](auto& self) {
    NvtxRange nvtx("rope_backward");
    if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), cuda::rope_backward(self.grad, tab));
  });
}
}  // namespace detail::rope
#endif

// ------------------------------------------------------------------------------------------------
// RoPE with precomputed tables (compute them once per step with rope_cos_sin and share across layers).
template <FloatingDtype T, class D>
Var<T, D> rope(const Var<T, D>& x, const RopeTables& tab) {
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    static_assert(!std::is_same_v<T, double>, "rope on Cuda takes f32, bf16 or f16; f64 stays on the CPU");
    NvtxRange nvtx("rope");
    detail::rope::check_tables(x.shape(), tab);
    return detail::rope::rope_on_device(x, detail::rope::device_tables(tab));
#else
    static_assert(expr::dependent_false_v<D>,
                  "rope on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    auto y = cpu::rope_forward(x.value(), tab);  // [B, T, H, D]
    return Var<T>::record("rope", y, {x.node()}, [x, tab](auto& self) {
      if (x.requires_grad()) autograd::accumulate(x.grad_buffer(), cpu::rope_backward(self.grad, tab));
    });
  }
}

// RoPE of x [B, T, H, D] at positions [T] or [B, T].
template <FloatingDtype T, class D>
Var<T, D> rope(const Var<T, D>& x, const Tensor<int32_t>& positions, const RopeConfig& cfg) {
  detail::rope::check_positions(x.shape(), positions.shape());
  if constexpr (std::is_same_v<D, Cuda>) {
#ifdef DISTILL_WITH_CUDA
    static_assert(!std::is_same_v<T, double>, "rope on Cuda takes f32, bf16 or f16; f64 stays on the CPU");
    NvtxRange nvtx("rope");
    detail::rope::check_config(x.dim(3), cfg);
    return detail::rope::rope_on_device(x, detail::rope::device_tables(positions, x.dim(3), cfg));
#else
    static_assert(expr::dependent_false_v<D>,
                  "rope on Cuda needs the CUDA kernels: link distill::kernels (built when nvcc is found)");
#endif
  } else {
    return rope(x, rope_cos_sin(positions, x.dim(3), cfg));
  }
}

}  // namespace distill
