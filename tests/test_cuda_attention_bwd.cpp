// Attention backward on the GPU (kernels/attention_bwd.cu) on its own: cuda::attention_backward fed with out
// and lse of the CPU forward (so this test does not depend on the GPU forward), against
// ref::attention_backward in double (f32 inputs with kTolF32, bf16 inputs with kTolBf16). Both versions: the
// simple kernels (f32 always; bf16 with DISTILL_ATTN_KERNEL=simple) and the bf16 tensor-core kernels
// (D in {64, 128, 256}), the latter with the GQA group in one block and split across blocks
// (DISTILL_ATTN_BWD_SPLIT=0/1) and, for D <= 128, with both dk/dv kernels (DISTILL_ATTN_BWD_DKDV=v2/v3). Causal,
// non-causal, GQA (H=8, KV=2), MQA, sliding windows (causal and symmetric), decode offsets (T < S), odd sizes, a single
// row, the model sizes (against the CPU fast path in f32, itself checked against ref:: in test_ops_attention),
// overwriting of the outputs, bit-identical reruns, and the argument checks.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/cuda/attention.hpp"
#include "distill/ops/attention_cpu.hpp"

using namespace distill;
using namespace distill::test;

namespace {

struct Case {
  std::string name;
  int64_t B, T, S, H, KV, D;
  bool causal;
  int64_t window;
  double scale = 0;       // 0: 1/sqrt(D)
  double qk_range = 1.0;  // q, k uniform in [-qk_range, qk_range): larger makes the softmax peaky
  bool vs_ref = true;     // false (model sizes): against cpu::attention_backward in f32
};

AttentionOptions opts_of(const Case& c) { return {c.causal, c.window, c.scale}; }

// Sets an environment variable for its lifetime (nullptr: unsets it).
class EnvGuard {
 public:
  EnvGuard(const char* name, const char* value) : name_(name) {
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~EnvGuard() { unsetenv(name_); }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

 private:
  const char* name_;
};

struct Grads {
  Tensor<double> dq, dk, dv;
};

template <class T>
struct Problem {
  Tensor<T> q, k, v, g;  // g: upstream gradient of out
  AttentionForward<T> fwd;
  Grads want;
};

template <class T>
Problem<T> make_problem(const Case& c, uint64_t seed) {
  Problem<T> pr;
  pr.q = Tensor<float>::uniform({c.B, c.T, c.H, c.D}, seed, -c.qk_range, c.qk_range).cast<T>();
  pr.k = Tensor<float>::uniform({c.B, c.S, c.KV, c.D}, seed + 1, -c.qk_range, c.qk_range).cast<T>();
  pr.v = Tensor<float>::uniform({c.B, c.S, c.KV, c.D}, seed + 2).cast<T>();
  pr.g = Tensor<float>::uniform({c.B, c.T, c.H, c.D}, seed + 3).cast<T>();
  const auto o = opts_of(c);
  pr.fwd = cpu::attention_forward(pr.q, pr.k, pr.v, o);
  if (c.vs_ref) {
    auto r = ref::attention_backward(pr.q.template cast<double>(), pr.k.template cast<double>(),
                                     pr.v.template cast<double>(), pr.fwd.out.template cast<double>(),
                                     pr.g.template cast<double>(), o);
    pr.want = {r.dq, r.dk, r.dv};
  } else {  // the same values in f32 through the CPU fast path
    auto r =
        cpu::attention_backward(pr.q.template cast<float>(), pr.k.template cast<float>(), pr.v.template cast<float>(),
                                pr.fwd.out.template cast<float>(), pr.fwd.lse, pr.g.template cast<float>(), o);
    pr.want = {r.dq.template cast<double>(), r.dk.template cast<double>(), r.dv.template cast<double>()};
  }
  return pr;
}

template <class T>
struct DevGrads {
  Tensor<T, Cuda> dq, dk, dv;
};

// cuda::attention_backward on the problem; the outputs start as garbage (7) to check they are overwritten.
template <class T>
DevGrads<T> run_backward(const Problem<T>& pr, const AttentionOptions& o) {
  DevGrads<T> r{Tensor<T, Cuda>::empty(pr.q.shape()), Tensor<T, Cuda>::empty(pr.k.shape()),
                Tensor<T, Cuda>::empty(pr.v.shape())};
  r.dq.fill_(T(7));
  r.dk.fill_(T(7));
  r.dv.fill_(T(7));
  cuda::attention_backward(to_dev(pr.q), to_dev(pr.k), to_dev(pr.v), to_dev(pr.fwd.out), to_dev(pr.fwd.lse),
                           to_dev(pr.g), o, r.dq, r.dk, r.dv);
  return r;
}

template <class T>
void check_grads(const DevGrads<T>& got, const Grads& want, const std::string& what) {
  const Tol tol = std::is_same_v<T, float> ? kTolF32 : kTolBf16;
  check_close(got.dq, want.dq, tol, what + " dq");
  check_close(got.dk, want.dk, tol, what + " dk");
  check_close(got.dv, want.dv, tol, what + " dv");
}

// f32 (the simple kernels) against the reference.
void check_f32(const Case& c, uint64_t seed = 5) {
  INFO("case " << c.name << ": B=" << c.B << " T=" << c.T << " S=" << c.S << " H=" << c.H << " KV=" << c.KV
               << " D=" << c.D << " causal=" << c.causal << " window=" << c.window);
  const auto pr = make_problem<float>(c, seed);
  check_grads(run_backward(pr, opts_of(c)), pr.want, c.name + " f32");
}

// bf16 on the tensor-core path (both dk/dv schedules where the group has several heads) and on the simple
// kernels.
void check_bf16(const Case& c, uint64_t seed = 5) {
  INFO("case " << c.name << ": B=" << c.B << " T=" << c.T << " S=" << c.S << " H=" << c.H << " KV=" << c.KV
               << " D=" << c.D << " causal=" << c.causal << " window=" << c.window);
  const auto pr = make_problem<bf16>(c, seed);
  const auto o = opts_of(c);
  {
    EnvGuard split("DISTILL_ATTN_BWD_SPLIT", "0");
    const auto a = run_backward(pr, o);
    check_grads(a, pr.want, c.name + " bf16 tensor cores");
    const auto b = run_backward(pr, o);
    CHECK_MESSAGE(same_bits(a.dq, b.dq), c.name << ": dq differs between two runs");
    CHECK_MESSAGE(same_bits(a.dk, b.dk), c.name << ": dk differs between two runs");
    CHECK_MESSAGE(same_bits(a.dv, b.dv), c.name << ": dv differs between two runs");
  }
  if (c.H > c.KV) {
    EnvGuard split("DISTILL_ATTN_BWD_SPLIT", "1");
    check_grads(run_backward(pr, o), pr.want, c.name + " bf16 tensor cores, GQA group split across blocks");
  }
  if (c.D <= 128) {  // the v2 dk/dv kernel too (the default there is v3)
    EnvGuard v2("DISTILL_ATTN_BWD_DKDV", "v2");
    EnvGuard split("DISTILL_ATTN_BWD_SPLIT", "0");
    check_grads(run_backward(pr, o), pr.want, c.name + " bf16 tensor cores, v2 dk/dv kernel");
    if (c.H > c.KV) {
      EnvGuard split1("DISTILL_ATTN_BWD_SPLIT", "1");
      check_grads(run_backward(pr, o), pr.want, c.name + " bf16 tensor cores, v2 dk/dv kernel, split");
    }
  }
  {
    EnvGuard simple("DISTILL_ATTN_KERNEL", "simple");
    check_grads(run_backward(pr, o), pr.want, c.name + " bf16 simple (DISTILL_ATTN_KERNEL=simple)");
  }
}

}  // namespace

TEST_CASE("cuda:attention_backward") {
  SUBCASE("f32: causal, non-causal, GQA, MQA, windows, decode offset, odd sizes") {
    const std::vector<Case> cases = {
        {"causal T=S=37 D=16", 2, 37, 37, 2, 2, 16, true, 0},
        {"non-causal T=20 S=33 D=24 scale=0.3", 2, 20, 33, 2, 1, 24, false, 0, 0.3},
        {"GQA H=8 KV=2 causal T=S=70 D=64", 1, 70, 70, 8, 2, 64, true, 0},
        {"MQA H=4 KV=1 causal window=9 T=S=35 D=128", 1, 35, 35, 4, 1, 128, true, 9},
        {"symmetric window=6 T=S=29 D=8", 1, 29, 29, 2, 2, 8, false, 6},
        {"decode T=3 S=40 causal window=11 D=32", 2, 3, 40, 3, 1, 32, true, 11},
        {"decode T=1 S=50 causal D=64", 1, 1, 50, 2, 1, 64, true, 0},
        {"D=256 causal T=S=18", 1, 18, 18, 1, 1, 256, true, 0},
        {"single row T=S=1 D=5", 1, 1, 1, 1, 1, 5, true, 0},
        {"peaky non-causal T=S=40 D=64", 1, 40, 40, 2, 2, 64, false, 0, 0, 4.0},
    };
    for (const auto& c : cases) check_f32(c);
  }
  SUBCASE("bf16, D=64: tensor cores and simple") {
    const std::vector<Case> cases = {
        {"causal T=S=130", 1, 130, 130, 2, 2, 64, true, 0},
        {"GQA H=8 KV=2 non-causal T=70 S=150", 1, 70, 150, 8, 2, 64, false, 0},
        {"symmetric window=30 T=S=200", 2, 200, 200, 2, 1, 64, false, 30},
    };
    for (const auto& c : cases) check_bf16(c);
  }
  SUBCASE("bf16, D=128: tensor cores and simple") {
    const std::vector<Case> cases = {
        {"GQA H=8 KV=2 causal T=S=100", 1, 100, 100, 8, 2, 128, true, 0},
        {"causal window=40 T=S=150", 1, 150, 150, 2, 1, 128, true, 40},
        {"symmetric window=30 T=S=140", 1, 140, 140, 1, 1, 128, false, 30},
        {"decode T=3 S=150 causal MQA H=3", 2, 3, 150, 3, 1, 128, true, 0},
        {"decode T=20 S=90 causal window=25", 1, 20, 90, 2, 2, 128, true, 25},
        {"peaky causal T=S=64", 1, 64, 64, 2, 2, 128, true, 0, 0, 3.0},
    };
    for (const auto& c : cases) check_bf16(c);
  }
  SUBCASE("bf16, D=256: tensor cores and simple") {
    const std::vector<Case> cases = {
        {"MQA H=2 causal T=S=80", 1, 80, 80, 2, 1, 256, true, 0},
        {"non-causal T=S=40 scale=0.0625", 1, 40, 40, 1, 1, 256, false, 0, 0.0625},
        {"GQA H=8 KV=2 causal window=33 T=S=97", 1, 97, 97, 8, 2, 256, true, 33},
    };
    for (const auto& c : cases) check_bf16(c);
  }
  SUBCASE("model sizes (against the CPU fast path in f32)") {
    // gemma-3-1b: 4 query heads, 1 kv head, head_dim 256, sliding window 512; qwen3-4b: 32 / 8 heads, 128.
    check_bf16({"gemma3-1b sliding window 512, T=S=640", 1, 640, 640, 4, 1, 256, true, 512, 0, 1.0, false});
    check_bf16({"gemma3-1b global, T=S=256", 1, 256, 256, 4, 1, 256, true, 0, 0, 1.0, false});
    check_bf16({"qwen3-4b T=S=256", 1, 256, 256, 32, 8, 128, true, 0, 0, 1.0, false});
    check_f32({"qwen3-4b f32 T=S=128", 1, 128, 128, 32, 8, 128, true, 0, 0, 1.0, false});
  }
  SUBCASE("argument checks") {
    auto q = Tensor<float, Cuda>::zeros({1, 4, 2, 16});
    auto kv = Tensor<float, Cuda>::zeros({1, 4, 1, 16});
    auto lse = Tensor<float, Cuda>::zeros({1, 2, 4});
    auto dq = Tensor<float, Cuda>::zeros(q.shape()), dk = Tensor<float, Cuda>::zeros(kv.shape()),
         dv = Tensor<float, Cuda>::zeros(kv.shape());
    CHECK_NOTHROW(cuda::attention_backward(q, kv, kv, q, lse, q, {}, dq, dk, dv));
    auto bad_lse = Tensor<float, Cuda>::zeros({1, 4, 2});
    CHECK_THROWS_AS(cuda::attention_backward(q, kv, kv, q, bad_lse, q, {}, dq, dk, dv), ShapeError);
    CHECK_THROWS_AS(cuda::attention_backward(q, kv, kv, q, lse, q, {}, dk, dk, dv), ShapeError);
    auto kv3 = Tensor<float, Cuda>::zeros({1, 4, 3, 16});  // 2 query heads over 3 kv heads
    CHECK_THROWS_AS(cuda::attention_backward(q, kv3, kv3, q, lse, q, {}, dq, kv3, kv3), ShapeError);
    auto q512 = Tensor<float, Cuda>::zeros({1, 4, 1, 512});
    auto kv512 = Tensor<float, Cuda>::zeros({1, 4, 1, 512});
    auto lse1 = Tensor<float, Cuda>::zeros({1, 1, 4});
    CHECK_THROWS_AS(cuda::attention_backward(q512, kv512, kv512, q512, lse1, q512, {}, q512, kv512, kv512), Error);
  }
}
