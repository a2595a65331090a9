// RMSNorm lab, v1: the simple version (the baseline v2 is measured against). Standalone: no library.
//  - forward: one block of 256 threads per row, one element per load, the row read twice (sum of squares,
//    then the output), block reduction through shared memory;
//  - backward: one block per row for dx (x and g read twice), then dw by a column kernel (one thread per
//    column, looping over every row: x, g and rstd read once more, deterministic).
// Rounding points as cpu:: (distill/ops/rmsnorm.hpp): Weight y = T(float(T(x * rstd)) * w), OnePlusWeight
// y = T(x * rstd * (1 + w)). Checks against a CPU reference in double, then times [16384, 2048] (f32, bf16).
//   nvcc -std=c++17 -O3 -arch=sm_90 kernels/dev/rmsnorm/rmsnorm_v1.cu -o /tmp/rmsnorm_v1 && /tmp/rmsnorm_v1
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CHECK_CUDA(x)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::printf("%s:%d: %s failed: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

__host__ __device__ inline float to_f(float v) { return v; }
__host__ __device__ inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class S>
__host__ __device__ inline S from_f(float v);
template <>
__host__ __device__ inline float from_f<float>(float v) {
  return v;
}
template <>
__host__ __device__ inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

constexpr int kThreads = 256;

__device__ float block_sum(float v, float* s) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) s[threadIdx.x / 32] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < kThreads / 32; ++i) t += s[i];
  __syncthreads();
  return t;
}

template <class S>
__global__ void rms_norm_forward_v1(const S* x, const S* w, S* y, float* rstd, int cols, float eps, bool one_plus) {
  __shared__ float s_red[32];
  const S* xr = x + int64_t{blockIdx.x} * cols;
  S* yr = y + int64_t{blockIdx.x} * cols;
  float ss = 0.f;
  for (int j = threadIdx.x; j < cols; j += kThreads) ss += to_f(xr[j]) * to_f(xr[j]);
  ss = block_sum(ss, s_red);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  const float s0 = one_plus ? 1.f : 0.f;
  for (int j = threadIdx.x; j < cols; j += kThreads) {
    const float xh = to_f(xr[j]) * r, s = s0 + to_f(w[j]);
    yr[j] = from_f<S>(one_plus ? xh * s : to_f(from_f<S>(xh)) * s);
  }
}

template <class S>
__global__ void rms_norm_backward_dx_v1(const S* x, const S* w, const float* rstd, const S* g, S* dx, int cols,
                                        bool one_plus) {
  __shared__ float s_red[32];
  const int64_t off = int64_t{blockIdx.x} * cols;
  const float r = rstd[blockIdx.x], s0 = one_plus ? 1.f : 0.f;
  float dot = 0.f;
  for (int j = threadIdx.x; j < cols; j += kThreads) dot += to_f(g[off + j]) * (s0 + to_f(w[j])) * to_f(x[off + j]);
  dot = block_sum(dot, s_red);
  const float md = dot * r / static_cast<float>(cols);
  for (int j = threadIdx.x; j < cols; j += kThreads) {
    const float gs = to_f(g[off + j]) * (s0 + to_f(w[j]));
    dx[off + j] = from_f<S>(r * (gs - to_f(x[off + j]) * r * md));
  }
}

template <class S>
__global__ void rms_norm_backward_dw_v1(const S* x, const float* rstd, const S* g, S* dw, int64_t rows, int cols,
                                        bool one_plus) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float acc = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    float xh = to_f(x[r * cols + j]) * rstd[r];
    if (!one_plus) xh = to_f(from_f<S>(xh));
    acc += to_f(g[r * cols + j]) * xh;
  }
  dw[j] = from_f<S>(acc);
}

template <class S>
struct Problem {
  int64_t rows;
  int cols;
  std::vector<S> x, w, g;
  S *dw_ = nullptr, *dy = nullptr, *dddx = nullptr, *ddw = nullptr, *dg = nullptr, *dxp = nullptr;
  float* drstd = nullptr;
  Problem(int64_t r, int c) : rows(r), cols(c) {
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> u(-2.f, 2.f), uw(0.5f, 1.5f);
    x.resize(static_cast<size_t>(rows * cols));
    g.resize(x.size());
    w.resize(static_cast<size_t>(cols));
    for (auto& v : x) v = from_f<S>(u(gen));
    for (auto& v : g) v = from_f<S>(u(gen) * 0.5f);
    for (auto& v : w) v = from_f<S>(uw(gen));
    const size_t n = x.size() * sizeof(S);
    CHECK_CUDA(cudaMalloc(&dxp, n));
    CHECK_CUDA(cudaMalloc(&dg, n));
    CHECK_CUDA(cudaMalloc(&dy, n));
    CHECK_CUDA(cudaMalloc(&dddx, n));
    CHECK_CUDA(cudaMalloc(&ddw, sizeof(S) * cols));
    CHECK_CUDA(cudaMalloc(&dw_, sizeof(S) * cols));
    CHECK_CUDA(cudaMalloc(&drstd, sizeof(float) * rows));
    CHECK_CUDA(cudaMemcpy(dxp, x.data(), n, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dg, g.data(), n, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dw_, w.data(), sizeof(S) * cols, cudaMemcpyHostToDevice));
  }
  ~Problem() {
    for (void* p : {(void*)dxp, (void*)dg, (void*)dy, (void*)dddx, (void*)ddw, (void*)dw_, (void*)drstd}) cudaFree(p);
  }
  void forward(bool one_plus) {
    rms_norm_forward_v1<S><<<static_cast<unsigned>(rows), kThreads>>>(dxp, dw_, dy, drstd, cols, 1e-6f, one_plus);
    CHECK_CUDA(cudaGetLastError());
  }
  void backward(bool one_plus) {
    rms_norm_backward_dx_v1<S><<<static_cast<unsigned>(rows), kThreads>>>(dxp, dw_, drstd, dg, dddx, cols, one_plus);
    CHECK_CUDA(cudaGetLastError());
    rms_norm_backward_dw_v1<S><<<(cols + 255) / 256, 256>>>(dxp, drstd, dg, ddw, rows, cols, one_plus);
    CHECK_CUDA(cudaGetLastError());
  }
  // Against double loops with the same rounding points; returns the max error in units of the tolerance.
  double check(bool one_plus) {
    forward(one_plus);
    backward(one_plus);
    std::vector<S> y(x.size()), dxv(x.size()), dwv(static_cast<size_t>(cols));
    CHECK_CUDA(cudaMemcpy(y.data(), dy, y.size() * sizeof(S), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(dxv.data(), dddx, dxv.size() * sizeof(S), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(dwv.data(), ddw, dwv.size() * sizeof(S), cudaMemcpyDeviceToHost));
    const double tol = sizeof(S) == 4 ? 1e-5 : 1.6e-2;
    double worst = 0;
    auto err = [&](double got, double want) {
      worst = std::max(worst, std::abs(got - want) / (tol + tol * std::abs(want)));
    };
    std::vector<double> dw(static_cast<size_t>(cols), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const S* xr = &x[static_cast<size_t>(r * cols)];
      const S* gr = &g[static_cast<size_t>(r * cols)];
      double ss = 0, dot = 0;
      for (int j = 0; j < cols; ++j) ss += double(to_f(xr[j])) * to_f(xr[j]);
      const double rs = 1.0 / std::sqrt(ss / cols + 1e-6);
      for (int j = 0; j < cols; ++j) {
        const double s = (one_plus ? 1.0 : 0.0) + to_f(w[j]), xh = to_f(xr[j]) * rs;
        const double xq = one_plus ? xh : to_f(from_f<S>(static_cast<float>(xh)));
        err(to_f(y[static_cast<size_t>(r * cols + j)]), one_plus ? xh * s : xq * s);
        dot += to_f(gr[j]) * s * xh;
        dw[static_cast<size_t>(j)] += to_f(gr[j]) * xq;
      }
      for (int j = 0; j < cols; ++j) {
        const double s = (one_plus ? 1.0 : 0.0) + to_f(w[j]), xh = to_f(xr[j]) * rs;
        err(to_f(dxv[static_cast<size_t>(r * cols + j)]), rs * (to_f(gr[j]) * s - xh * dot / cols));
      }
    }
    for (int j = 0; j < cols; ++j) err(to_f(dwv[static_cast<size_t>(j)]), dw[static_cast<size_t>(j)]);
    return worst;
  }
};

template <class F>
float time_ms(F f) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> t;
  for (int i = 0; i < 20; ++i) {
    CHECK_CUDA(cudaEventRecord(a));
    f();
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double copy_gbps() {
  const size_t n = size_t{256} << 20;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, n));
  CHECK_CUDA(cudaMalloc(&b, n));
  const float ms = time_ms([&] { CHECK_CUDA(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice)); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * n / (ms * 1e-3) / 1e9;
}

template <class S>
void run(const char* name, double copy) {
  for (bool one_plus : {false, true}) {
    Problem<S> small(257, 1152);
    const double e = small.check(one_plus);
    std::printf("v1 %s %s: max error %.2f x tolerance %s\n", name, one_plus ? "OnePlusWeight" : "Weight", e,
                e <= 1.0 ? "(ok)" : "(FAIL)");
  }
  Problem<S> p(16384, 2048);
  const double bytes = double(p.x.size()) * sizeof(S);
  const float f = time_ms([&] { p.forward(false); }), b = time_ms([&] { p.backward(false); });
  std::printf("v1 %s [16384, 2048] forward  %.3f ms %.0f GB/s (%.0f%% of copy)\n", name, f, 2 * bytes / (f * 1e6),
              100 * 2 * bytes / (f * 1e6) / copy);
  std::printf("v1 %s [16384, 2048] backward %.3f ms %.0f GB/s (%.0f%% of copy)\n", name, b, 3 * bytes / (b * 1e6),
              100 * 3 * bytes / (b * 1e6) / copy);
}

int main() {
  const double copy = copy_gbps();
  std::printf("copy bandwidth (read + write) %.0f GB/s\n", copy);
  run<float>("f32", copy);
  run<__nv_bfloat16>("bf16", copy);
  return 0;
}
