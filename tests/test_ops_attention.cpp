// Attention: the CPU flash path against ref:: (forward and backward, f32/f64/bf16/f16), the mask and GQA
// semantics against answers computed here from the SPEC definitions, f64 finite-difference gradients of the
// recorded op, and shape errors.
#include <cstring>
#include <string>
#include <vector>

#include "distill/ops/attention.hpp"
#include "harness.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace distill;
using distill::test::check_close;
using distill::test::check_grad;
using distill::test::same_bits;
using distill::test::Tol;

namespace {

struct Case {
  std::string name;
  int64_t B, T, S, H, KV, D;
  bool causal;
  int64_t window;
  double scale = 0;       // 0: 1/sqrt(D)
  double qk_range = 1.0;  // q and k uniform in [-qk_range, qk_range); larger makes the softmax peaky
};

AttentionOptions opts_of(const Case& c) { return {c.causal, c.window, c.scale}; }

template <class T>
struct Inputs {
  Tensor<T> q, k, v, g;  // g: upstream gradient of out
};

template <class T>
Inputs<T> make_inputs(const Case& c, uint64_t seed) {
  return {Tensor<T>::uniform({c.B, c.T, c.H, c.D}, seed, -c.qk_range, c.qk_range),
          Tensor<T>::uniform({c.B, c.S, c.KV, c.D}, seed + 1, -c.qk_range, c.qk_range),
          Tensor<T>::uniform({c.B, c.S, c.KV, c.D}, seed + 2), Tensor<T>::uniform({c.B, c.T, c.H, c.D}, seed + 3)};
}

// cpu:: forward and backward on dtype T against ref:: on the same values in R (double or T).
template <class T, class R = T>
void check_cpu_vs_ref(const Case& c, Tol tol, uint64_t seed = 7) {
  INFO("case " << c.name << ": B=" << c.B << " T=" << c.T << " S=" << c.S << " H=" << c.H << " KV=" << c.KV
               << " D=" << c.D << " causal=" << c.causal << " window=" << c.window);
  const auto in = make_inputs<T>(c, seed);
  const auto o = opts_of(c);
  const auto fwd = cpu::attention_forward(in.q, in.k, in.v, o);
  const auto q = in.q.template cast<R>(), k = in.k.template cast<R>(), v = in.v.template cast<R>();
  const auto g = in.g.template cast<R>();
  const Tensor<R> out = ref::attention(q, k, v, o);
  check_close(fwd.out, out, tol, c.name + " out");
  const auto got = cpu::attention_backward(in.q, in.k, in.v, fwd.out, fwd.lse, in.g, o);
  const auto want = ref::attention_backward(q, k, v, out, g, o);
  check_close(got.dq, want.dq, tol, c.name + " dq");
  check_close(got.dk, want.dk, tol, c.name + " dk");
  check_close(got.dv, want.dv, tol, c.name + " dv");
}

// k, v [B, S, KV, D] -> [B, S, H, D], each kv head repeated H/KV times consecutively (HF repeat_kv).
Tensor<float> repeat_kv(const Tensor<float>& x, int64_t H) {
  const int64_t B = x.dim(0), S = x.dim(1), KV = x.dim(2), D = x.dim(3);
  auto r = Tensor<float>::empty({B, S, H, D});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < S; ++j)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t e = 0; e < D; ++e) r(b, j, h, e) = x(b, j, h / (H / KV), e);
  return r;
}

}  // namespace

TEST_CASE("op:attention cpu vs ref (f32): causal, non-causal, sliding window, tile remainders") {
  const std::vector<Case> cases = {
      {"causal T=S=37 D=16", 2, 37, 37, 4, 4, 16, true, 0},
      {"non-causal T=S=37 D=16", 1, 37, 37, 2, 2, 16, false, 0},
      {"causal window 8 < T=37", 1, 37, 37, 2, 2, 16, true, 8},
      {"non-causal window 5 (symmetric)", 1, 37, 37, 2, 2, 16, false, 5},
      {"window 1 (self only)", 1, 9, 9, 2, 1, 8, true, 1},
      {"non-causal cross attention T=9 > S=5", 2, 9, 5, 2, 1, 8, false, 0},
      {"explicit scale 0.3", 1, 11, 11, 2, 2, 8, true, 0, 0.3},
      {"D=1", 1, 6, 6, 1, 1, 1, true, 0},
  };
  for (const auto& c : cases) check_cpu_vs_ref<float>(c, test::kTolF32);
}

TEST_CASE("op:attention cpu vs ref (f32): GQA with KV=2 and KV=1 (H=4)") {
  const std::vector<Case> cases = {
      {"GQA H=4 KV=2 causal", 2, 20, 20, 4, 2, 8, true, 0},
      {"GQA H=4 KV=1 causal", 1, 20, 20, 4, 1, 8, true, 0},
      {"GQA H=4 KV=2 non-causal", 1, 13, 13, 4, 2, 8, false, 0},
      {"GQA H=4 KV=1 window 6", 1, 20, 20, 4, 1, 8, true, 6},
  };
  for (const auto& c : cases) check_cpu_vs_ref<float>(c, test::kTolF32);
}

TEST_CASE("op:attention cpu vs ref (f32): decode offset T != S") {
  const std::vector<Case> cases = {
      {"T=1 S=9 causal", 1, 1, 9, 4, 2, 8, true, 0},
      {"T=1 S=9 window 4", 1, 1, 9, 4, 2, 8, true, 4},
      {"T=3 S=7 causal", 2, 3, 7, 4, 1, 8, true, 0},
      {"T=3 S=7 window 2", 1, 3, 7, 2, 2, 8, true, 2},
      {"T=3 S=7 non-causal window 2", 1, 3, 7, 2, 2, 8, false, 2},
  };
  for (const auto& c : cases) check_cpu_vs_ref<float>(c, test::kTolF32);
}

TEST_CASE("op:attention cpu vs ref (f32): several tiles, skipped tiles, peaky softmax") {
  // The tile is 64 x 64: these span 2-4 tiles each way with remainders; the windowed ones skip whole tiles,
  // and q, k in [-3, 3) make late tiles raise the running max (online-softmax rescaling).
  const std::vector<Case> cases = {
      {"causal T=S=150", 1, 150, 150, 2, 1, 16, true, 0, 0, 3.0},
      {"non-causal T=S=130", 1, 130, 130, 2, 2, 16, false, 0, 0, 3.0},
      {"causal window 50, T=S=200", 1, 200, 200, 2, 1, 16, true, 50, 0, 3.0},
      {"non-causal window 40, T=100 S=140", 1, 100, 140, 2, 1, 16, false, 40},
      {"causal T=70 S=200 (offset 130)", 1, 70, 200, 4, 2, 16, true, 0},
      {"causal window 64 = tile, T=S=129", 1, 129, 129, 1, 1, 8, true, 64},
  };
  for (const auto& c : cases) check_cpu_vs_ref<float>(c, test::kTolF32);
}

namespace {

// Runs fn with the OpenMP thread count set to n (restored after); without OpenMP just runs fn.
template <class F>
void with_threads(int n, F&& fn) {
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  try {
    fn();
  } catch (...) {
    omp_set_num_threads(saved);
    throw;
  }
  omp_set_num_threads(saved);
#else
  (void)n;
  fn();
#endif
}

}  // namespace

TEST_CASE("op:attention backward with one kv head (B=1, KV=1, H=4): both schedules vs ref, several tiles") {
  // B * KV = 1 is below the thread count from 2 threads on, so the backward splits into the key-tile pass (dK,
  // dV) and the query-tile pass (dQ); with 1 thread it runs the single (b, kv head) pass. Both against ref::.
  const std::vector<Case> cases = {
      {"KV=1 causal T=S=150", 1, 150, 150, 4, 1, 16, true, 0, 0, 3.0},
      {"KV=1 causal window 50, T=S=150", 1, 150, 150, 4, 1, 16, true, 50, 0, 3.0},
      {"KV=1 non-causal window 40, T=100 S=140", 1, 100, 140, 4, 1, 16, false, 40},
      {"KV=1 causal T=70 S=200 (offset 130)", 1, 70, 200, 4, 1, 16, true, 0},
      {"KV=2 B=1 causal T=S=150 (two-pass at 3 threads)", 1, 150, 150, 4, 2, 8, true, 0},
  };
  for (const int threads : {1, 2, 3}) {
    INFO("threads=" << threads);
    with_threads(threads, [&] {
      for (const auto& c : cases) check_cpu_vs_ref<float>(c, test::kTolF32);
      const Case c16{"bf16 KV=1 causal window 30, T=S=150", 1, 150, 150, 4, 1, 16, true, 30};
      check_cpu_vs_ref<bf16, double>(c16, test::kTolBf16);
      const Case c64{"f64 KV=1 causal T=S=130", 1, 130, 130, 2, 1, 8, true, 0, 0, 2.0};
      check_cpu_vs_ref<double>(c64, test::kTolF64);
    });
  }
}

TEST_CASE("op:attention backward is deterministic: bit-identical dq/dk/dv across runs and thread counts") {
  const std::vector<Case> cases = {
      {"KV=1 causal T=S=150", 1, 150, 150, 4, 1, 64, true, 0, 0, 3.0},
      {"KV=1 causal window 50, T=S=150", 1, 150, 150, 4, 1, 64, true, 50, 0, 3.0},
      {"KV=2 B=2 non-causal T=S=150", 2, 150, 150, 4, 2, 16, false, 0},
  };
  for (const auto& c : cases) {
    INFO("case " << c.name);
    const auto in = make_inputs<float>(c, 11);
    const auto o = opts_of(c);
    const auto fwd = cpu::attention_forward(in.q, in.k, in.v, o);
    auto run = [&] { return cpu::attention_backward(in.q, in.k, in.v, fwd.out, fwd.lse, in.g, o); };
    const auto a = run(), b = run();
    CHECK_MESSAGE(same_bits(a.dq, b.dq), "dq identical across two runs");
    CHECK_MESSAGE(same_bits(a.dk, b.dk), "dk identical across two runs");
    CHECK_MESSAGE(same_bits(a.dv, b.dv), "dv identical across two runs");
    // 1 thread runs the single pass, 2 and 3 threads the two-pass schedule (for B * KV < threads): every
    // output row is summed by one task in the same order either way.
    for (const int threads : {1, 2, 3}) {
      INFO("threads=" << threads);
      AttentionGrads<float> t;
      with_threads(threads, [&] { t = run(); });
      CHECK_MESSAGE(same_bits(a.dq, t.dq), "dq independent of the thread count");
      CHECK_MESSAGE(same_bits(a.dk, t.dk), "dk independent of the thread count");
      CHECK_MESSAGE(same_bits(a.dv, t.dv), "dv independent of the thread count");
    }
  }
}

TEST_CASE("op:attention cpu vs ref (f64) at f64 tolerance") {
  const std::vector<Case> cases = {
      {"f64 causal T=S=70 GQA", 1, 70, 70, 4, 2, 8, true, 0, 0, 2.0},
      {"f64 window 10, T=5 S=80", 1, 5, 80, 2, 1, 8, true, 10},
  };
  for (const auto& c : cases) check_cpu_vs_ref<double>(c, test::kTolF64);
}

TEST_CASE("op:attention bf16 and f16 inputs compute in float") {
  const Case c{"16-bit causal T=S=70 window 30 GQA", 1, 70, 70, 4, 2, 16, true, 30};
  SUBCASE("bf16") { check_cpu_vs_ref<bf16, double>(c, test::kTolBf16); }
  SUBCASE("f16") { check_cpu_vs_ref<f16, double>(c, test::kTolF16); }
}

TEST_CASE("op:attention strided (non-contiguous) inputs") {
  // q, k, v as views of head-major [B, heads, T, D] tensors, transposed to [B, T, heads, D].
  const AttentionOptions o{true, 0, 0};
  const auto q = Tensor<float>::uniform({2, 4, 19, 8}, 61).transpose(1, 2);
  const auto k = Tensor<float>::uniform({2, 2, 23, 8}, 62).transpose(1, 2);
  const auto v = Tensor<float>::uniform({2, 2, 23, 8}, 63).transpose(1, 2);
  const auto g = Tensor<float>::uniform({2, 4, 19, 8}, 64).transpose(1, 2);
  REQUIRE_FALSE(q.is_contiguous());
  const auto fwd = cpu::attention_forward(q, k, v, o);
  const auto out = ref::attention(q.clone(), k.clone(), v.clone(), o);
  check_close(fwd.out, out, test::kTolF32, "strided out");
  const auto got = cpu::attention_backward(q, k, v, fwd.out, fwd.lse, g, o);
  const auto want = ref::attention_backward(q.clone(), k.clone(), v.clone(), out, g.clone(), o);
  check_close(got.dq, want.dq, test::kTolF32, "strided dq");
  check_close(got.dk, want.dk, test::kTolF32, "strided dk");
  check_close(got.dv, want.dv, test::kTolF32, "strided dv");
}

TEST_CASE("op:attention mask semantics: equal scores average exactly the visible values") {
  // k = 0 makes every visible score equal, so out = the mean of the visible v rows. With v[b, j, g, e] =
  // j + 100 g the answer is the mean visible position plus 100 * (the kv head of h), computed here straight
  // from SPEC §2.4 (kv <= q, kv > q - window) and §1.3 (kv head h / (H / KV)).
  struct M {
    int64_t T, S;
    bool causal;
    int64_t window;
  };
  const std::vector<M> masks = {{6, 6, true, 0},    {6, 6, true, 3},    {1, 9, true, 0},  {1, 9, true, 4},
                                {3, 7, true, 2},    {5, 5, false, 0},   {5, 8, false, 2}, {70, 70, true, 9},
                                {70, 70, false, 0}, {70, 90, false, 20}};
  const int64_t B = 1, H = 4, KV = 2, D = 3;
  for (const auto& m : masks) {
    INFO("T=" << m.T << " S=" << m.S << " causal=" << m.causal << " window=" << m.window);
    const AttentionOptions o{m.causal, m.window, 0};
    const auto q = Tensor<float>::uniform({B, m.T, H, D}, 3);
    const auto k = Tensor<float>::zeros({B, m.S, KV, D});
    auto v = Tensor<float>::empty({B, m.S, KV, D});
    for (int64_t j = 0; j < m.S; ++j)
      for (int64_t g = 0; g < KV; ++g)
        for (int64_t e = 0; e < D; ++e) v(0, j, g, e) = static_cast<float>(j + 100 * g);
    auto want = Tensor<double>::empty({B, m.T, H, D});
    for (int64_t t = 0; t < m.T; ++t) {
      const int64_t p = t + (m.S - m.T);  // absolute position of query t
      double sum = 0;
      int64_t n = 0;
      for (int64_t j = 0; j < m.S; ++j) {
        bool vis = !m.causal || j <= p;
        if (m.window > 0) vis = vis && j > p - m.window && (m.causal || j < p + m.window);
        if (vis) sum += static_cast<double>(j), ++n;
      }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t e = 0; e < D; ++e) want(0, t, h, e) = sum / static_cast<double>(n) + 100.0 * (h / (H / KV));
    }
    check_close(cpu::attention_forward(q, k, v, o).out, want, test::kTolF32, "cpu mean of visible v");
    check_close(ref::attention(q, k, v, o), want, test::kTolF32, "ref mean of visible v");
  }
}

TEST_CASE("op:attention GQA equals multi-head attention on repeated kv heads") {
  const int64_t B = 2, T = 33, S = 40, H = 4, KV = 2, D = 8;
  const AttentionOptions o{true, 12, 0};
  const auto q = Tensor<float>::uniform({B, T, H, D}, 21), g = Tensor<float>::uniform({B, T, H, D}, 22);
  const auto k = Tensor<float>::uniform({B, S, KV, D}, 23), v = Tensor<float>::uniform({B, S, KV, D}, 24);
  const auto kr = repeat_kv(k, H), vr = repeat_kv(v, H);
  const auto fwd = cpu::attention_forward(q, k, v, o);
  const auto mha_out = ref::attention(q, kr, vr, o);
  check_close(fwd.out, mha_out, test::kTolF32, "GQA out vs MHA out");
  const auto got = cpu::attention_backward(q, k, v, fwd.out, fwd.lse, g, o);
  const auto mha = ref::attention_backward(q, kr, vr, mha_out, g, o);
  // A kv head's gradient is the sum over the query heads that read it.
  auto dk = Tensor<double>::zeros(k.shape()), dv = Tensor<double>::zeros(v.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < S; ++j)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t e = 0; e < D; ++e) {
          dk(b, j, h / (H / KV), e) += mha.dk(b, j, h, e);
          dv(b, j, h / (H / KV), e) += mha.dv(b, j, h, e);
        }
  check_close(got.dq, mha.dq, test::kTolF32, "GQA dq vs MHA dq");
  check_close(got.dk, dk, test::kTolF32, "GQA dk vs group sum of MHA dk");
  check_close(got.dv, dv, test::kTolF32, "GQA dv vs group sum of MHA dv");
}

TEST_CASE("op:attention gradcheck (f64, recorded op)") {
  struct G {
    std::string name;
    int64_t T, S, H, KV, D;
    AttentionOptions o;
  };
  const std::vector<G> cases = {
      {"causal B=1 T=5 H=2 KV=1 D=3", 5, 5, 2, 1, 3, {true, 0, 0}},
      {"causal window 2, T=4 S=6", 4, 6, 2, 1, 3, {true, 2, 0}},
      {"non-causal window 2, scale 0.7", 4, 5, 2, 2, 3, {false, 2, 0.7}},
      {"GQA H=4 KV=2 decode T=2 S=4", 2, 4, 4, 2, 2, {true, 0, 0}},
  };
  for (const auto& c : cases) {
    const std::vector<Tensor<double>> in = {Tensor<double>::uniform({1, c.T, c.H, c.D}, 31, -2, 2),
                                            Tensor<double>::uniform({1, c.S, c.KV, c.D}, 32, -2, 2),
                                            Tensor<double>::uniform({1, c.S, c.KV, c.D}, 33)};
    check_grad([&](const std::vector<Var<double>>& x) { return attention(x[0], x[1], x[2], c.o); }, in, {}, c.name);
  }
  // Only some inputs differentiated: the frozen ones are still read correctly.
  const std::vector<Tensor<double>> in = {Tensor<double>::uniform({1, 5, 2, 3}, 41, -2, 2),
                                          Tensor<double>::uniform({1, 5, 1, 3}, 42, -2, 2),
                                          Tensor<double>::uniform({1, 5, 1, 3}, 43)};
  check_grad([](const std::vector<Var<double>>& x) { return attention(x[0], x[1], x[2]); }, in, {false, true, false},
             "k only");
}

TEST_CASE("op:attention recorded op: gradients only where required, accumulated") {
  const AttentionOptions o{true, 0, 0};
  const auto qt = Tensor<float>::uniform({1, 7, 2, 4}, 51), kt = Tensor<float>::uniform({1, 7, 1, 4}, 52);
  const auto vt = Tensor<float>::uniform({1, 7, 1, 4}, 53), g = Tensor<float>::uniform({1, 7, 2, 4}, 54);
  const auto want = ref::attention_backward(qt, kt, vt, ref::attention(qt, kt, vt, o), g, o);
  Var<float> q(qt, true), k(kt, false), v(vt, true);
  Var<float> y = attention(q, k, v, o);
  CHECK(y.requires_grad());
  CHECK(std::string(y.op()) == "attention");
  check_close(y.value(), ref::attention(qt, kt, vt, o), test::kTolF32, "recorded op value");
  y.backward(g);
  CHECK_FALSE(k.grad().defined());
  check_close(q.grad(), want.dq, test::kTolF32, "q.grad");
  check_close(v.grad(), want.dv, test::kTolF32, "v.grad");
  // A second use adds to the gradients (backward accumulates, never overwrites).
  attention(q, k, v, o).backward(g);
  auto twice = [](const Tensor<float>& t) {
    auto r = t.clone();
    for (int64_t i = 0; i < r.numel(); ++i) r.data()[i] *= 2;
    return r;
  };
  check_close(q.grad(), twice(want.dq), test::kTolF32, "q.grad after two backward passes");
  check_close(v.grad(), twice(want.dv), test::kTolF32, "v.grad after two backward passes");
  {
    autograd::NoGradGuard ng;
    CHECK_FALSE(attention(q, k, v, o).requires_grad());
  }
  Var<float> frozen_q(qt, false);
  CHECK_FALSE(attention(frozen_q, k, Var<float>(vt, false), o).requires_grad());
}

TEST_CASE("op:attention shape errors throw ShapeError naming the shapes") {
  auto t = [](std::initializer_list<int64_t> s) { return Tensor<float>::zeros(Shape(s)); };
  const AttentionOptions o;
  CHECK_THROWS_WITH_AS(cpu::attention_forward(t({1, 4, 2}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), o),
                       doctest::Contains("[1, 4, 2]"), ShapeError);
  CHECK_THROWS_WITH_AS(cpu::attention_forward(t({1, 4, 2, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 4}), o),
                       doctest::Contains("[1, 4, 2, 8] vs [1, 4, 2, 4]"), ShapeError);
  CHECK_THROWS_WITH_AS(cpu::attention_forward(t({1, 4, 3, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), o),
                       doctest::Contains("[1, 4, 3, 8]"), ShapeError);  // H % KV != 0
  CHECK_THROWS_WITH_AS(ref::attention(t({1, 4, 3, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), o),
                       doctest::Contains("[1, 4, 2, 8]"), ShapeError);
  CHECK_THROWS_AS(cpu::attention_forward(t({1, 4, 2, 8}), t({1, 4, 2, 4}), t({1, 4, 2, 4}), o), ShapeError);  // D
  CHECK_THROWS_AS(cpu::attention_forward(t({2, 4, 2, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), o), ShapeError);  // B
  CHECK_THROWS_AS(cpu::attention_forward(t({1, 4, 2, 8}), t({1, 4, 0, 8}), t({1, 4, 0, 8}), o), ShapeError);  // KV=0
  // Causal or windowed: the queries are the last T of S positions, so S >= T.
  CHECK_THROWS_AS(cpu::attention_forward(t({1, 5, 2, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), o), ShapeError);
  CHECK_THROWS_AS(ref::attention(t({1, 5, 2, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), AttentionOptions{false, 2, 0}),
                  ShapeError);
  CHECK_NOTHROW(cpu::attention_forward(t({1, 5, 2, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), AttentionOptions{false}));
  CHECK_THROWS_AS(cpu::attention_forward(t({1, 4, 2, 8}), t({1, 4, 2, 8}), t({1, 4, 2, 8}), AttentionOptions{true, -1}),
                  Error);
  // Backward: g_out, out and lse must match.
  const auto q = Tensor<float>::uniform({1, 4, 2, 8}, 1), k = Tensor<float>::uniform({1, 4, 2, 8}, 2);
  const auto fwd = cpu::attention_forward(q, k, k, o);
  CHECK_THROWS_WITH_AS(cpu::attention_backward(q, k, k, fwd.out, fwd.lse, t({1, 4, 2, 7}), o),
                       doctest::Contains("[1, 4, 2, 7]"), ShapeError);
  CHECK_THROWS_AS(cpu::attention_backward(q, k, k, fwd.out, Tensor<float>::zeros({1, 4, 2}), q, o), ShapeError);
  CHECK_THROWS_AS(ref::attention_backward(q, k, k, t({1, 3, 2, 8}), q, o), ShapeError);
  CHECK_THROWS_AS(attention(Var<float>(q, true), Var<float>(t({1, 4, 2, 4})), Var<float>(t({1, 4, 2, 4}))), ShapeError);
}
