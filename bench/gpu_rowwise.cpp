// GPU row-wise kernels (kernels/softmax.cu, kernels/reduce.cu) against the copy ceiling: softmax forward and
// backward, log_softmax forward and backward, sum_last, max_last and sum_all, at activation-like rows
// ([8192, 4096]: one block per row, the row in registers) and vocabulary rows ([64, 262144] f32 /
// [128, 262144] bf16, the Gemma3 vocabulary: rows cut into 16 chunks, read twice). Every input is >= 64 MB.
// Bandwidth counts the bytes each op must move once (read + written); the chunked forward reads x twice, so
// its ceiling on this metric is about 2/3 of copy unless the second read hits L2.
#include <string>

#include "distill/ops/softmax.hpp"
#include "gpu_bench.hpp"

using namespace distill;

namespace {

std::string shape_str(int64_t R, int64_t K, const char* dt) {
  return "[" + std::to_string(R) + "," + std::to_string(K) + "] " + dt;
}

double gbps(double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; }

template <class T>
void run(int64_t R, int64_t K, const char* dt, double ceiling) {
  const std::string shape = shape_str(R, K, dt);
  const double n = static_cast<double>(R) * static_cast<double>(K), b = sizeof(T);
  const auto x = Tensor<float>::uniform({R, K}, 1, -4.0, 4.0).cast<T>().template to<Cuda>();
  const auto g = Tensor<float>::uniform({R, K}, 2, -1.0, 1.0).cast<T>().template to<Cuda>();
  auto y = cuda::softmax(x);
  auto dx = Tensor<T, Cuda>::zeros({R, K});

  double ms = bench::time_ms([&] { y = cuda::softmax(x); });
  bench::report("softmax_fwd", shape, gbps(2 * n * b, ms), "GB/s", ceiling, "copy");
  // dx += y * (g - sum(g * y)): reads y, g, dx, writes dx.
  ms = bench::time_ms([&] { cuda::softmax_backward(y, g, dx); });
  bench::report("softmax_bwd", shape, gbps(4 * n * b, ms), "GB/s", ceiling, "copy");

  auto ly = cuda::log_softmax(x);
  ms = bench::time_ms([&] { ly = cuda::log_softmax(x); });
  bench::report("log_softmax_fwd", shape, gbps(2 * n * b, ms), "GB/s", ceiling, "copy");
  ms = bench::time_ms([&] { cuda::log_softmax_backward(ly, g, dx); });
  bench::report("log_softmax_bwd", shape, gbps(4 * n * b, ms), "GB/s", ceiling, "copy");

  ms = bench::time_ms([&] { (void)cuda::sum_last(x); });
  bench::report("sum_last", shape, gbps((n + R) * b, ms), "GB/s", ceiling, "copy");
  ms = bench::time_ms([&] { (void)cuda::max_last_with_indices(x); });
  bench::report("max_last", shape, gbps((n + R) * b + R * 8.0, ms), "GB/s", ceiling, "copy");
  ms = bench::time_ms([&] { (void)cuda::sum_all(x); });
  bench::report("sum_all", shape, gbps(n * b, ms), "GB/s", ceiling, "copy");
}

}  // namespace

int main() {
  if (!bench::gpu_or_skip("gpu_rowwise")) return 0;
  const double ceiling = bench::copy_bandwidth_gbps();
  std::printf("CEILING|copy_gbps|%.1f\n", ceiling);
  run<float>(8192, 4096, "f32", ceiling);   // 128 MB
  run<bf16>(8192, 4096, "bf16", ceiling);   // 64 MB
  run<float>(64, 262144, "f32", ceiling);   // 64 MB
  run<bf16>(128, 262144, "bf16", ceiling);  // 64 MB
  return 0;
}
