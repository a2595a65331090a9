// RoPE on the GPU: the launcher defined in kernels/rope.cu (distill::kernels) and its plan (plain host code,
// checkable without a GPU). The Tensor-level entry points and the cached upload of the cos/sin tables are in
// distill/ops/rope.hpp (cuda::rope_forward / cuda::rope_backward).
//
// Contract (the numerics of cpu:: in ops/rope.hpp, rotate-half convention, SPEC §1.4):
//  - x, y: contiguous [B, T, H, D] device buffers, T = f32, bf16 or f16; cos, sin: contiguous f32 device
//    tables [T, D/2] (shared by the batch) or [B, T, D/2], the very tables rope_cos_sin makes on the host.
//  - y1 = x1 * c - x2 * s, y2 = x2 * c + x1 * s with c, s the table values rounded to T (and s negated for
//    the inverse rotation, the backward); for 16-bit T every product and the sum are rounded to T, as the
//    CPU does; f32 products are not fused into FMAs. So a GPU result equals the CPU's bit for bit (f32 too,
//    unless the host compiler contracts its f32 loop into FMAs).
//  - x and y must not overlap.
// Host code only: no CUDA headers here.
#pragma once
#include <cstdint>

namespace distill::cuda {

// One thread rotates `vec` pairs (i, i + D/2) of one [D] row: 16-byte loads of x when D/2 is a multiple of
// 16 / sizeof(T) and the buffers are 16-byte aligned, else one pair. Indices are 32-bit when every offset
// fits.
struct RopePlan {
  int vec = 1;
  int64_t items = 0;  // B * T * H * (D / 2) / vec
  bool index32 = true;
};

inline RopePlan plan_rope(int64_t B, int64_t Tn, int64_t H, int64_t D, int elem_bytes, bool aligned16) {
  RopePlan p;
  const int64_t half = D / 2, vmax = 16 / elem_bytes;
  p.vec = (aligned16 && vmax > 1 && half % vmax == 0) ? static_cast<int>(vmax) : 1;
  p.items = B * Tn * H * (half / p.vec);
  p.index32 = B * Tn * H * D < (int64_t{1} << 31) && B * Tn * half < (int64_t{1} << 31);
  return p;
}

// y = x rotated by the tables (inverse: by the opposite angle); B, T, H >= 0, D even and > 0. On current_stream().
template <class T>
void rope_rotate(const T* x, T* y, const float* cos, const float* sin, int64_t B, int64_t Tn, int64_t H, int64_t D,
                 bool per_batch_tables, bool inverse);

}  // namespace distill::cuda
