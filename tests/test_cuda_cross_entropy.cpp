// cross_entropy and linear_cross_entropy on Cuda (kernels/cross_entropy.cu): losses and gradients against
// ref:: in double (f32 inputs with kTolF32, bf16 with kTolBf16), the same Var graph on the CPU backend from
// the same start, ignore_index rows (untouched gradient rows), every row ignored (loss 0, zero gradient, as
// on the CPU), a Gemma3-sized vocabulary (V = 262144), misaligned rows, forced vocabulary/row tiling of
// linear_cross_entropy, and out-of-range targets named in the error.
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/ops/cross_entropy.hpp"

using namespace distill;
using namespace distill::test;

namespace {

Tensor<float> rnd(const Shape& s, uint64_t seed, double scale = 3.0) {
  return Tensor<float>::uniform(s, seed, -scale, scale);
}

// Targets in [0, V), with every `ignore_every`-th row (offset 1) set to -100 (never all of them).
Tensor<int32_t> targets_for(const Shape& s, int64_t V, uint64_t seed, int ignore_every = 4) {
  std::mt19937_64 g(seed);
  auto t = Tensor<int32_t>::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.flat(i) = (ignore_every > 0 && i % ignore_every == 1) ? kIgnoreIndex : static_cast<int32_t>(g() % V);
  return t;
}

Shape with_back(Shape s, int64_t c) {
  s.push_back(c);
  return s;
}

template <class T>
Tensor<double> as_f64(const Tensor<T>& t) {
  return t.template cast<double>();
}

// Softmax gradients of a large vocabulary are mostly far below kTolF32's atol (p * g / count ~ 1e-7 for
// V = 262144), so the gradients are also compared with a relative tolerance: the f32 path keeps ~1e-5 relative
// error (fast exp, f32 sums), the bf16 path adds its output rounding (2^-9).
template <class T>
constexpr Tol relative_tol() {
  if constexpr (std::is_same_v<T, float>)
    return Tol{1e-12, 2e-4, "f32, relative"};
  else
    return Tol{1e-12, kTolBf16.rtol, "bf16, relative"};
}

// A one-element device tensor (the loss's upstream gradient).
template <class T>
Tensor<T, Cuda> scalar_dev(double v) {
  return to_dev(Tensor<T>::full(Shape(), static_cast<T>(v)));
}

// cross_entropy through the Var op on Cuda: loss vs ref, accumulated gradient vs ref and vs the CPU backend.
template <class T>
void check_ce(const Shape& lead, int64_t V, uint64_t seed, int ignore_every = 4) {
  const Shape ls = with_back(lead, V);
  const std::string tag = std::string(dtype_name_v<T>) + " logits " + ls.str();
  INFO(tag);
  const auto x = rnd(ls, seed).cast<T>();
  const auto t = targets_for(lead, V, seed + 1, ignore_every);
  const auto dx0 = rnd(ls, seed + 2, 1.0).cast<T>();
  const double g = 0.7;

  auto xd = Var<T, Cuda>::param(to_dev(x));
  xd.grad_buffer().copy_from(to_dev(dx0));
  auto loss = cross_entropy(xd, t);
  REQUIRE(loss.shape() == Shape());
  const auto want_loss = ref::cross_entropy(as_f64(x), t);
  check_close(loss.value(), want_loss, tol_for<T>(), "loss vs ref " + tag);
  loss.backward(scalar_dev<T>(g));
  const auto want = plus(as_f64(dx0), ref::cross_entropy_backward(as_f64(x), t, g));
  check_close(xd.grad(), want, tol_for<T>(), "accumulated gradient vs ref " + tag);

  // Ignored rows of the gradient are untouched (bit for bit).
  const auto got = to_host(xd.grad());
  const Tensor<int32_t> tf = t.contiguous().reshape({t.numel()});
  bool untouched = true;
  for (int64_t i = 0; i < tf.numel(); ++i)
    if (tf.data()[i] == kIgnoreIndex)
      for (int64_t j = 0; j < V; ++j) untouched = untouched && got.data()[i * V + j] == dx0.data()[i * V + j];
  CHECK_MESSAGE(untouched, "ignored rows keep their gradient " << tag);

  // From a zero gradient, element by element with a relative tolerance: vs ref, and vs the CPU backend from
  // the same start.
  auto xz = Var<T, Cuda>::param(to_dev(x));
  cross_entropy(xz, t).backward(scalar_dev<T>(g));
  check_close(xz.grad(), ref::cross_entropy_backward(as_f64(x), t, g), relative_tol<T>(), "gradient vs ref " + tag);
  auto xc = Var<T>::param(x);
  auto loss_c = cross_entropy(xc, t);
  loss_c.backward(Tensor<T>::full(Shape(), static_cast<T>(g)));
  check_close(loss.value(), loss_c.value(), tol_for<T>(), "loss vs the CPU backend " + tag);
  check_close(xz.grad(), xc.grad(), relative_tol<T>(), "gradient vs the CPU backend " + tag);
}

// linear_cross_entropy through the Tensor-level Cuda functions with a forced tiling: loss and accumulated
// gradients vs ref.
template <class T>
void check_lce_tiled(const Tensor<T>& h, const Tensor<T>& w, const Tensor<int32_t>& t, int64_t vocab_chunk,
                     int64_t row_chunk, const std::string& what) {
  INFO(what << " (" << dtype_name_v<T> << ", vocab_chunk " << vocab_chunk << ", row_chunk " << row_chunk << ")");
  const auto ctx = cuda::linear_cross_entropy_forward(to_dev(h), to_dev(w), t, kIgnoreIndex, vocab_chunk, row_chunk);
  const auto want_loss = ref::linear_cross_entropy(as_f64(h), as_f64(w), t);
  check_close(ctx.loss, want_loss, tol_for<T>(), what + " loss");
  const auto dh0 = rnd(h.shape(), 50, 1.0).template cast<T>(), dw0 = rnd(w.shape(), 51, 1.0).template cast<T>();
  const auto dh = to_dev(dh0), dw = to_dev(dw0);
  cuda::linear_cross_entropy_backward(to_dev(h), to_dev(w), ctx, scalar_dev<T>(0.9), dh, dw, vocab_chunk, row_chunk);
  const auto want = ref::linear_cross_entropy_backward(as_f64(h), as_f64(w), t, 0.9);
  check_close(dh, plus(as_f64(dh0), want.hidden), tol_for<T>(), what + " dhidden (accumulating)");
  check_close(dw, plus(as_f64(dw0), want.weight), tol_for<T>(), what + " dweight (accumulating)");
}

// linear_cross_entropy through the Var op on Cuda vs the CPU backend from the same start (both inputs
// trainable), plus the loss vs ref.
template <class T>
void check_lce_var(int64_t N, int64_t C, int64_t V, uint64_t seed, int ignore_every = 4) {
  const std::string tag = std::string(dtype_name_v<T>) + " N " + std::to_string(N) + ", C " + std::to_string(C) +
                          ", V " + std::to_string(V);
  INFO(tag);
  const auto h = rnd({N, C}, seed, 1.0).cast<T>(), w = rnd({V, C}, seed + 1, 0.2).cast<T>();
  const auto t = targets_for({N}, V, seed + 2, ignore_every);
  auto hd = Var<T, Cuda>::param(to_dev(h)), wd = Var<T, Cuda>::param(to_dev(w));
  auto loss = linear_cross_entropy(hd, wd, t);
  REQUIRE(loss.shape() == Shape());
  loss.backward();
  auto hc = Var<T>::param(h), wc = Var<T>::param(w);
  auto loss_c = linear_cross_entropy(hc, wc, t);
  loss_c.backward();
  check_close(loss.value(), loss_c.value(), tol_for<T>(), "loss vs the CPU backend " + tag);
  // f32: most dweight entries (~p / count) sit below kTolF32's atol, so compare them nearly relatively too
  // (the atol covers the rounding of sums that cancel). bf16: the logits are rounded to bf16 on the GPU only.
  const Tol tol = std::is_same_v<T, float> ? Tol{1e-9, 1e-3, "f32, nearly relative"} : kTolBf16;
  check_close(hd.grad(), hc.grad(), tol, "dhidden vs the CPU backend " + tag);
  check_close(wd.grad(), wc.grad(), tol, "dweight vs the CPU backend " + tag);
}

}  // namespace

TEST_CASE("cuda:cross_entropy") {
  SUBCASE("f32 and bf16 vs ref and the CPU backend, with ignored rows") {
    // (leading shape, V): tiny and odd vocabularies (rows not 16-byte aligned: scalar head and tail), rank-0
    // and rank-2 targets, a 16-byte multiple, Qwen3's and Gemma3's vocabularies.
    const std::vector<std::pair<Shape, int64_t>> cases = {{{1}, 1},      {{3}, 5},     {{7}, 33},    {{2, 3}, 17},
                                                          {{5}, 1031},   {Shape(), 6}, {{16}, 4096}, {{4}, 32001},
                                                          {{4}, 151936}, {{8}, 262144}};
    uint64_t seed = 100;
    for (const auto& [lead, V] : cases) {
      check_ce<float>(lead, V, seed += 10);
      check_ce<bf16>(lead, V, seed += 10);
    }
  }
  SUBCASE("zero logits give log(V); a confident row gives ~0") {
    for (int64_t V : {int64_t{1}, int64_t{10}, int64_t{262144}}) {
      const auto ctx = cuda::cross_entropy_forward(to_dev(Tensor<float>::zeros({3, V})), targets_for({3}, V, 1, 0));
      CHECK(static_cast<double>(to_host(ctx.loss).flat(0)) ==
            doctest::Approx(std::log(static_cast<double>(V))).epsilon(1e-5));
    }
    const auto x = to_dev(Tensor<float>::from_vector({1, 3}, {0.0f, 100.0f, 0.0f}));
    CHECK(to_host(cuda::cross_entropy_forward(x, Tensor<int32_t>::from_vector({1}, {1})).loss).flat(0) < 1e-6f);
    CHECK(static_cast<double>(
              to_host(cuda::cross_entropy_forward(x, Tensor<int32_t>::from_vector({1}, {0})).loss).flat(0)) ==
          doctest::Approx(100.0).epsilon(1e-6));
  }
  SUBCASE("a custom ignore_index that is a valid class") {
    const auto x = rnd({6, 9}, 3);
    const auto t = Tensor<int32_t>::from_vector({6}, {4, 1, 0, 1, 8, 2});
    const auto ctx = cuda::cross_entropy_forward(to_dev(x), t, 1);
    check_close(ctx.loss, ref::cross_entropy(x, t, 1), kTolF32, "loss with ignore_index 1");
    auto dx = Tensor<float, Cuda>::zeros({6, 9});
    cuda::cross_entropy_backward(to_dev(x), ctx, scalar_dev<float>(1.0), dx);
    check_close(dx, ref::cross_entropy_backward(x, t, 1.0, 1), kTolF32, "gradient with ignore_index 1");
  }
  SUBCASE("every row ignored: loss 0 and a zero gradient (as on the CPU)") {
    for (int64_t V : {int64_t{5}, int64_t{262144}}) {
      auto v = Var<float, Cuda>::param(to_dev(rnd({3, V}, 5)));
      auto loss = cross_entropy(v, Tensor<int32_t>::full({3}, kIgnoreIndex));
      CHECK(to_host(loss.value()).flat(0) == 0.0f);
      loss.backward();
      REQUIRE(v.grad().defined());
      const auto g = to_host(v.grad());
      bool zero = true;
      for (int64_t i = 0; i < g.numel(); ++i) zero = zero && g.data()[i] == 0.0f;
      CHECK(zero);
    }
  }
  SUBCASE("frozen logits record nothing") {
    CHECK_FALSE(cross_entropy(Var<float, Cuda>(to_dev(rnd({2, 7}, 6))), targets_for({2}, 7, 7)).requires_grad());
  }
  SUBCASE("errors: shapes name both; bad targets name row and value") {
    auto v = Var<float, Cuda>::param(to_dev(Tensor<float>::zeros({3, 5})));
    check_throws_naming<ShapeError>([&] { cross_entropy(v, Tensor<int32_t>::zeros({4})); }, {"[3, 5]", "[4]"},
                                    "targets of the wrong shape");
    check_throws_naming<Error>(
        [&] {
          cross_entropy(v, Tensor<int32_t>::from_vector({3}, {0, 4, 5}));
        },
        {"row 2", "target 5"}, "target == V");
    check_throws_naming<Error>(
        [&] {
          cross_entropy(v, Tensor<int32_t>::from_vector({3}, {-1, 0, 0}));
        },
        {"row 0", "target -1"}, "negative target");
  }
}

TEST_CASE("cuda:linear_cross_entropy") {
  SUBCASE("equals cross_entropy(hidden @ W^T) for forced vocabulary and row chunks (odd C: tiled GEMM path)") {
    const int64_t N = 7, C = 5, V = 13;
    const auto h = rnd({N, C}, 1, 1.0), w = rnd({V, C}, 2, 1.0);
    const auto t = targets_for({N}, V, 3);
    for (int64_t vc : {0, 1, 4, 13, 100})
      for (int64_t rc : {0, 1, 3}) check_lce_tiled(h, w, t, vc, rc, "odd sizes");
    check_lce_tiled(h.cast<bf16>(), w.cast<bf16>(), t, 4, 3, "odd sizes");
  }
  SUBCASE("16-byte shapes (cuBLASLt path), several vocabulary and row chunks") {
    const int64_t N = 96, C = 64, V = 1000;
    const auto h = rnd({N, C}, 4, 1.0), w = rnd({V, C}, 5, 0.3);
    const auto t = targets_for({N}, V, 6);
    for (int64_t vc : {0, 128, 256})
      for (int64_t rc : {0, 40}) {
        check_lce_tiled(h, w, t, vc, rc, "aligned");
        check_lce_tiled(h.cast<bf16>(), w.cast<bf16>(), t, vc, rc, "aligned");
      }
  }
  SUBCASE("rank-3 hidden [B, T, C] with targets [B, T]") {
    const auto h = rnd({2, 3, 8}, 7, 1.0), w = rnd({11, 8}, 8, 1.0);
    check_lce_tiled(h, w, targets_for({2, 3}, 11, 9), 0, 0, "rank 3");
  }
  SUBCASE("Var op vs the CPU backend: model hidden size, Gemma3's vocabulary") {
    check_lce_var<float>(64, 1152, 2048, 10);
    check_lce_var<bf16>(64, 1152, 2048, 20);
    check_lce_var<float>(8, 64, 262144, 30);
    check_lce_var<bf16>(8, 64, 262144, 40);
    check_lce_var<float>(33, 40, 517, 50, 0);  // no ignored row: no gather
  }
  SUBCASE("Var op: frozen weight gets no gradient, hidden still does (and the other way round)") {
    const auto h = rnd({5, 8}, 11, 1.0), w = rnd({9, 8}, 12, 1.0);
    const auto t = targets_for({5}, 9, 13);
    const auto want = ref::linear_cross_entropy_backward(h, w, t, 1.0);
    {
      auto hv = Var<float, Cuda>::param(to_dev(h));
      Var<float, Cuda> wv(to_dev(w), false);
      auto loss = linear_cross_entropy(hv, wv, t);
      check_close(loss.value(), ref::linear_cross_entropy(as_f64(h), as_f64(w), t), kTolF32, "loss (weight frozen)");
      loss.backward();
      check_close(hv.grad(), want.hidden, kTolF32, "dhidden (weight frozen)");
      CHECK_FALSE(wv.grad().defined());
    }
    {
      Var<float, Cuda> hv(to_dev(h), false);
      auto wv = Var<float, Cuda>::param(to_dev(w));
      linear_cross_entropy(hv, wv, t).backward();
      check_close(wv.grad(), want.weight, kTolF32, "dweight (hidden frozen)");
      CHECK_FALSE(hv.grad().defined());
    }
  }
  SUBCASE("ignored rows: no gradient; every row ignored gives 0 and zero gradients") {
    const auto h = rnd({4, 8}, 14, 1.0), w = rnd({6, 8}, 15, 1.0);
    const auto t = Tensor<int32_t>::from_vector({4}, {5, -100, 0, -100});
    auto hv = Var<float, Cuda>::param(to_dev(h)), wv = Var<float, Cuda>::param(to_dev(w));
    linear_cross_entropy(hv, wv, t).backward();
    const auto dh = to_host(hv.grad());
    for (int64_t c = 0; c < 8; ++c) {
      CHECK(dh(1, c) == 0.0f);
      CHECK(dh(3, c) == 0.0f);
    }
    const auto all = Tensor<int32_t>::full({4}, kIgnoreIndex);
    auto hv2 = Var<float, Cuda>::param(to_dev(h)), wv2 = Var<float, Cuda>::param(to_dev(w));
    auto loss = linear_cross_entropy(hv2, wv2, all);
    CHECK(to_host(loss.value()).flat(0) == 0.0f);
    loss.backward();
    REQUIRE(hv2.grad().defined());
    REQUIRE(wv2.grad().defined());
    const auto g1 = to_host(hv2.grad()), g2 = to_host(wv2.grad());
    bool zero = true;
    for (int64_t i = 0; i < g1.numel(); ++i) zero = zero && g1.data()[i] == 0.0f;
    for (int64_t i = 0; i < g2.numel(); ++i) zero = zero && g2.data()[i] == 0.0f;
    CHECK(zero);
  }
  SUBCASE("the chunk buffer stays under the budget: peak device memory far below an [N, V] f32 buffer") {
    const int64_t N = 256, C = 64, V = 262144;  // [N, V] f32 would be 256 MiB
    auto hv = Var<bf16, Cuda>::param(to_dev(rnd({N, C}, 16, 1.0).cast<bf16>()));
    auto wv = Var<bf16, Cuda>::param(to_dev(rnd({V, C}, 17, 0.2).cast<bf16>()));
    const auto t = targets_for({N}, V, 18);
    hv.grad_buffer();
    wv.grad_buffer();
    cuda::synchronize();
    const size_t before = cuda::memory_stats().current_bytes;
    cuda::reset_peak_memory();
    linear_cross_entropy(hv, wv, t).backward();
    cuda::synchronize();
    const size_t extra = cuda::memory_stats().peak_bytes - before;
    INFO("peak extra bytes " << extra);
    // One [N, V] bf16 chunk (128 MiB: it fits the 256 MB budget whole), small per-row buffers and at most
    // cuBLASLt's 32 MiB workspace (if this is the process's first GEMM): well under the 256 MiB of [N, V] f32.
    CHECK(extra < size_t{N} * V * sizeof(bf16) + (size_t{48} << 20));
  }
  SUBCASE("errors") {
    auto hv = Var<float, Cuda>::param(to_dev(Tensor<float>::zeros({3, 4})));
    check_throws_naming<ShapeError>(
        [&] {
          linear_cross_entropy(hv, Var<float, Cuda>(to_dev(Tensor<float>::zeros({7, 5}))), Tensor<int32_t>::zeros({3}));
        },
        {"[3, 4]", "[7, 5]"}, "hidden and weight do not fit");
    auto wv = Var<float, Cuda>(to_dev(Tensor<float>::zeros({7, 4})));
    check_throws_naming<ShapeError>([&] { linear_cross_entropy(hv, wv, Tensor<int32_t>::zeros({2})); },
                                    {"[3, 4]", "[2]"}, "targets of the wrong shape");
    check_throws_naming<Error>(
        [&] {
          linear_cross_entropy(hv, wv, Tensor<int32_t>::from_vector({3}, {0, 7, 1}));
        },
        {"row 1", "target 7"}, "target == V");
  }
}
