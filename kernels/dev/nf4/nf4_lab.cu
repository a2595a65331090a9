// The NF4 kernel lab: every version of the 4-bit GEMV / dequantize, checked against a CPU reference (dequantize
// to f32, naive GEMM in double) and timed on the model shapes against the same run's device-to-device copy
// bandwidth and cuBLASLt bf16 on the unquantized weight, with sweeps of the launch parameters.
//   v1  nf4_gemv_v1<threads>: one thread per output (m, n), bytes read one at a time, scale decoded per element.
//       The baseline: uncoalesced (neighbouring threads read rows cols/2 bytes apart).
//   v2  a warp per row, 16 packed bytes (32 weights) per lane with two loads in flight, the double-quant scale
//       decoded once per 32 weights from shared-memory tables, f32 accumulation, split-K. Its x loads are 64 bytes
//       apart across the lanes of a warp (4x the L1 wavefronts of a contiguous load). Needs in_features % 32 == 0.
//   v3  kernels/nf4.cu's nf4_gemv_v3<R, M, warps>: as v2, but each lane takes one 4-byte word (8 weights) per
//       256-column step, four steps in flight, so weight loads are 128 contiguous bytes per warp and x loads 512
//       contiguous bytes; the scale is decoded once per 8 weights. PRODUCTION (8 warps per block, splits from
//       nf4_gemv_splits). PRODUCTION for M = 1 and for dtypes other than bf16.
//   v4  kernels/nf4.cu's nf4_gemv_v4<R, warps>: bf16 tensor cores (mma.sync m16n8k16, f32 accumulate), the M rows
//       of x as the A operand, 16 output rows per warp from one 8-byte weight load per lane per 64 columns; x is
//       read once per 16 rows instead of once per row. PRODUCTION for bf16 with M >= 2 (4 warps per block).
//   Which is fastest at which M is what this lab is for: not measured yet.
//   dequantize: scalar (a thread per byte) and vector (a thread per 16 bytes, 16-byte stores; PRODUCTION).
// Built by CMake with the CUDA kernels (target nf4_lab, so CI compiles it); run it on a GPU machine:
//   cmake --build build/device --target nf4_lab && build/device/kernels/dev/nf4/nf4_lab
// Output: CHECK lines (max error vs the reference) and TIME lines (µs, GB/s, % of copy bandwidth, speed-up over
// cuBLASLt bf16). Nothing here has run on a GPU yet (see bench/README.md).
#include <cstdio>
#include <random>
#include <vector>

#include "../../nf4.cu"  // the production kernels, as compiled into distill::kernels
#include "distill/cuda/elementwise.hpp"
#include "distill/nn/nf4_linear.hpp"

using namespace distill;

namespace lab {

// v1: one thread per output element.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    nf4_gemv_v1(const __nv_bfloat16* __restrict__ x, int M, cuda::Nf4View w, __nv_bfloat16* __restrict__ y) {
  const int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x;
  if (i >= M * w.rows) return;
  const int64_t m = i / w.rows, n = i - m * w.rows;
  float acc = 0.f;
  for (int64_t k = 0; k < w.cols; ++k) {
    const int64_t e = n * w.cols + k;
    const uint8_t b = w.packed[e >> 1];
    const int64_t blk = e / w.blocksize;
    const float scale =
        w.nested ? __fadd_rn(__fmul_rn(w.nested_code[w.absmax_q[blk]], w.nested_absmax[blk / w.nested_blocksize]),
                             w.nested_offset)
                 : w.absmax[blk];
    const float wv = __bfloat162float(__float2bfloat16_rn(__fmul_rn(w.code[(e & 1) ? (b & 15) : (b >> 4)], scale)));
    acc = fmaf(wv, __bfloat162float(x[m * w.cols + k]), acc);
  }
  y[m * w.rows + n] = __float2bfloat16_rn(acc);
}

// v2 (bf16 checkpoint into bf16): grid (ceil(rows / kW), splits), partition = chunks of 32 columns.
template <int kM, int kW>
__global__ void __launch_bounds__(kW * 32)
    nf4_gemv_v2(const __nv_bfloat16* __restrict__ x, int64_t ldx, int M, cuda::Nf4View w, __nv_bfloat16* __restrict__ y,
                int64_t ldy, float* __restrict__ partial, int64_t per) {
  __shared__ float s_code[16];
  __shared__ float s_dyn[256];
  cuda::load_tables(w, s_code, s_dyn);
  const int lane = threadIdx.x & 31;
  const int64_t n = blockIdx.x * int64_t{kW} + (threadIdx.x >> 5);
  if (n >= w.rows) return;
  const int64_t C = w.cols / 32, lo = blockIdx.y * per, hi = std::min(C, lo + per);
  const uint4* row = reinterpret_cast<const uint4*>(w.packed) + n * C;
  float acc[kM];
#pragma unroll
  for (int m = 0; m < kM; ++m) acc[m] = 0.f;
  auto chunk = [&](const uint4& raw, float scale, int64_t k0) {
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float wv[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        cuda::decode_byte<1, __nv_bfloat16>(bytes[q * 4 + j], scale, s_code, wv[2 * j], wv[2 * j + 1]);
      }
#pragma unroll
      for (int m = 0; m < kM; ++m)
        if (m < M) {
          float xv[8];
          cuda::load_x8(x + m * ldx + k0 + q * 8, xv);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[m] = fmaf(wv[j], xv[j], acc[m]);
        }
    }
  };
  int64_t c = lo + lane;
  for (; c + 32 < hi; c += 64) {
    const uint4 r0 = __ldg(row + c), r1 = __ldg(row + c + 32);
    const float s0 = cuda::block_scale(w, s_dyn, (n * w.cols + c * 32) / w.blocksize);
    const float s1 = cuda::block_scale(w, s_dyn, (n * w.cols + (c + 32) * 32) / w.blocksize);
    chunk(r0, s0, c * 32);
    chunk(r1, s1, (c + 32) * 32);
  }
  if (c < hi) chunk(__ldg(row + c), cuda::block_scale(w, s_dyn, (n * w.cols + c * 32) / w.blocksize), c * 32);
#pragma unroll
  for (int m = 0; m < kM; ++m) acc[m] = cuda::kern::warp_allreduce(acc[m], cuda::kern::SumOp{});
  if (lane == 0)
    for (int m = 0; m < M && m < kM; ++m) {
      if (partial)
        partial[(blockIdx.y * int64_t{M} + m) * w.rows + n] = acc[m];
      else
        y[m * ldy + n] = __float2bfloat16_rn(acc[m]);
    }
}

template <class F>
double time_us(F&& fn, int reps = 50) {
  for (int i = 0; i < 5; ++i) fn();
  cudaDeviceSynchronize();
  std::vector<float> t;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, cuda::stream());
    fn();
    cudaEventRecord(b, cuda::stream());
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return 1000.0 * t[t.size() / 2];
}

double copy_gbps() {
  const size_t bytes = size_t{256} << 20;
  cuda::DeviceBuffer<uint8_t> a(bytes), b(bytes);
  const double us =
      time_us([&] { cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, cuda::stream()); });
  return 2.0 * bytes / (us * 1e-6) / 1e9;
}

// Max |got - ref| / max(1, |ref|) over [M, rows].
double max_err(const Tensor<bf16, Cuda>& got, const std::vector<double>& ref) {
  const Tensor<bf16> h = got.to<Cpu>();
  double e = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    e = std::max(
        e, std::abs(static_cast<double>(static_cast<float>(h.data()[i])) - ref[i]) / std::max(1.0, std::abs(ref[i])));
  return e;
}

}  // namespace lab

int main() {
  if (cuda::device_count() == 0) {
    std::printf("nf4_lab: no GPU (%s)\n", cuda::probe_message().c_str());
    return 0;
  }
  std::printf("nf4_lab on %s\n", cuda::probe_message().c_str());
  const double copy = lab::copy_gbps();
  std::printf("CEILING copy %.0f GB/s (read + write)\n", copy);
  const std::vector<std::pair<int64_t, int64_t>> shapes{{4096, 4096}, {1152, 6912}, {6912, 1152}, {1152, 1024},
                                                        {256, 1152},  {2560, 9728}, {9728, 2560}, {2560, 4096}};
  for (auto [rows, cols] : shapes) {
    Tensor<float> wf = Tensor<float>::uniform({rows, cols}, 7, -0.05, 0.05).cast<bf16>().cast<float>();
    const auto q = quant::quantize_4bit(wf.data(), {rows, cols}, quant::QuantType::Nf4, 64, true, io::StDtype::BF16);
    const auto dev = cuda::upload_nf4(q);
    const Tensor<bf16> w = nn::nf4_weight<bf16, Cpu>(q);
    const auto wd = w.to<Cuda>();
    const double wbytes = static_cast<double>(dev->device_bytes());
    for (int64_t M : {int64_t{1}, int64_t{16}}) {
      const Tensor<bf16> x = Tensor<float>::uniform({M, cols}, 11).cast<bf16>();
      const auto xd = x.to<Cuda>();
      std::vector<double> ref(static_cast<size_t>(M * rows));  // CPU reference: f32 weights, double sums
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < rows; ++n) {
          double s = 0;
          for (int64_t k = 0; k < cols; ++k)
            s += static_cast<double>(static_cast<float>(w.data()[n * cols + k])) *
                 static_cast<float>(x.data()[m * cols + k]);
          ref[static_cast<size_t>(m * rows + n)] = s;
        }
      auto y = Tensor<bf16, Cuda>::empty({M, rows});
      const double bytes = wbytes + 2.0 * M * (cols + rows);
      char shape[64];
      std::snprintf(shape, sizeof shape, "M=%lld %lldx%lld", static_cast<long long>(M), static_cast<long long>(rows),
                    static_cast<long long>(cols));
      const double t_lt = lab::time_us([&] {
        cuda::gemm<bf16>(xd.data(), cols, false, wd.data(), cols, true, y.data(), rows, M, rows, cols, 1, 0, 0, 0);
      });
      std::printf("TIME cublaslt_bf16 %s %.2f us\n", shape, t_lt);
      auto row = [&](const char* name, double us, double err) {
        std::printf("TIME %s %s %.2f us  %.0f GB/s  %.0f%% of copy  %.2fx cuBLASLt  max_err %.2e\n", name, shape, us,
                    bytes / (us * 1e-6) / 1e9, 100.0 * bytes / (us * 1e-6) / 1e9 / copy, t_lt / us, err);
      };
      // v1, block-size sweep
      auto v1 = [&](auto threads) {
        constexpr int T = decltype(threads)::value;
        const unsigned grid = static_cast<unsigned>((M * rows + T - 1) / T);
        auto run = [&] {
          lab::nf4_gemv_v1<T><<<grid, T, 0, cuda::stream()>>>(reinterpret_cast<const __nv_bfloat16*>(xd.data()),
                                                              static_cast<int>(M), dev->view(),
                                                              reinterpret_cast<__nv_bfloat16*>(y.data()));
        };
        run();
        const double err = lab::max_err(y, ref);
        char n[32];
        std::snprintf(n, sizeof n, "v1_t%d", T);
        row(n, lab::time_us(run), err);
      };
      v1(std::integral_constant<int, 64>{});
      v1(std::integral_constant<int, 128>{});
      v1(std::integral_constant<int, 256>{});
      v1(std::integral_constant<int, 512>{});
      // Split-K reduction shared by v2 and v3.
      auto reduce = [&](cuda::DeviceBuffer<float>& partial, int ns) {
        cuda::launch(cuda::nf4_gemv_reduce<__nv_bfloat16>, dim3(cuda::grid_for(M * rows, 256, 1 << 16)), dim3(256), 0,
                     static_cast<const float*>(partial.data()), ns, static_cast<int>(M), rows,
                     reinterpret_cast<__nv_bfloat16*>(y.data()), rows);
      };
      const auto* xb = reinterpret_cast<const __nv_bfloat16*>(xd.data());
      auto* yb = reinterpret_cast<__nv_bfloat16*>(y.data());
      // v2 and v3: warps per block x K partitions (0 = the production heuristic)
      auto sweep = [&](auto version, auto warps, int splits) {
        constexpr int V = decltype(version)::value, W = decltype(warps)::value;
        const int64_t units = V == 2 ? cols / 32 : V == 4 ? cols / 64 : (cols + 255) / 256;  // partition units
        const int s = splits > 0 ? splits : cuda::nf4_gemv_splits(rows, cols, cuda::sm_count(), V == 4 ? 4 : 3);
        const int64_t per = (units + s - 1) / s;
        const int ns = static_cast<int>((units + per - 1) / per);
        cuda::DeviceBuffer<float> partial(ns > 1 ? static_cast<size_t>(ns * M * rows) : 0);
        float* pp = ns > 1 ? partial.data() : nullptr;
        auto run = [&] {
          if constexpr (V == 2) {
            const dim3 grid(static_cast<unsigned>((rows + W - 1) / W), static_cast<unsigned>(ns));
            if (M == 1)
              lab::nf4_gemv_v2<1, W><<<grid, W * 32, 0, cuda::stream()>>>(xb, cols, 1, dev->view(), yb, rows, pp, per);
            else
              lab::nf4_gemv_v2<16, W>
                  <<<grid, W * 32, 0, cuda::stream()>>>(xb, cols, static_cast<int>(M), dev->view(), yb, rows, pp, per);
          } else if constexpr (V == 4) {
            const dim3 grid(static_cast<unsigned>((rows + 16 * W - 1) / (16 * W)), static_cast<unsigned>(ns));
            cuda::nf4_gemv_v4<1, W>
                <<<grid, W * 32, 0, cuda::stream()>>>(xb, cols, static_cast<int>(M), dev->view(), yb, rows, pp, per);
          } else {
            cuda::launch_gemv<1, W>(xb, cols, static_cast<int>(M), dev->view(), yb, rows, pp, per, ns);
          }
          if (ns > 1) reduce(partial, ns);
        };
        run();
        const double err = lab::max_err(y, ref);
        char n[48];
        const bool prod = splits == 0 && ((V == 3 && W == 8 && M == 1) || (V == 4 && W == 4 && M > 1));
        std::snprintf(n, sizeof n, "v%d_w%d_s%d%s", V, W, ns, prod ? "_PRODUCTION" : "");
        row(n, lab::time_us(run), err);
      };
      using V2 = std::integral_constant<int, 2>;
      using V3 = std::integral_constant<int, 3>;
      using V4 = std::integral_constant<int, 4>;
      for (int s : {1, 2, 4, 8, 16, 0}) {
        sweep(V4{}, std::integral_constant<int, 2>{}, s);
        sweep(V4{}, std::integral_constant<int, 4>{}, s);
        sweep(V4{}, std::integral_constant<int, 8>{}, s);
        sweep(V2{}, std::integral_constant<int, 8>{}, s);
        sweep(V3{}, std::integral_constant<int, 2>{}, s);
        sweep(V3{}, std::integral_constant<int, 4>{}, s);
        sweep(V3{}, std::integral_constant<int, 8>{}, s);
        sweep(V3{}, std::integral_constant<int, 16>{}, s);
      }
    }
    // dequantize: scalar vs vector, GB/s of packed read + bf16 written
    auto out = Tensor<bf16, Cuda>::empty({rows * cols + 1});
    const double dbytes = wbytes + 2.0 * rows * cols;
    const double t_vec = lab::time_us([&] { cuda::nf4_dequantize<bf16>(dev->view(), out.data()); });
    const double t_sca = lab::time_us([&] { cuda::nf4_dequantize<bf16>(dev->view(), out.data() + 1); });
    std::printf("TIME dequant_vector %lldx%lld %.2f us %.0f GB/s %.0f%% of copy\n", static_cast<long long>(rows),
                static_cast<long long>(cols), t_vec, dbytes / (t_vec * 1e-6) / 1e9,
                100.0 * dbytes / (t_vec * 1e-6) / 1e9 / copy);
    std::printf("TIME dequant_scalar %lldx%lld %.2f us %.0f GB/s %.0f%% of copy\n", static_cast<long long>(rows),
                static_cast<long long>(cols), t_sca, dbytes / (t_sca * 1e-6) / 1e9,
                100.0 * dbytes / (t_sca * 1e-6) / 1e9 / copy);
  }
  return 0;
}
