// Shared helpers of the GPU benchmarks (bench/gpu_*.cpp; built with the CUDA kernels, run by
// scripts/device_check.sh). Each benchmark times with CUDA events (median of repetitions after warm-up)
// and prints one row per kernel:
//   RESULT|<kernel>|<shape>|<value>|<unit>|<% of ceiling>|<ceiling name>
// which device_check.sh gathers into its table. Ceilings are measured in the same run: device-to-device
// copy bandwidth (bytes read + written) for memory-bound kernels, cuBLASLt bf16 GEMM TFLOP/s for matmuls.
#pragma once
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "distill/cuda/runtime.hpp"

namespace distill::bench {

// Median milliseconds of fn() over `reps` timed runs after `warmup` untimed ones.
template <class F>
double time_ms(F&& fn, int warmup = 3, int reps = 20) {
  for (int i = 0; i < warmup; ++i) fn();
  cuda::synchronize();
  std::vector<double> t;
  cuda::EventTimer timer;
  for (int i = 0; i < reps; ++i) {
    timer.start();
    fn();
    t.push_back(timer.stop_ms());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Device-to-device copy bandwidth in GB/s (1e9 bytes/s), counting bytes read plus bytes written,
// for a copy of `bytes` (default 256 MiB: far past L2).
inline double copy_bandwidth_gbps(size_t bytes = size_t{256} << 20) {
  void* a = cuda::device_malloc(bytes);
  void* b = cuda::device_malloc(bytes);
  cuda::memset_device_zero(a, bytes);
  const double ms = time_ms([&] { cuda::memcpy_device_to_device(b, a, bytes); });
  cuda::device_free(a);
  cuda::device_free(b);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

inline void report(const std::string& kernel, const std::string& shape, double value, const char* unit, double ceiling,
                   const char* ceiling_name) {
  const double pct = ceiling > 0 ? 100.0 * value / ceiling : 0.0;
  std::printf("RESULT|%s|%s|%.1f|%s|%.0f|%s\n", kernel.c_str(), shape.c_str(), value, unit, pct, ceiling_name);
  std::fflush(stdout);
}

// A benchmark's main prints this first: without a GPU it says so and exits 0 (nothing to measure).
inline bool gpu_or_skip(const char* name) {
  if (cuda::device_count() == 0) {
    std::printf("%s: skipped, %s\n", name, cuda::probe_message().c_str());
    return false;
  }
  std::printf("%s on %s\n", name, cuda::probe_message().c_str());
  return true;
}

}  // namespace distill::bench
