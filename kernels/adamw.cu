// AdamW for f32 master parameters (launcher declared in include/distill/cuda/adamw.hpp): a multi-tensor
// kernel where every block updates one 2048-element chunk of one tensor, reading p, g, m, v once and writing
// p, m, v once. Tensors whose four buffers are 16-byte aligned go through float4 loads (each thread issues
// all its loads before any arithmetic); the others, and the tail of the last chunk, element by element.
// The arithmetic is cpu::adamw_step's, with explicitly rounded intrinsics (no contraction into FMAs) so the
// GPU rounds exactly as the CPU path does.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "distill/cuda/adamw.hpp"
#include "distill/cuda/check.hpp"

namespace distill::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kVecPerThread = static_cast<int>(detail::kAdamWChunk / (4 * kThreads));  // float4 loads per thread
static_assert(detail::kAdamWChunk == int64_t{4} * kThreads * kVecPerThread, "a chunk is whole float4 rows");
constexpr int kMaxTensors = detail::kAdamWMaxTensors;

// The kernel's argument table (passed by value: about 1.9 KB, under the 4 KB parameter limit).
struct AdamWBatch {
  float* p[kMaxTensors];
  const float* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  int64_t n[kMaxTensors];
  float step_size[kMaxTensors];
  float bc2_sqrt[kMaxTensors];
  int64_t first_block[kMaxTensors + 1];
  int count;
};
static_assert(sizeof(AdamWBatch) + sizeof(AdamWSharedArgs) < 4000, "kernel parameters must stay under 4 KB");

struct Scalars {
  float decay, w, one_minus_w, beta2, one_minus_beta2, eps, grad_scale, neg_step, bc2_sqrt;
  bool small_weight;
};

// One element, in cpu::adamw_step's order of operations.
__device__ __forceinline__ void update(float& p, float g, float& m, float& v, const Scalars& s) {
  const float gi = __fmul_rn(g, s.grad_scale);
  const float mi = s.small_weight ? __fadd_rn(m, __fmul_rn(s.w, __fsub_rn(gi, m)))
                                  : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, m), s.one_minus_w));
  const float vi = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, gi), gi));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
  p = __fadd_rn(__fmul_rn(p, s.decay), __fdiv_rn(__fmul_rn(s.neg_step, mi), denom));
  m = mi;
  v = vi;
}

__global__ void __launch_bounds__(kThreads, 4) adamw_kernel(AdamWBatch b, AdamWSharedArgs sh) {
  // This block's tensor: the last k with first_block[k] <= blockIdx.x (the same answer in every thread).
  const int64_t block = blockIdx.x;
  int k = 0;
  while (k + 1 < b.count && b.first_block[k + 1] <= block) ++k;
  const int64_t n = b.n[k];
  const int64_t start = (block - b.first_block[k]) * detail::kAdamWChunk;
  const int64_t end = start + detail::kAdamWChunk < n ? start + detail::kAdamWChunk : n;
  float* __restrict__ gp = b.p[k];
  const float* __restrict__ gg = b.g[k];
  float* __restrict__ gm = b.m[k];
  float* __restrict__ gv = b.v[k];

  Scalars s;
  s.decay = sh.decay;
  s.w = sh.one_minus_beta1;
  s.one_minus_w = __fsub_rn(1.0f, sh.one_minus_beta1);
  s.small_weight = sh.one_minus_beta1 < 0.5f;
  s.beta2 = sh.beta2;
  s.one_minus_beta2 = sh.one_minus_beta2;
  s.eps = sh.eps;
  s.grad_scale = sh.grad_scale;
  s.neg_step = -b.step_size[k];
  s.bc2_sqrt = b.bc2_sqrt[k];

  const bool aligned = ((reinterpret_cast<uintptr_t>(gp) | reinterpret_cast<uintptr_t>(gg) |
                         reinterpret_cast<uintptr_t>(gm) | reinterpret_cast<uintptr_t>(gv)) &
                        15u) == 0;
  int64_t scalar_from = start;
  if (aligned) {
    // start is a multiple of 4 (the chunk is), so float4 index start/4 + j covers elements [start, vec_end).
    const int64_t vec_end = start + ((end - start) / 4) * 4;
    const int64_t v0 = start / 4, nvec = (vec_end - start) / 4;
    float4 rp[kVecPerThread], rg[kVecPerThread], rm[kVecPerThread], rv[kVecPerThread];
#pragma unroll
    for (int j = 0; j < kVecPerThread; ++j) {
      const int64_t i = j * kThreads + threadIdx.x;
      if (i < nvec) {
        rp[j] = reinterpret_cast<const float4*>(gp)[v0 + i];
        rg[j] = reinterpret_cast<const float4*>(gg)[v0 + i];
        rm[j] = reinterpret_cast<const float4*>(gm)[v0 + i];
        rv[j] = reinterpret_cast<const float4*>(gv)[v0 + i];
      }
    }
#pragma unroll
    for (int j = 0; j < kVecPerThread; ++j) {
      const int64_t i = j * kThreads + threadIdx.x;
      if (i < nvec) {
        update(rp[j].x, rg[j].x, rm[j].x, rv[j].x, s);
        update(rp[j].y, rg[j].y, rm[j].y, rv[j].y, s);
        update(rp[j].z, rg[j].z, rm[j].z, rv[j].z, s);
        update(rp[j].w, rg[j].w, rm[j].w, rv[j].w, s);
        reinterpret_cast<float4*>(gp)[v0 + i] = rp[j];
        reinterpret_cast<float4*>(gm)[v0 + i] = rm[j];
        reinterpret_cast<float4*>(gv)[v0 + i] = rv[j];
      }
    }
    scalar_from = vec_end;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += kThreads) {
    float p = gp[i], m = gm[i], v = gv[i];
    update(p, gg[i], m, v, s);
    gp[i] = p;
    gm[i] = m;
    gv[i] = v;
  }
}

}  // namespace

void adamw_step(const AdamWTensorArgs* tensors, int count, const AdamWSharedArgs& shared) {
  if (count <= 0) return;
  DISTILL_CHECK(tensors != nullptr, "adamw_step: null tensor list");
  std::vector<int64_t> sizes(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    const AdamWTensorArgs& t = tensors[i];
    DISTILL_CHECK(t.n == 0 || (t.p && t.g && t.m && t.v), "adamw_step: tensor ", i, " has a null buffer");
    sizes[static_cast<size_t>(i)] = t.n;
  }
  for (const detail::AdamWLaunch& launch : detail::adamw_launch_plan(sizes)) {
    AdamWBatch b{};
    b.count = static_cast<int>(launch.tensors.size());
    for (int j = 0; j < b.count; ++j) {
      const AdamWTensorArgs& t = tensors[launch.tensors[static_cast<size_t>(j)]];
      b.p[j] = t.p;
      b.g[j] = t.g;
      b.m[j] = t.m;
      b.v[j] = t.v;
      b.n[j] = t.n;
      b.step_size[j] = t.step_size;
      b.bc2_sqrt[j] = t.bc2_sqrt;
    }
    for (int j = 0; j <= b.count; ++j) b.first_block[j] = launch.first_block[static_cast<size_t>(j)];
    adamw_kernel<<<static_cast<unsigned>(launch.blocks()), kThreads, 0, stream()>>>(b, shared);
    DISTILL_CHECK_LAUNCH();
  }
}

}  // namespace distill::cuda
