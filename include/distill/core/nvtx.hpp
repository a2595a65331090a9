// NVTX ranges named like the activations ("attn_norm", layer). No-ops unless DISTILL_WITH_NVTX is
// defined and the NVTX3 headers are available (the CUDA backend turns it on).
#pragma once
#if defined(DISTILL_WITH_NVTX) && __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define DISTILL_NVTX_ENABLED 1
#endif
#include <string>

namespace distill {

class NvtxRange {
 public:
  explicit NvtxRange(const char* name) {
#ifdef DISTILL_NVTX_ENABLED
    nvtxRangePushA(name);
#else
    (void)name;
#endif
  }
  NvtxRange(const std::string& name, int layer) : NvtxRange((name + "." + std::to_string(layer)).c_str()) {}
  ~NvtxRange() {
#ifdef DISTILL_NVTX_ENABLED
    nvtxRangePop();
#endif
  }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace distill
