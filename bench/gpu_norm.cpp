// GPU benchmark of the norm and rotary kernels (kernels/rmsnorm.cu, kernels/rope.cu) at sizes past L2
// (>= 64 MB per tensor): RMSNorm forward and backward (dx + dw, and dx alone for a frozen weight), f32 and bf16,
// for a model-width row and for head-dim rows; RoPE forward and backward. GB/s counts the bytes each kernel
// must move (inputs read once, outputs written once; dw partials are overhead, not counted), against the
// device-to-device copy bandwidth measured in the same run.
#include <string>

#include "distill/ops/rmsnorm.hpp"
#include "distill/ops/rope.hpp"
#include "gpu_bench.hpp"

using namespace distill;

namespace {

std::string shape_str(const Shape& s) { return s.str(); }

template <class T>
void bench_rms_norm(const Shape& s, double copy) {
  const int64_t cols = s.back(), rows = s.numel() / cols;
  const std::string dt = dtype_name_v<T>;
  auto x = Tensor<T, Cuda>::uniform(s, 1, -2.0, 2.0), g = Tensor<T, Cuda>::uniform(s, 2);
  auto w = Tensor<T, Cuda>::uniform({cols}, 3, 0.5, 1.5);
  auto y = Tensor<T, Cuda>::empty(s), dx = Tensor<T, Cuda>::empty(s), dw = Tensor<T, Cuda>::empty({cols});
  auto rstd = Tensor<float, Cuda>::empty({rows});
  const double elem = static_cast<double>(sizeof(T)), n = static_cast<double>(s.numel());
  const double small = 4.0 * static_cast<double>(rows) + elem * static_cast<double>(cols);  // rstd, w
  for (RmsNormStyle style : {RmsNormStyle::Weight, RmsNormStyle::OnePlusWeight}) {
    const std::string st = style == RmsNormStyle::Weight ? "weight" : "one_plus_weight";
    const double f_ms = bench::time_ms(
        [&] { cuda::rms_norm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, cols, 1e-6f, style); });
    bench::report("rms_norm_fwd " + st + " " + dt, shape_str(s), (2 * elem * n + small) / (f_ms * 1e-3) / 1e9, "GB/s",
                  copy, "copy");
    const double b_ms = bench::time_ms([&] {
      cuda::rms_norm_backward(x.data(), w.data(), rstd.data(), g.data(), dx.data(), dw.data(), rows, cols, style);
    });
    bench::report("rms_norm_bwd " + st + " " + dt, shape_str(s),
                  (3 * elem * n + small + elem * static_cast<double>(cols)) / (b_ms * 1e-3) / 1e9, "GB/s", copy,
                  "copy");
    const double d_ms = bench::time_ms([&] {
      cuda::rms_norm_backward(x.data(), w.data(), rstd.data(), g.data(), dx.data(), static_cast<T*>(nullptr), rows,
                              cols, style);
    });
    bench::report("rms_norm_bwd_dx_only " + st + " " + dt, shape_str(s), (3 * elem * n + small) / (d_ms * 1e-3) / 1e9,
                  "GB/s", copy, "copy");
  }
}

template <class T>
void bench_rope(const Shape& s, double copy) {
  const std::string dt = dtype_name_v<T>;
  std::vector<int32_t> p(static_cast<size_t>(s[1]));
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<int32_t>(i);
  const RopeTables host = rope_cos_sin(Tensor<int32_t>::from_vector({s[1]}, p), s[3], RopeConfig{5e6});
  const RopeDeviceTables tab{host.cos.to<Cuda>(), host.sin.to<Cuda>()};
  auto x = Tensor<T, Cuda>::uniform(s, 4), y = Tensor<T, Cuda>::empty(s);
  const double bytes = 2.0 * static_cast<double>(sizeof(T)) * static_cast<double>(s.numel());
  for (bool inverse : {false, true}) {
    const double ms = bench::time_ms([&] {
      cuda::rope_rotate(x.data(), y.data(), tab.cos.data(), tab.sin.data(), s[0], s[1], s[2], s[3], false, inverse);
    });
    bench::report(std::string(inverse ? "rope_bwd " : "rope_fwd ") + dt, shape_str(s), bytes / (ms * 1e-3) / 1e9,
                  "GB/s", copy, "copy");
  }
}

}  // namespace

int main() {
  if (!bench::gpu_or_skip("gpu_norm")) return 0;
  const double copy = bench::copy_bandwidth_gbps();
  bench::report("copy d2d", "256 MiB", copy, "GB/s", copy, "copy");
  // 64 MB of bf16 (128 MB of f32) per tensor: a Qwen3-width-like row, and head-dim rows (q_norm / k_norm).
  bench_rms_norm<bf16>({16384, 2048}, copy);
  bench_rms_norm<float>({16384, 2048}, copy);
  bench_rms_norm<bf16>({16384, 2560}, copy);
  bench_rms_norm<bf16>({262144, 128}, copy);
  bench_rms_norm<float>({131072, 256}, copy);
  // x [B, T, H, D]: 64 MB of bf16.
  bench_rope<bf16>({8, 2048, 16, 128}, copy);
  bench_rope<float>({8, 2048, 16, 128}, copy);
  bench_rope<bf16>({16, 2048, 4, 256}, copy);
  return 0;
}
