// Lab for the attention backward (kernels/attention_bwd.cu): every version on the GPU, checked against the
// CPU flash backward (cpu::attention_backward in f32, itself checked against ref:: in test_ops_attention), then
// timed at the benchmark shapes (B=1, H=16, KV=8 and 4, T=S=2048, causal) and at gemma-3-1b's (H=4, KV=1).
// Versions (selected through the launcher's environment switches):
//   v1 simple   DISTILL_ATTN_KERNEL=simple: f32 math, 16x16 tiles, one thread per score / output element.
//   tc          bf16 mma.sync m16n8k16 + ldmatrix + cp.async double buffering, dq in its own kernel; the dk/dv
//               kernel is v2 (S = Q K^T, P and dS through shared memory; DISTILL_ATTN_BWD_DKDV=v2) or v3
//               (S^T = K Q^T, P^T and dS^T reused in registers; D <= 128; DISTILL_ATTN_BWD_DKDV=v3); unset:
//               v3 where it applies. Its grid is one block per (key tile, b, kv head), the GQA group summed in
//               registers (DISTILL_ATTN_BWD_SPLIT=0), or one per (key tile, b, query head) with f32 partials
//               and a group sum (DISTILL_ATTN_BWD_SPLIT=1); unset: split when the unsplit grid is under 2 waves.
// TFLOP/s use the flash-attention convention: backward = 2.5 x forward = 2.5 x 4 B H T S D, halved when causal.
//
// Build (after building distill_kernels in build/), from the repository root:
//   nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -diag-suppress=20011,20012,20013,20014,20015 \
//        -Xcompiler -fopenmp -I include \
//        -isystem /usr/include/eigen3 kernels/dev/attention_bwd/attention_bwd_lab.cu \
//        build/kernels/libdistill_kernels.a -lcublasLt -o /tmp/attention_bwd_lab && /tmp/attention_bwd_lab
// Without a GPU, kernels/dev/attention_bwd/emu_check.cpp runs the same kernels on a CPU warp emulator.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "distill/cuda/attention.hpp"
#include "distill/cuda/runtime.hpp"
#include "distill/ops/attention_cpu.hpp"

using namespace distill;

namespace {

struct Variant {
  const char* name;
  const char* kernel;  // DISTILL_ATTN_KERNEL
  const char* split;   // DISTILL_ATTN_BWD_SPLIT (nullptr: unset)
  const char* dkdv;    // DISTILL_ATTN_BWD_DKDV (nullptr: unset)
};
const Variant kVariants[] = {{"tc default", nullptr, nullptr, nullptr}, {"tc v3 unsplit", nullptr, "0", "v3"},
                             {"tc v3 split", nullptr, "1", "v3"},       {"tc v2 unsplit", nullptr, "0", "v2"},
                             {"tc v2 split", nullptr, "1", "v2"},       {"v1 simple", "simple", nullptr, nullptr}};

void set_env(const char* name, const char* value) {
  if (value)
    setenv(name, value, 1);
  else
    unsetenv(name);
}
void select(const Variant& v) {
  set_env("DISTILL_ATTN_KERNEL", v.kernel);
  set_env("DISTILL_ATTN_BWD_SPLIT", v.split);
  set_env("DISTILL_ATTN_BWD_DKDV", v.dkdv);
}

struct Problem {
  int64_t B, T, S, H, KV, D;
  AttentionOptions o;
  Tensor<bf16, Cuda> q, k, v, out, dout, dq, dk, dv;
  Tensor<float, Cuda> lse;
  Tensor<float> q32, k32, v32, out32, dout32, lse32;  // host copies for the CPU reference
};

Problem make(int64_t B, int64_t T, int64_t S, int64_t H, int64_t KV, int64_t D, AttentionOptions o) {
  Problem p{B, T, S, H, KV, D, o};
  auto q = Tensor<float>::uniform({B, T, H, D}, 1, -1, 1).cast<bf16>();
  auto k = Tensor<float>::uniform({B, S, KV, D}, 2, -1, 1).cast<bf16>();
  auto v = Tensor<float>::uniform({B, S, KV, D}, 3).cast<bf16>();
  auto g = Tensor<float>::uniform({B, T, H, D}, 4).cast<bf16>();
  const auto fwd = cpu::attention_forward(q, k, v, o);  // out and lse from the CPU: no dependency on the GPU fwd
  p.q = q.to<Cuda>(), p.k = k.to<Cuda>(), p.v = v.to<Cuda>(), p.dout = g.to<Cuda>();
  p.out = fwd.out.to<Cuda>(), p.lse = fwd.lse.to<Cuda>();
  p.dq = Tensor<bf16, Cuda>::empty(q.shape()), p.dk = Tensor<bf16, Cuda>::empty(k.shape());
  p.dv = Tensor<bf16, Cuda>::empty(v.shape());
  p.q32 = q.cast<float>(), p.k32 = k.cast<float>(), p.v32 = v.cast<float>(), p.out32 = fwd.out.cast<float>();
  p.dout32 = g.cast<float>(), p.lse32 = fwd.lse;
  return p;
}

void run(Problem& p) { cuda::attention_backward(p.q, p.k, p.v, p.out, p.lse, p.dout, p.o, p.dq, p.dk, p.dv); }

// Max |got - want| / (1.6e-2 + 1.6e-2 |want|): <= 1 is within kTolBf16.
double worst(const Tensor<bf16, Cuda>& got, const Tensor<float>& want) {
  const auto g = got.to<Cpu>();
  double w = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double a = std::abs(static_cast<double>(static_cast<float>(g.data()[i])) - want.data()[i]);
    w = std::max(w, std::isnan(a) ? 1e9 : a / (1.6e-2 + 1.6e-2 * std::abs(want.data()[i])));
  }
  return w;
}

bool check(int64_t T, int64_t S, int64_t H, int64_t KV, int64_t D, AttentionOptions o) {
  Problem p = make(1, T, S, H, KV, D, o);
  const auto want = cpu::attention_backward(p.q32, p.k32, p.v32, p.out32, p.lse32, p.dout32, o);
  bool ok = true;
  for (const Variant& v : kVariants) {
    select(v);
    run(p);
    const double e = std::max({worst(p.dq, want.dq), worst(p.dk, want.dk), worst(p.dv, want.dv)});
    std::printf("check %-14s T=%lld S=%lld H=%lld KV=%lld D=%lld causal=%d window=%lld: error/tolerance %.3f %s\n",
                v.name, (long long)T, (long long)S, (long long)H, (long long)KV, (long long)D, o.causal,
                (long long)o.window, e, e <= 1 ? "ok" : "FAIL");
    ok &= e <= 1;
  }
  return ok;
}

// v1 simple only where with_simple (it is slow: f32 CUDA cores).
void time_shape(int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D, AttentionOptions o, bool with_simple) {
  Problem p = make(B, T, T, H, KV, D, o);
  const double fwd_flops = (o.causal ? 0.5 : 1.0) * 4.0 * static_cast<double>(B * H) * T * T * D;
  for (const Variant& v : kVariants) {
    if (v.kernel && !with_simple) continue;
    select(v);
    for (int i = 0; i < (v.kernel ? 1 : 3); ++i) run(p);
    cuda::synchronize();
    cuda::EventTimer timer;
    std::vector<double> t;
    const int reps = v.kernel ? 1 : 20;
    for (int i = 0; i < reps; ++i) {
      timer.start();
      run(p);
      t.push_back(timer.stop_ms());
    }
    std::sort(t.begin(), t.end());
    const double ms = t[t.size() / 2];
    std::printf("time  %-14s B=%lld H=%lld KV=%lld T=S=%lld D=%lld causal=%d: %8.3f ms  %6.1f TFLOP/s\n", v.name,
                (long long)B, (long long)H, (long long)KV, (long long)T, (long long)D, o.causal, ms,
                2.5 * fwd_flops / (ms * 1e-3) / 1e12);
  }
}

}  // namespace

int main() {
  if (cuda::device_count() == 0) {
    std::printf("attention_bwd_lab: skipped, %s\n", cuda::probe_message().c_str());
    return 0;
  }
  std::printf("attention_bwd_lab on %s\n", cuda::probe_message().c_str());
  bool ok = true;
  for (int64_t D : {64, 128, 256}) {
    ok &= check(300, 300, 8, 2, D, {true, 0, 0});
    ok &= check(200, 260, 4, 1, D, {true, 70, 0});
    ok &= check(190, 190, 2, 2, D, {false, 45, 0});
  }
  for (int64_t D : {128, 256})
    for (int64_t KV : {8, 4}) time_shape(1, 16, KV, 2048, D, {true, 0, 0}, KV == 8);
  time_shape(1, 4, 1, 2048, 256, {true, 512, 0}, false);  // gemma-3-1b local layer
  time_shape(1, 4, 1, 2048, 256, {true, 0, 0}, false);    // gemma-3-1b global layer
  time_shape(4, 32, 8, 2048, 128, {true, 0, 0}, false);   // qwen3-4b, batch 4
  time_shape(1, 16, 8, 2048, 64, {true, 0, 0}, false);
  std::printf("%s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}
