// Attention on the GPU (kernels/attention_fwd.cu, kernels/attention_bwd.cu): the forward against ref::
// (f32 with kTolF32, bf16 with kTolBf16) on the bf16 tensor-core path (D in {64, 128, 256}) and on the
// simple kernel (every D; bf16 forced onto it with DISTILL_ATTN_KERNEL=simple), lse against the CPU fast
// path; causal, non-causal, GQA, MQA, sliding windows (causal and symmetric), decode offsets, odd sizes and
// the model sizes; then the recorded op end to end, forward and backward, on Cuda against Cpu.
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/cuda/attention.hpp"
#include "distill/ops/attention.hpp"

using namespace distill;
using namespace distill::test;

namespace {

struct Case {
  std::string name;
  int64_t B, T, S, H, KV, D;
  bool causal;
  int64_t window;
  double qk_range = 1.0;  // q, k uniform in [-qk_range, qk_range): larger makes the softmax peaky
  bool vs_ref = true;     // false (model sizes): against the CPU fast path, itself checked against ref::
  double scale = 0;       // 0: 1/sqrt(D)
};

AttentionOptions opts_of(const Case& c) { return {c.causal, c.window, c.scale}; }

// Sets DISTILL_ATTN_KERNEL for its lifetime.
class KernelEnv {
 public:
  explicit KernelEnv(const char* value) { setenv("DISTILL_ATTN_KERNEL", value, 1); }
  ~KernelEnv() { unsetenv("DISTILL_ATTN_KERNEL"); }
  KernelEnv(const KernelEnv&) = delete;
  KernelEnv& operator=(const KernelEnv&) = delete;
};

template <class T>
struct Inputs {
  Tensor<T> q, k, v;
};
template <class T>
Inputs<T> make_inputs(const Case& c, uint64_t seed) {
  return {Tensor<float>::uniform({c.B, c.T, c.H, c.D}, seed, -c.qk_range, c.qk_range).cast<T>(),
          Tensor<float>::uniform({c.B, c.S, c.KV, c.D}, seed + 1, -c.qk_range, c.qk_range).cast<T>(),
          Tensor<float>::uniform({c.B, c.S, c.KV, c.D}, seed + 2).cast<T>()};
}

template <class T>
Tensor<T, Cuda> run_forward(const Inputs<T>& in, const AttentionOptions& o, Tensor<float, Cuda>& lse) {
  const auto q = to_dev(in.q), k = to_dev(in.k), v = to_dev(in.v);
  auto out = Tensor<T, Cuda>::empty(q.shape());
  lse = Tensor<float, Cuda>::empty({q.dim(0), q.dim(2), q.dim(1)});
  cuda::attention_forward(q, k, v, o, out, lse);
  return out;
}

// The forward of dtype T on the default path and, for bf16, on the simple kernel too.
template <class T>
void check_forward(const Case& c, uint64_t seed) {
  INFO("case " << c.name << ": B=" << c.B << " T=" << c.T << " S=" << c.S << " H=" << c.H << " KV=" << c.KV
               << " D=" << c.D << " causal=" << c.causal << " window=" << c.window);
  const auto in = make_inputs<T>(c, seed);
  const auto o = opts_of(c);
  const Tol tol = std::is_same_v<T, float> ? kTolF32 : kTolBf16;
  const std::string dt = std::is_same_v<T, float> ? " f32" : " bf16";
  const auto cpu_fwd = cpu::attention_forward(in.q, in.k, in.v, o);
  const Tensor<double> want = c.vs_ref ? ref::attention(in.q.template cast<double>(), in.k.template cast<double>(),
                                                        in.v.template cast<double>(), o)
                                       : cpu_fwd.out.template cast<double>();
  Tensor<float, Cuda> lse;
  const auto out = run_forward(in, o, lse);
  check_close(out, want, tol, c.name + dt + " out");
  check_close(lse, cpu_fwd.lse, kTolF32, c.name + dt + " lse vs cpu::attention_forward");
  if constexpr (std::is_same_v<T, bf16>) {
    KernelEnv simple("simple");
    Tensor<float, Cuda> lse_s;
    const auto out_s = run_forward(in, o, lse_s);
    check_close(out_s, want, tol, c.name + dt + " out (DISTILL_ATTN_KERNEL=simple)");
    check_close(lse_s, cpu_fwd.lse, kTolF32, c.name + dt + " lse (DISTILL_ATTN_KERNEL=simple)");
  }
}

// The recorded op on Cuda and on Cpu from the same f32 start: out and the gradients of q, k, v.
void check_var_path(const Case& c, uint64_t seed, bool k_trainable = true) {
  INFO("var case " << c.name << " k_trainable=" << k_trainable);
  const auto in = make_inputs<float>(c, seed);
  const auto g = Tensor<float>::uniform({c.B, c.T, c.H, c.D}, seed + 3);
  const auto q_prior = Tensor<float>::uniform({c.B, c.T, c.H, c.D}, seed + 4);  // an earlier gradient of q
  const auto o = opts_of(c);
  auto run = [&](auto dev) {
    using D = decltype(dev);
    Var<float, D> q(in.q.to<D>(), true), k(in.k.to<D>(), k_trainable), v(in.v.to<D>(), true);
    q.grad_buffer().copy_from(q_prior.to<D>());  // the backward must add to it
    auto y = attention(q, k, v, o);
    REQUIRE(y.requires_grad());
    y.backward(g.to<D>());
    CHECK(k.grad().defined() == k_trainable);
    std::vector<Tensor<float>> r{to_host(y.value()), to_host(q.grad()), to_host(v.grad())};
    if (k_trainable) r.push_back(to_host(k.grad()));
    return r;
  };
  const auto cpu = run(Cpu{});
  const auto gpu = run(Cuda{});
  check_close(gpu[0], cpu[0], kTolF32, c.name + " out");
  check_close(gpu[1], cpu[1], kTolF32, c.name + " dq (added to an existing gradient)");
  check_close(gpu[2], cpu[2], kTolF32, c.name + " dv");
  if (k_trainable) check_close(gpu[3], cpu[3], kTolF32, c.name + " dk");
}

}  // namespace

TEST_CASE("cuda:attention") {
  unsetenv("DISTILL_ATTN_KERNEL");
  // Tile remainders everywhere: the tensor-core kernel takes 128 query rows x 64 keys, the simple one
  // 16 x 32; q, k in [-3, 3) make later key tiles raise the running max (online-softmax rescaling).
  const std::vector<Case> cases = {
      {"causal T=S=37 D=64", 2, 37, 37, 4, 4, 64, true, 0},
      {"non-causal T=S=70 D=128", 1, 70, 70, 2, 2, 128, false, 0},
      {"GQA H=8 KV=2 causal T=S=150 D=128 peaky", 1, 150, 150, 8, 2, 128, true, 0, 3.0},
      {"MQA H=4 KV=1 causal T=S=130 D=64", 1, 130, 130, 4, 1, 64, true, 0, 2.0},
      {"causal window 50 T=S=200 D=64", 1, 200, 200, 2, 1, 64, true, 50, 3.0},
      {"symmetric window 40 T=100 S=140 D=128", 1, 100, 140, 2, 1, 128, false, 40},
      {"symmetric window 7 T=S=70 D=256", 1, 70, 70, 2, 2, 256, false, 7},
      {"window 1 (self only) T=S=20 D=64", 1, 20, 20, 2, 1, 64, true, 1},
      {"decode T=1 S=77 GQA 8/2 D=128", 2, 1, 77, 8, 2, 128, true, 0},
      {"decode T=1 S=300 window 64 D=256", 1, 1, 300, 4, 1, 256, true, 64},
      {"offset T=37 S=200 causal D=256", 1, 37, 200, 2, 1, 256, true, 0},
      {"offset T=5 S=70 causal window 9 D=64", 2, 5, 70, 4, 2, 64, true, 9},
      {"odd T=37 S=70 non-causal D=256", 1, 37, 70, 2, 1, 256, false, 0},
      {"non-causal cross T=70 S=37 D=64", 1, 70, 37, 2, 2, 64, false, 0},
      {"head dim 40 (simple kernel only)", 1, 33, 33, 2, 1, 40, true, 0},
      {"head dim 16, explicit B=3", 3, 19, 19, 2, 2, 16, true, 0},
      {"head dim 200 non-causal", 1, 19, 45, 2, 1, 200, false, 0},
      {"explicit scale 0.3 D=128", 1, 70, 70, 2, 1, 128, true, 0, 1.0, true, 0.3},
      {"negative scale -0.2 D=64 (bf16 falls back to the simple kernel)", 1, 70, 70, 2, 1, 64, true, 0, 1.0, true,
       -0.2},
      // Model sizes, against the CPU fast path (ref:: would take minutes): Gemma3-1B (4 q / 1 kv heads,
      // head_dim 256, sliding window 512) and Qwen3-4B (32 q / 8 kv heads, head_dim 128).
      {"gemma3-1b window 512 T=S=1024", 1, 1024, 1024, 4, 1, 256, true, 512, 1.0, false},
      {"qwen3-4b causal T=S=384", 1, 384, 384, 32, 8, 128, true, 0, 1.0, false},
  };
  uint64_t seed = 500;
  for (const auto& c : cases) {
    check_forward<float>(c, seed += 5);
    check_forward<bf16>(c, seed += 5);
  }

  // The environment switch really selects another kernel: the tensor-core path rounds P to bf16 before
  // P V, so some bf16 outputs differ from the simple kernel's.
  {
    const Case c{"switch", 1, 150, 150, 8, 2, 128, true, 0};
    const auto in = make_inputs<bf16>(c, 77);
    Tensor<float, Cuda> lse;
    const auto mma = to_host(run_forward(in, opts_of(c), lse));
    KernelEnv simple("simple");
    const auto simple_out = to_host(run_forward(in, opts_of(c), lse));
    CHECK(bit_mismatches(mma, simple_out) > 0);
  }

  // Preconditions: contiguous buffers of the right shapes.
  {
    const auto q = Tensor<float, Cuda>::zeros({1, 8, 2, 16}), kv = Tensor<float, Cuda>::zeros({1, 8, 1, 16});
    auto out = Tensor<float, Cuda>::empty(q.shape());
    auto lse = Tensor<float, Cuda>::empty({1, 2, 8});
    const auto qt = Tensor<float, Cuda>::zeros({1, 2, 8, 16}).transpose(1, 2);  // [1, 8, 2, 16], a view
    CHECK_THROWS_AS(cuda::attention_forward(qt, kv, kv, {}, out, lse), Error);
    auto bad_lse = Tensor<float, Cuda>::empty({1, 8, 2});
    CHECK_THROWS_AS(cuda::attention_forward(q, kv, kv, {}, out, bad_lse), ShapeError);
    CHECK_THROWS_AS(cuda::attention_forward(q, Tensor<float, Cuda>::zeros({1, 8, 3, 16}),
                                            Tensor<float, Cuda>::zeros({1, 8, 3, 16}), {}, out, lse),
                    ShapeError);
  }

  // The recorded op, forward and backward, on Cuda against Cpu (f32).
  check_var_path({"var GQA causal", 2, 45, 45, 4, 2, 64, true, 0}, 900);
  check_var_path({"var non-causal D=128", 1, 70, 70, 2, 2, 128, false, 0}, 910);
  check_var_path({"var causal window 16, frozen k", 1, 90, 90, 4, 1, 64, true, 16}, 920, false);
  check_var_path({"var decode offset T=5 S=40 D=256", 1, 5, 40, 2, 1, 256, true, 0}, 930);
  check_var_path({"var symmetric window 6 D=32", 1, 33, 33, 2, 2, 32, false, 6}, 940);
}
