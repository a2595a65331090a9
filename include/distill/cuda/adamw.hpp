// AdamW on the GPU: the launcher defined in kernels/adamw.cu (distill::kernels). One fused pass per element
// reads p, g, m, v and writes p, m, v (16 bytes read, 12 written), for a whole list of parameter tensors at
// once (multi-tensor launch: every block updates one chunk of one tensor, so hundreds of small LoRA tensors
// cost a handful of launches). The arithmetic is exactly cpu::adamw_step's (distill/train/adamw.hpp), in
// f32, without fused multiply-adds, so both backends round the same way.
// Host code only: no CUDA headers here. The batching plan is plain C++ so the CPU tests can check it.
#pragma once
#include <cstdint>
#include <vector>

#include "distill/core/error.hpp"

namespace distill::cuda {

// One parameter tensor: contiguous f32 buffers of n elements on the current device, and the scalars that
// depend on its own step count t (torch counts steps per parameter).
struct AdamWTensorArgs {
  float* p = nullptr;
  const float* g = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  float step_size = 0;  // lr / (1 - beta1^t)
  float bc2_sqrt = 1;   // sqrt(1 - beta2^t)
};

// The scalars shared by every tensor of a step (see AdamWScalars in distill/train/adamw.hpp).
struct AdamWSharedArgs {
  float decay = 1;            // 1 - lr * weight_decay
  float one_minus_beta1 = 0;  // torch's lerp weight
  float beta2 = 0;
  float one_minus_beta2 = 0;
  float eps = 0;
  float grad_scale = 1;  // g is multiplied by it first (global-norm clipping)
};

// Updates every listed tensor in place (p, m, v), on current_stream().
void adamw_step(const AdamWTensorArgs* tensors, int count, const AdamWSharedArgs& shared);

namespace detail {

// Elements per block (256 threads x 2 float4 each) and tensors per launch (the kernel's argument table must
// stay under the 4 KiB kernel-parameter limit).
inline constexpr int64_t kAdamWChunk = 2048;
inline constexpr int kAdamWMaxTensors = 32;
inline constexpr int64_t kAdamWMaxBlocks = int64_t{1} << 30;  // well under gridDim.x's 2^31 - 1

// One launch: tensors [first, first + count) of the list (empty ones left out), `blocks` chunks in all.
struct AdamWLaunch {
  std::vector<int> tensors;          // indices into the caller's list
  std::vector<int64_t> first_block;  // per listed tensor, then the total (size tensors.size() + 1)
  int64_t blocks() const { return first_block.empty() ? 0 : first_block.back(); }
};

// Groups tensors of these sizes into launches of at most kAdamWMaxTensors tensors and kAdamWMaxBlocks chunks.
inline std::vector<AdamWLaunch> adamw_launch_plan(const std::vector<int64_t>& sizes) {
  std::vector<AdamWLaunch> plan;
  AdamWLaunch cur;
  cur.first_block.push_back(0);
  for (size_t i = 0; i < sizes.size(); ++i) {
    DISTILL_CHECK(sizes[i] >= 0, "adamw: negative tensor size ", sizes[i]);
    if (sizes[i] == 0) continue;
    const int64_t chunks = (sizes[i] + kAdamWChunk - 1) / kAdamWChunk;
    DISTILL_CHECK(chunks <= kAdamWMaxBlocks, "adamw: a tensor of ", sizes[i], " elements is too large for one launch");
    if (static_cast<int>(cur.tensors.size()) == kAdamWMaxTensors || cur.blocks() + chunks > kAdamWMaxBlocks) {
      plan.push_back(std::move(cur));
      cur = AdamWLaunch{};
      cur.first_block.push_back(0);
    }
    cur.tensors.push_back(static_cast<int>(i));
    cur.first_block.push_back(cur.blocks() + chunks);
  }
  if (!cur.tensors.empty()) plan.push_back(std::move(cur));
  return plan;
}

}  // namespace detail

}  // namespace distill::cuda
