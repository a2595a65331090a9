// Kernel lab for the attention forward (kernels/attention_fwd.cu): every version, checked against a CPU
// reference (double) on small causal / windowed GQA problems, then timed (CUDA events, median of 20) on
// the benchmark shape, B=1 H=16 KV=8 T=S=2048 causal, D = 64, 128, 256. Versions (kept in the production
// file, named with their number):
//   v1  attn_fwd_v1_simple: f32 math, one warp per query row, 32-key tiles in shared memory (f32 and bf16)
//   v2  attn_fwd_v2_mma<V2Config<D, warps, m tiles per warp, key tile>>: bf16 mma.sync m16n8k16, ldmatrix,
//       cp.async K/V streaming; the production configs are marked (*), the others are the alternatives
//       worth timing on a new GPU (occupancy vs fragment reuse vs register spills). v2 is timed with one
//       block per query tile and persistent (production: as many blocks as fit, drawing tiles heaviest first).
// Build and run on a GPU machine (from the repository root):
//   nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -I include \
//        kernels/dev/attention/attention_fwd_lab.cu -o /tmp/attention_fwd_lab && /tmp/attention_fwd_lab
// The same kernels run without a GPU on the warp emulator: kernels/dev/attention/emulate_fwd.cpp.
#define DISTILL_ATTN_KERNELS_ONLY 1
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../../attention_fwd.cu"

namespace af = distill::cuda::attn_fwd;

#define LAB_CHECK(x)                                                                           \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

struct Problem {
  int B, T, S, H, KV, D;
  bool causal;
  int window;
};

struct Version {
  std::string name;
  bool bf16;
  int D;  // 0: any D <= 256
  void (*kernel)(af::FwdParams);
  int threads, block_m;
  size_t smem;
};

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct HostData {
  std::vector<float> q, k, v;  // values exactly representable in bf16
};
HostData make_data(const Problem& pr, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto fill = [&](size_t n) {
    std::vector<float> x(n);
    for (auto& e : x) e = from_bf16(to_bf16(u(g)));
    return x;
  };
  return {fill(size_t(pr.B) * pr.T * pr.H * pr.D), fill(size_t(pr.B) * pr.S * pr.KV * pr.D),
          fill(size_t(pr.B) * pr.S * pr.KV * pr.D)};
}

bool visible(const Problem& pr, int pos, int j) {
  if (pr.causal && j > pos) return false;
  if (pr.window > 0 && j <= pos - pr.window) return false;
  if (pr.window > 0 && !pr.causal && j >= pos + pr.window) return false;
  return true;
}

// out [B, T, H, D] in double.
std::vector<double> cpu_reference(const Problem& pr, const HostData& x) {
  std::vector<double> out(size_t(pr.B) * pr.T * pr.H * pr.D, 0.0), p(size_t(pr.S));
  const double scale = 1.0 / std::sqrt(double(pr.D));
  for (int b = 0; b < pr.B; ++b)
    for (int h = 0; h < pr.H; ++h)
      for (int t = 0; t < pr.T; ++t) {
        const int g = h / (pr.H / pr.KV), pos = t + pr.S - pr.T;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < pr.S; ++j) {
          double s = 0;
          for (int e = 0; e < pr.D; ++e)
            s += double(x.q[((size_t(b) * pr.T + t) * pr.H + h) * pr.D + e]) *
                 double(x.k[((size_t(b) * pr.S + j) * pr.KV + g) * pr.D + e]);
          p[j] = visible(pr, pos, j) ? s * scale : -INFINITY;
          mx = std::max(mx, p[j]);
        }
        for (int j = 0; j < pr.S; ++j) sum += p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - mx);
        for (int e = 0; e < pr.D; ++e) {
          double o = 0;
          for (int j = 0; j < pr.S; ++j) o += p[j] * double(x.v[((size_t(b) * pr.S + j) * pr.KV + g) * pr.D + e]);
          out[((size_t(b) * pr.T + t) * pr.H + h) * pr.D + e] = sum > 0 ? o / sum : 0.0;
        }
      }
  return out;
}

struct DeviceData {
  void *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
  float* lse = nullptr;
  size_t nq = 0, nkv = 0;
  bool bf16 = false;
  ~DeviceData() {
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(out);
    cudaFree(lse);
  }
};
void upload(DeviceData& d, const Problem& pr, const HostData& x, bool bf16) {
  d.bf16 = bf16;
  d.nq = x.q.size();
  d.nkv = x.k.size();
  const size_t es = bf16 ? 2 : 4;
  LAB_CHECK(cudaMalloc(&d.q, d.nq * es));
  LAB_CHECK(cudaMalloc(&d.out, d.nq * es));
  LAB_CHECK(cudaMalloc(&d.k, d.nkv * es));
  LAB_CHECK(cudaMalloc(&d.v, d.nkv * es));
  LAB_CHECK(cudaMalloc(&d.lse, sizeof(float) * size_t(pr.B) * pr.H * pr.T));
  auto put = [&](void* dst, const std::vector<float>& src) {
    if (bf16) {
      std::vector<uint16_t> h(src.size());
      for (size_t i = 0; i < src.size(); ++i) h[i] = to_bf16(src[i]);
      LAB_CHECK(cudaMemcpy(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    } else {
      LAB_CHECK(cudaMemcpy(dst, src.data(), src.size() * 4, cudaMemcpyHostToDevice));
    }
  };
  put(d.q, x.q);
  put(d.k, x.k);
  put(d.v, x.v);
}

af::FwdParams params_for(const Problem& pr, const Version& ver, const DeviceData& d) {
  af::FwdParams p = af::make_params(pr.B, pr.T, pr.S, pr.H, pr.KV, pr.D, 1.0 / std::sqrt(double(pr.D)), pr.causal,
                                    pr.window, ver.block_m, [] {
                                      std::fprintf(stderr, "problem too large\n");
                                      std::exit(1);
                                    });
  p.q = d.q;
  p.k = d.k;
  p.v = d.v;
  p.out = d.out;
  p.lse = d.lse;
  return p;
}

// v2 blocks draw query tiles from a counter. persistent (as the production launcher runs it): as many
// blocks as fit on the GPU; otherwise one block per query tile.
void launch(const Version& ver, af::FwdParams p, bool persistent) {
  LAB_CHECK(cudaFuncSetAttribute(ver.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(ver.smem)));
  unsigned blocks = unsigned(p.num_tasks);
  static int* counter = nullptr;
  if (!counter) LAB_CHECK(cudaMalloc(&counter, sizeof(int)));
  LAB_CHECK(cudaMemsetAsync(counter, 0, sizeof(int)));
  p.task_counter = counter;
  if (persistent) {
    int dev = 0, sms = 0, per_sm = 0;
    LAB_CHECK(cudaGetDevice(&dev));
    LAB_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    LAB_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ver.kernel, ver.threads, ver.smem));
    blocks = unsigned(af::persistent_grid(p.num_tasks, sms, per_sm));
  }
  ver.kernel<<<blocks, ver.threads, ver.smem>>>(p);
  LAB_CHECK(cudaGetLastError());
}

bool check(const Version& ver, const Problem& pr, bool persistent) {
  const HostData x = make_data(pr, 1);
  DeviceData d;
  upload(d, pr, x, ver.bf16);
  launch(ver, params_for(pr, ver, d), persistent);
  LAB_CHECK(cudaDeviceSynchronize());
  std::vector<float> got(d.nq);
  if (ver.bf16) {
    std::vector<uint16_t> h(d.nq);
    LAB_CHECK(cudaMemcpy(h.data(), d.out, d.nq * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < h.size(); ++i) got[i] = from_bf16(h[i]);
  } else {
    LAB_CHECK(cudaMemcpy(got.data(), d.out, d.nq * 4, cudaMemcpyDeviceToHost));
  }
  const auto want = cpu_reference(pr, x);
  const double atol = ver.bf16 ? 1.6e-2 : 1e-5, rtol = ver.bf16 ? 1.6e-2 : 1e-4;
  double max_abs = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - want[i]);
    max_abs = std::max(max_abs, std::isnan(err) ? INFINITY : err);
    if (!(err <= atol + rtol * std::abs(want[i]))) ++bad;
  }
  std::printf("  check T=%d S=%d D=%d causal=%d window=%d%s: max_abs %.3g %s\n", pr.T, pr.S, pr.D, pr.causal, pr.window,
              persistent ? " persistent" : "", max_abs, bad ? "FAIL" : "ok");
  return bad == 0;
}

double time_tflops(const Version& ver, const Problem& pr, bool persistent) {
  const HostData x = make_data(pr, 2);
  DeviceData d;
  upload(d, pr, x, ver.bf16);
  const af::FwdParams p = params_for(pr, ver, d);
  for (int i = 0; i < 3; ++i) launch(ver, p, persistent);
  cudaEvent_t a, b;
  LAB_CHECK(cudaEventCreate(&a));
  LAB_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    LAB_CHECK(cudaEventRecord(a));
    launch(ver, p, persistent);
    LAB_CHECK(cudaEventRecord(b));
    LAB_CHECK(cudaEventSynchronize(b));
    float t = 0;
    LAB_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  const double flops = 4.0 * pr.B * pr.H * double(pr.T) * pr.S * pr.D * (pr.causal ? 0.5 : 1.0);
  return flops / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

template <class Cfg>
Version v2(const char* tag) {
  return {std::string("v2_mma<D=") + std::to_string(Cfg::D) + ",warps=" + std::to_string(Cfg::warps) +
              ",mtiles=" + std::to_string(Cfg::mtiles) + ",N=" + std::to_string(Cfg::block_n) + ">" + tag,
          true,
          Cfg::D,
          af::attn_fwd_v2_mma<Cfg>,
          Cfg::threads,
          Cfg::block_m,
          Cfg::smem_bytes};
}
template <class T, int kDPL>
Version v1(int D) {
  return {std::string("v1_simple<") + (std::is_same_v<T, float> ? "f32" : "bf16") + ">",
          !std::is_same_v<T, float>,
          D,
          af::attn_fwd_v1_simple<T, kDPL>,
          af::kV1Warps * 32,
          af::kV1Rows,
          af::v1_smem_bytes(D)};
}

int main() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::printf("attention_fwd_lab: no GPU\n");
    return 0;
  }
  std::printf("attention_fwd_lab on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  using af::V2Config;
  const std::vector<Version> versions = {
      v1<float, 2>(64),
      v1<af::bf16raw, 2>(64),
      v2<af::V2D64>(" (*)"),
      v2<V2Config<64, 4, 1>>(""),
      v2<V2Config<64, 8, 1>>(""),
      v2<V2Config<64, 4, 2, 128>>(""),
      v1<float, 4>(128),
      v1<af::bf16raw, 4>(128),
      v2<af::V2D128>(" (*)"),
      v2<V2Config<128, 8, 1>>(""),
      v2<V2Config<128, 4, 1>>(""),
      v2<V2Config<128, 4, 2, 32>>(""),
      v1<float, 8>(256),
      v1<af::bf16raw, 8>(256),
      v2<af::V2D256>(" (*)"),
      v2<V2Config<256, 4, 1>>(""),
      v2<V2Config<256, 8, 1, 32>>(""),
  };
  int failed = 0;
  for (const Version& ver : versions) {
    std::printf("%s\n", ver.name.c_str());
    const bool is_v2 = ver.name.rfind("v2", 0) == 0;
    bool ok = true;
    for (bool persistent : {false, true}) {
      if (persistent && !is_v2) continue;
      ok = check(ver, {1, 300, 300, 4, 2, ver.D, true, 0}, persistent) && ok;
      ok = check(ver, {2, 77, 250, 4, 1, ver.D, false, 60}, persistent) && ok;
      ok = check(ver, {1, 1, 333, 4, 4, ver.D, true, 0}, persistent) && ok;
    }
    if (!ok) {
      ++failed;
      continue;
    }
    const Problem bench{1, 2048, 2048, 16, 8, ver.D, true, 0};
    std::printf("  B=1 H=16 KV=8 T=S=2048 D=%d causal: %.1f TFLOP/s (one block per tile)\n", ver.D,
                time_tflops(ver, bench, false));
    if (is_v2)
      std::printf("  B=1 H=16 KV=8 T=S=2048 D=%d causal: %.1f TFLOP/s (persistent, as in production)\n", ver.D,
                  time_tflops(ver, bench, true));
  }
  std::printf(failed ? "%d versions FAILED\n" : "all versions passed\n", failed);
  return failed ? 1 : 0;
}
