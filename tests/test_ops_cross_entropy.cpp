// cross_entropy and linear_cross_entropy: cpu:: against ref:: loops (f32, bf16), gradients against f64
// finite differences, ignore_index, the all-ignored convention, chunking (rows and vocabulary blocks), a
// Gemma3-sized vocabulary, hand-checkable values, shape and target errors.
#include "distill/ops/cross_entropy.hpp"

#include <random>

#include "harness.hpp"

using namespace distill;
using namespace distill::test;

namespace {

Tensor<float> rnd(const Shape& s, uint64_t seed, double scale = 3.0) {
  return Tensor<float>::uniform(s, seed, -scale, scale);
}

// Targets in [0, V), with about every `ignore_every`-th row set to -100 (never all of them).
Tensor<int32_t> targets_for(const Shape& s, int64_t V, uint64_t seed, int ignore_every = 4) {
  std::mt19937_64 g(seed);
  auto t = Tensor<int32_t>::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.flat(i) = (ignore_every > 0 && i % ignore_every == 1) ? kIgnoreIndex : static_cast<int32_t>(g() % V);
  return t;
}

std::string at(const std::string& what, const Shape& s) { return what + " " + s.str(); }

}  // namespace

TEST_CASE("op:cross_entropy") {
  // (leading shape, V)
  const std::vector<std::pair<Shape, int64_t>> cases = {{{1}, 1},     {{3}, 5},    {{7}, 33},
                                                        {{2, 3}, 17}, {{5}, 1031}, {Shape(), 6}};
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto& [lead, V] = cases[c];
    Shape ls = lead;
    ls.push_back(V);
    const auto x = rnd(ls, 10 + c);
    const auto t = targets_for(lead, V, 20 + c);
    const auto ctx = cpu::cross_entropy_forward(x, t);
    const double want = ref::cross_entropy(x, t).flat(0);
    CHECK(ctx.loss == doctest::Approx(want).epsilon(1e-5));

    const auto dx0 = rnd(ls, 30 + c, 1.0);
    const auto dx = dx0.clone();
    cpu::cross_entropy_backward(x, ctx, 0.7, dx);  // accumulates
    check_close(dx, plus(dx0, ref::cross_entropy_backward(x, t, 0.7)), kTolF32,
                at("cross_entropy backward (accumulating)", ls));
  }
  SUBCASE("hand values: zero logits over V classes give log(V); one confident row gives ~0") {
    for (int64_t V : {1, 2, 10, 32000}) {
      const auto ctx = cpu::cross_entropy_forward(Tensor<float>::zeros({3, V}), targets_for({3}, V, 1, 0));
      CHECK(ctx.loss == doctest::Approx(std::log(static_cast<double>(V))).epsilon(1e-6));
    }
    const auto x = Tensor<float>::from_vector({1, 3}, {0.0f, 100.0f, 0.0f});
    CHECK(cpu::cross_entropy_forward(x, Tensor<int32_t>::from_vector({1}, {1})).loss < 1e-30);  // log(1 + 2 e^-100)
    CHECK(cpu::cross_entropy_forward(x, Tensor<int32_t>::from_vector({1}, {0})).loss ==
          doctest::Approx(100.0).epsilon(1e-6));
  }
  SUBCASE("ignore_index rows contribute nothing (default -100 and a custom index)") {
    const auto x = rnd({6, 9}, 3);
    const auto t = Tensor<int32_t>::from_vector({6}, {4, -100, 0, -100, 8, 2});
    // The loss equals the loss of the kept rows alone.
    auto kept = Tensor<float>::empty({4, 9});
    const int64_t rows[] = {0, 2, 4, 5};
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t j = 0; j < 9; ++j) kept(r, j) = x(rows[r], j);
    const auto tk = Tensor<int32_t>::from_vector({4}, {4, 0, 8, 2});
    CHECK(cpu::cross_entropy_forward(x, t).loss == doctest::Approx(ref::cross_entropy(kept, tk).flat(0)).epsilon(1e-5));
    // Ignored rows of the gradient stay untouched.
    const auto dx0 = rnd({6, 9}, 4, 1.0);
    const auto dx = dx0.clone();
    cpu::cross_entropy_backward(x, cpu::cross_entropy_forward(x, t), 1.0, dx);
    for (int64_t j = 0; j < 9; ++j) {
      CHECK(dx(1, j) == dx0(1, j));
      CHECK(dx(3, j) == dx0(3, j));
    }
    // A custom ignore_index that is a valid class.
    const auto t2 = Tensor<int32_t>::from_vector({6}, {4, 1, 0, 1, 8, 2});
    CHECK(cpu::cross_entropy_forward(x, t2, 1).loss ==
          doctest::Approx(ref::cross_entropy(kept, tk).flat(0)).epsilon(1e-5));
  }
  SUBCASE("every row ignored: loss 0 and a zero gradient (torch would give NaN)") {
    Var<float> v = Var<float>::param(rnd({3, 5}, 5));
    Var<float> loss = cross_entropy(v, Tensor<int32_t>::full({3}, kIgnoreIndex));
    CHECK(loss.value().flat(0) == 0.0f);
    loss.backward();
    for (int64_t i = 0; i < 15; ++i) CHECK(v.grad().flat(i) == 0.0f);
    CHECK(ref::cross_entropy(v.value(), Tensor<int32_t>::full({3}, kIgnoreIndex)).flat(0) == 0.0f);
  }
  SUBCASE("bf16 logits compute in f32") {
    const auto x = rnd({6, 300}, 6).cast<bf16>();
    const auto t = targets_for({6}, 300, 7);
    const auto ctx = cpu::cross_entropy_forward(x, t);
    // The reference on the same bf16 values, in double (a bf16 result would be rounded).
    CHECK(ctx.loss == doctest::Approx(ref::cross_entropy(x.cast<double>(), t).flat(0)).epsilon(1e-5));
    auto dx = Tensor<bf16>::zeros({6, 300});
    cpu::cross_entropy_backward(x, ctx, 1.0, dx);
    check_close(dx, ref::cross_entropy_backward(x, t, 1.0), kTolBf16, "cross_entropy backward bf16");
  }
  SUBCASE("Var op: value and gradient vs ref; rank-0 result; frozen logits record nothing") {
    const auto x = rnd({2, 4, 11}, 8);
    const auto t = targets_for({2, 4}, 11, 9);
    Var<float> v = Var<float>::param(x);
    Var<float> loss = cross_entropy(v, t);
    CHECK(loss.shape() == Shape());
    CHECK(loss.value().flat(0) == doctest::Approx(ref::cross_entropy(x, t).flat(0)).epsilon(1e-5));
    loss.backward(Tensor<float>::full(Shape(), 2.5f));
    check_close(v.grad(), ref::cross_entropy_backward(x, t, 2.5), kTolF32, "Var cross_entropy grad");
    CHECK_FALSE(cross_entropy(Var<float>(x), t).requires_grad());
  }
  SUBCASE("gradcheck f64 (with ignored rows; through an upstream op)") {
    const auto t = Tensor<int32_t>::from_vector({4}, {2, -100, 0, 4});
    check_grad([&](auto& v) { return cross_entropy(v[0], t); }, {Tensor<double>::uniform({4, 5}, 10, -2, 2)}, {},
               "cross_entropy [4, 5]");
    const auto t3 = Tensor<int32_t>::from_vector({2, 2}, {1, 3, -100, 0});
    check_grad([&](auto& v) { return cross_entropy(Var<double>(v[0] * v[0]), t3); },
               {Tensor<double>::uniform({2, 2, 4}, 11, -2, 2)}, {}, "cross_entropy(x * x) [2, 2, 4]");
  }
  SUBCASE("errors: shapes name both; bad targets name row and value") {
    const std::string s = error_of<ShapeError>([] {
      cpu::cross_entropy_forward(Tensor<float>::zeros({3, 5}), Tensor<int32_t>::zeros({4}));
    });
    CHECK(contains(s, "[3, 5]"));
    CHECK(contains(s, "[4]"));
    const std::string s2 = error_of<ShapeError>([] {
      cpu::cross_entropy_forward(Tensor<float>::zeros({3, 5}), Tensor<int32_t>::zeros({3, 5}));
    });
    CHECK(contains(s2, "[3, 5]"));
    const std::string e = error_of<Error>([] {
      cpu::cross_entropy_forward(Tensor<float>::zeros({3, 5}), Tensor<int32_t>::from_vector({3}, {0, 4, 5}));
    });
    CHECK(contains(e, "row 2"));
    CHECK(contains(e, "target 5"));
    const std::string n = error_of<Error>([] {
      Var<float> v = Var<float>::param(Tensor<float>::zeros({2, 5}));
      cross_entropy(v, Tensor<int32_t>::from_vector({2}, {-1, 0}));
    });
    CHECK(contains(n, "row 0"));
    CHECK(contains(n, "target -1"));
  }
}

TEST_CASE("op:linear_cross_entropy") {
  // Checks cpu:: forward and backward against ref loops (cross_entropy of hidden @ W^T) for one setting.
  auto check_against_ref = [](const Tensor<float>& h, const Tensor<float>& w, const Tensor<int32_t>& t, int64_t chunk,
                              int64_t vblock, const std::string& what) {
    const auto ctx = cpu::linear_cross_entropy_forward(h, w, t, kIgnoreIndex, chunk, vblock);
    CHECK_MESSAGE(ctx.loss == doctest::Approx(ref::linear_cross_entropy(h, w, t).flat(0)).epsilon(1e-5), what);
    const auto dh0 = rnd(h.shape(), 50, 1.0), dw0 = rnd(w.shape(), 51, 1.0);
    const auto dh = dh0.clone(), dw = dw0.clone();
    cpu::linear_cross_entropy_backward(h, w, ctx, 0.9, dh, dw, chunk, vblock);  // accumulates
    const auto want = ref::linear_cross_entropy_backward(h, w, t, 0.9);
    check_close(dh, plus(dh0, want.hidden), kTolF32, what + " dhidden");
    check_close(dw, plus(dw0, want.weight), kTolF32, what + " dweight");
  };

  SUBCASE("equals cross_entropy(hidden @ W^T) for row chunks 1, 3, > N and vocabulary blocks") {
    const int64_t N = 7, C = 5, V = 13;
    const auto h = rnd({N, C}, 1, 1.0), w = rnd({V, C}, 2, 1.0);
    const auto t = targets_for({N}, V, 3);
    for (int64_t chunk : {1, 3, 256})
      for (int64_t vblock : {0, 1, 4, 13, 100})
        check_against_ref(h, w, t, chunk, vblock,
                          "chunk " + std::to_string(chunk) + " vocab_block " + std::to_string(vblock));
  }
  SUBCASE("rank-3 hidden [B, T, C] with targets [B, T]") {
    const auto h = rnd({2, 3, 4}, 4, 1.0), w = rnd({11, 4}, 5, 1.0);
    check_against_ref(h, w, targets_for({2, 3}, 11, 6), 2, 0, "rank 3");
  }
  SUBCASE("Gemma3 vocabulary: V = 262144, N = 4, C = 8") {
    const int64_t V = 262144;
    const auto h = rnd({4, 8}, 7, 1.0), w = rnd({V, 8}, 8, 1.0);
    const auto t = Tensor<int32_t>::from_vector({4}, {0, 262143, 131071, 12345});
    check_against_ref(h, w, t, 256, 0, "V = 262144");
    check_against_ref(h, w, t, 3, 0, "V = 262144, chunk 3");
    // Zero hidden states give uniform logits: loss log(V) exactly (math, not our output).
    CHECK(cpu::linear_cross_entropy_forward(Tensor<float>::zeros({4, 8}), w, t).loss ==
          doctest::Approx(std::log(static_cast<double>(V))).epsilon(1e-6));
  }
  SUBCASE("Var op: frozen weight gets no gradient, hidden still does (and the other way round)") {
    const auto h = rnd({5, 4}, 9, 1.0), w = rnd({9, 4}, 10, 1.0);
    const auto t = targets_for({5}, 9, 11);
    const auto want = ref::linear_cross_entropy_backward(h, w, t, 1.0);
    {
      Var<float> hv = Var<float>::param(h), wv(w, false);
      Var<float> loss = linear_cross_entropy(hv, wv, t, kIgnoreIndex, 2);
      CHECK(loss.shape() == Shape());
      CHECK(loss.value().flat(0) == doctest::Approx(ref::linear_cross_entropy(h, w, t).flat(0)).epsilon(1e-5));
      loss.backward();
      check_close(hv.grad(), want.hidden, kTolF32, "Var dhidden (weight frozen)");
      CHECK_FALSE(wv.grad().defined());
    }
    {
      Var<float> hv(h, false), wv = Var<float>::param(w);
      linear_cross_entropy(hv, wv, t, kIgnoreIndex, 3).backward();
      check_close(wv.grad(), want.weight, kTolF32, "Var dweight (hidden frozen)");
      CHECK_FALSE(hv.grad().defined());
    }
  }
  SUBCASE("ignored rows: no loss and no gradient; every row ignored gives 0") {
    const auto h = rnd({4, 3}, 12, 1.0), w = rnd({6, 3}, 13, 1.0);
    const auto t = Tensor<int32_t>::from_vector({4}, {5, -100, 0, -100});
    Var<float> hv = Var<float>::param(h), wv = Var<float>::param(w);
    linear_cross_entropy(hv, wv, t, kIgnoreIndex, 1).backward();
    for (int64_t c = 0; c < 3; ++c) {
      CHECK(hv.grad()(1, c) == 0.0f);
      CHECK(hv.grad()(3, c) == 0.0f);
    }
    const auto all = Tensor<int32_t>::full({4}, kIgnoreIndex);
    Var<float> hv2 = Var<float>::param(h), wv2 = Var<float>::param(w);
    Var<float> loss = linear_cross_entropy(hv2, wv2, all);
    CHECK(loss.value().flat(0) == 0.0f);
    loss.backward();
    for (int64_t i = 0; i < hv2.grad().numel(); ++i) CHECK(hv2.grad().flat(i) == 0.0f);
    for (int64_t i = 0; i < wv2.grad().numel(); ++i) CHECK(wv2.grad().flat(i) == 0.0f);
  }
  SUBCASE("bf16 inputs: converted weight blocks, f32 accumulation") {
    const auto h = rnd({6, 5}, 14, 1.0).cast<bf16>(), w = rnd({23, 5}, 15, 1.0).cast<bf16>();
    const auto t = targets_for({6}, 23, 16);
    for (int64_t vblock : {0, 4}) {
      const auto ctx = cpu::linear_cross_entropy_forward(h, w, t, kIgnoreIndex, 4, vblock);
      CHECK(ctx.loss ==
            doctest::Approx(ref::linear_cross_entropy(h.cast<double>(), w.cast<double>(), t).flat(0)).epsilon(1e-5));
      auto dh = Tensor<bf16>::zeros(h.shape()), dw = Tensor<bf16>::zeros(w.shape());
      cpu::linear_cross_entropy_backward(h, w, ctx, 1.0, dh, dw, 4, vblock);
      const auto want = ref::linear_cross_entropy_backward(h, w, t, 1.0);
      check_close(dh, want.hidden, kTolBf16, "bf16 dhidden");
      check_close(dw, want.weight, kTolBf16, "bf16 dweight");
    }
  }
  SUBCASE("gradcheck f64: both inputs, and hidden only") {
    const auto t = Tensor<int32_t>::from_vector({4}, {2, -100, 0, 4});
    const std::vector<Tensor<double>> in = {Tensor<double>::uniform({4, 3}, 17), Tensor<double>::uniform({5, 3}, 18)};
    check_grad([&](auto& v) { return linear_cross_entropy(v[0], v[1], t, kIgnoreIndex, 3); }, in, {},
               "linear_cross_entropy chunk 3");
    check_grad([&](auto& v) { return linear_cross_entropy(v[0], v[1], t, kIgnoreIndex, 1); }, in, {true, false},
               "linear_cross_entropy, weight frozen");
  }
  SUBCASE("errors") {
    const std::string s = error_of<ShapeError>([] {
      cpu::linear_cross_entropy_forward(Tensor<float>::zeros({3, 4}), Tensor<float>::zeros({7, 5}),
                                        Tensor<int32_t>::zeros({3}));
    });
    CHECK(contains(s, "[3, 4]"));
    CHECK(contains(s, "[7, 5]"));
    const std::string s2 = error_of<ShapeError>([] {
      cpu::linear_cross_entropy_forward(Tensor<float>::zeros({3, 4}), Tensor<float>::zeros({7, 4}),
                                        Tensor<int32_t>::zeros({2}));
    });
    CHECK(contains(s2, "[3, 4]"));
    CHECK(contains(s2, "[2]"));
    const std::string e = error_of<Error>([] {
      cpu::linear_cross_entropy_forward(Tensor<float>::zeros({3, 4}), Tensor<float>::zeros({7, 4}),
                                        Tensor<int32_t>::from_vector({3}, {0, 7, 1}));
    });
    CHECK(contains(e, "row 1"));
    CHECK(contains(e, "target 7"));
    CHECK_THROWS_AS(cpu::linear_cross_entropy_forward(Tensor<float>::zeros({3, 4}), Tensor<float>::zeros({7, 4}),
                                                      Tensor<int32_t>::zeros({3}), kIgnoreIndex, 0),
                    Error);
  }
}
