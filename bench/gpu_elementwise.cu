// GPU element-wise kernels against the copy ceiling: generated expression kernels (silu(a) * b, the
// SwiGLU product; a broadcast scale; the fused backward of silu(a) * b), the precompiled accumulate
// (dst += src) and cast. Bandwidth counts bytes read + written; sizes are far past L2 (>= 64 MB).
#include <string>

#include "distill/autograd.hpp"
#include "gpu_bench.hpp"

using namespace distill;

template <class T>
void run(const char* dt, double ceiling) {
  const int64_t n = int64_t{32} << 20;  // 32 Mi elements: 128 MB (f32) / 64 MB (bf16) per operand
  const double bytes = static_cast<double>(sizeof(T));
  const std::string shape = "[" + std::to_string(n) + "] " + dt;
  auto a = Tensor<float>::uniform({n}, 1).cast<T>().template to<Cuda>();
  auto b = Tensor<float>::uniform({n}, 2).cast<T>().template to<Cuda>();
  auto out = Tensor<T, Cuda>::empty({n});
  double ms = bench::time_ms([&] { expr::assign(out, silu(a) * b); });
  bench::report(std::string("ew_silu_mul_fwd"), shape, 3 * n * bytes / (ms * 1e-3) / 1e9, "GB/s", ceiling, "copy");

  const int64_t rows = n / 4096;
  auto w = Tensor<float>::uniform({4096}, 3).cast<T>().template to<Cuda>();
  auto a2 = a.reshape({rows, 4096});
  auto out2 = out.reshape({rows, 4096});
  ms = bench::time_ms([&] { expr::assign(out2, a2 * w); });
  bench::report("ew_broadcast_mul_fwd", "[" + std::to_string(rows) + ",4096]x[4096] " + dt,
                2 * n * bytes / (ms * 1e-3) / 1e9, "GB/s", ceiling, "copy");

  // Fused backward of y = silu(a) * b: reads a, b, g and the two gradients, writes the two gradients.
  Var<T, Cuda> va = Var<T, Cuda>::param(a), vb = Var<T, Cuda>::param(b);
  auto g = Tensor<T, Cuda>::full({n}, T(1.0f));
  auto e = silu(va) * vb;
  va.grad_buffer();
  vb.grad_buffer();
  ms = bench::time_ms([&] { expr::backward_pass(e, g); });
  bench::report("ew_silu_mul_bwd", shape, 7 * n * bytes / (ms * 1e-3) / 1e9, "GB/s", ceiling, "copy");

  ms = bench::time_ms([&] { autograd::accumulate(out, a); });
  bench::report("accumulate", shape, 3 * n * bytes / (ms * 1e-3) / 1e9, "GB/s", ceiling, "copy");
  auto f = Tensor<float, Cuda>::empty({n});
  ms = bench::time_ms([&] { cuda::cast<T, float>(f.data(), a.data(), n); });
  bench::report("cast_to_f32", shape, n * (bytes + 4) / (ms * 1e-3) / 1e9, "GB/s", ceiling, "copy");
}

int main() {
  if (!bench::gpu_or_skip("gpu_elementwise")) return 0;
  const double ceiling = bench::copy_bandwidth_gbps();
  std::printf("CEILING|copy_gbps|%.1f\n", ceiling);
  bench::report("copy_d2d", "256 MiB", ceiling, "GB/s", ceiling, "copy");
  run<float>("f32", ceiling);
  run<bf16>("bf16", ceiling);
  return 0;
}
