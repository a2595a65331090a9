// softmax / log_softmax on the GPU (kernels/softmax.cu): forward and backward against ref:: (f32 with
// kTolF32, bf16 with kTolBf16, one f16 check) from one element up to vocabulary rows ([2, 262144], the
// Gemma3 vocabulary; [2, 151936], Qwen3's), both kernel shapes (fused rows, chunked rows), misaligned
// inputs, -inf and huge logits (also a whole chunk of -inf), the same Var graphs on Cuda and on Cpu,
// and run-to-run determinism.
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/ops/softmax.hpp"

using namespace distill;
using namespace distill::test;

namespace {

// Odd sizes, a single element, rank 1, warp rows ([2, 5, 33]), block rows ([4, 4096]; [3, 1031] one
// element per load), chunked rows ([2, 40000]; the vocabularies).
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s{{1, 1},    {3, 7},     {7},         {2, 5, 33}, {4, 4096},
                                    {3, 1031}, {2, 40000}, {2, 151936}, {2, 262144}};
  return s;
}

template <class T>
Tensor<T> rnd(const Shape& s, uint64_t seed, double scale = 3.0) {
  return Tensor<float>::uniform(s, seed, -scale, scale).cast<T>();
}

std::string at(const std::string& what, const Shape& s, const char* dt) { return what + " " + s.str() + " " + dt; }

template <class T>
Tensor<T, Cuda> misaligned_dev(const Tensor<T>& x) {
  auto big = Tensor<T>::zeros({x.numel() + 1});
  for (int64_t i = 0; i < x.numel(); ++i) big.data()[i + 1] = x.flat(i);
  return to_dev(big).slice(0, 1, x.numel() + 1).reshape(x.shape());
}

template <class T, class F>
void check_graph(F f, const Tensor<T>& x, const Tensor<T>& seed, Tol tol, const std::string& what) {
  Var<T> vc = Var<T>::param(x);
  Var<T> yc = f(vc);
  Var<T, Cuda> vd = Var<T, Cuda>::param(to_dev(x));
  Var<T, Cuda> yd = f(vd);
  check_close(yd.value(), yc.value(), tol, what + ": value vs the Cpu graph");
  yc.backward(seed);
  yd.backward(to_dev(seed));
  REQUIRE(vd.grad().defined());
  check_close(vd.grad(), vc.grad(), tol, what + ": gradient vs the Cpu graph");
}

// Forward and accumulating backward of softmax (Log = false) or log_softmax against ref::.
template <bool Log, class T>
void forward_backward_case(const char* dt, uint64_t seed) {
  const Tol tol = tol_for<T>();
  const char* name = Log ? "log_softmax" : "softmax";
  for (const Shape& s : shapes()) {
    const auto x = rnd<T>(s, ++seed);
    const auto yr = Log ? ref::log_softmax(x) : ref::softmax(x);
    const auto y = Log ? cuda::log_softmax(to_dev(x)) : cuda::softmax(to_dev(x));
    check_close(y, yr, tol, at(std::string(name) + " forward", s, dt));
    check_close(Log ? cuda::log_softmax(misaligned_dev(x)) : cuda::softmax(misaligned_dev(x)), yr, tol,
                at(std::string(name) + " forward, misaligned", s, dt));

    const auto g = rnd<T>(s, ++seed, 1.0);
    const auto dx0 = rnd<T>(s, ++seed, 1.0);
    const auto want = Log ? ref::log_softmax_backward(yr, g) : ref::softmax_backward(yr, g);
    auto dx = to_dev(dx0);
    if (Log)
      cuda::log_softmax_backward(to_dev(yr), to_dev(g), dx);
    else
      cuda::softmax_backward(to_dev(yr), to_dev(g), dx);
    check_close(dx, plus(dx0, want), tol, at(std::string(name) + " backward (accumulating)", s, dt));
    auto dxm = misaligned_dev(dx0);
    if (Log)
      cuda::log_softmax_backward(misaligned_dev(yr), misaligned_dev(g), dxm);
    else
      cuda::softmax_backward(misaligned_dev(yr), misaligned_dev(g), dxm);
    check_close(dxm, plus(dx0, want), tol, at(std::string(name) + " backward, misaligned", s, dt));
    check_close(Log ? cuda::log_softmax_backward(to_dev(yr), to_dev(g)) : cuda::softmax_backward(to_dev(yr), to_dev(g)),
                want, tol, at(std::string(name) + " backward (fresh)", s, dt));
  }
}

// Rows with -inf: a whole leading chunk of -inf ([2, 40000] cuts rows into chunks of 13336), a row of all
// -inf (NaN, as torch), huge logits. Checks the finite rows against ref:: and the NaN row.
template <bool Log>
void minus_inf_rows_case() {
  const float inf = std::numeric_limits<float>::infinity();
  for (const int64_t K : {int64_t{33}, int64_t{4096}, int64_t{40000}}) {
    auto x = Tensor<float>::uniform({3, K}, 51, -3.0, 3.0);
    for (int64_t k = 0; k < K / 2; ++k) x(0, k) = -inf;   // the first half (a whole chunk when chunked)
    for (int64_t k = 0; k < K; ++k) x(1, k) = -inf;       // all -inf
    for (int64_t k = 0; k < K; k += 2) x(2, k) = 1.0e4f;  // huge, tied logits
    const auto y = to_host(Log ? cuda::log_softmax(to_dev(x)) : cuda::softmax(to_dev(x)));
    const auto want = Log ? ref::log_softmax(x) : ref::softmax(x);
    INFO((Log ? "log_softmax" : "softmax") << " with -inf rows, K " << K);
    check_close(y.slice(0, 0, 1), want.slice(0, 0, 1), kTolF32, "row with a -inf half");
    check_close(y.slice(0, 2, 3), want.slice(0, 2, 3), kTolF32, "row of huge logits");
    bool all_nan = true;
    for (int64_t k = 0; k < K; ++k) all_nan = all_nan && std::isnan(y(1, k));
    CHECK(all_nan);
    if (Log)
      CHECK(y(0, 0) == -inf);
    else
      CHECK(y(0, 0) == 0.0f);
  }
}

}  // namespace

TEST_CASE("cuda:softmax") {
  forward_backward_case<false, float>("f32", 100);
  forward_backward_case<false, bf16>("bf16", 200);
  SUBCASE("f16") {
    const auto x = rnd<f16>({5, 300}, 3);
    check_close(cuda::softmax(to_dev(x)), ref::softmax(x), kTolF16, "softmax f16");
  }
  SUBCASE("hand values: uniform rows; huge logits; -inf entries; an all -inf row is NaN") {
    const auto y = to_host(cuda::softmax(Tensor<float, Cuda>::zeros({2, 4})));
    for (int64_t i = 0; i < 8; ++i) CHECK(y.flat(i) == doctest::Approx(0.25).epsilon(1e-7));
    const float inf = std::numeric_limits<float>::infinity();
    const auto x = Tensor<float>::from_vector({3, 3}, {1000, 1000, -inf, 88, 89, 90, -inf, -inf, -inf});
    const auto z = to_host(cuda::softmax(to_dev(x)));
    CHECK(z.flat(0) == doctest::Approx(0.5));
    CHECK(z.flat(1) == doctest::Approx(0.5));
    CHECK(z.flat(2) == 0.0f);
    check_close(z.slice(0, 0, 2), ref::softmax(x.slice(0, 0, 2)), kTolF32, "softmax huge logits vs ref");
    CHECK(std::isnan(z.flat(6)));
  }
  SUBCASE("-inf rows, chunked and not") { minus_inf_rows_case<false>(); }
  SUBCASE("strided views are read correctly") {
    const auto x = rnd<float>({6, 9}, 4);
    check_close(cuda::softmax(to_dev(x).transpose(0, 1)), ref::softmax(x.transpose(0, 1).clone()), kTolF32,
                "softmax on a transposed device view");
  }
  SUBCASE("Var graphs on Cuda and Cpu agree") {
    uint64_t seed = 300;
    for (const Shape& s : {Shape{1, 1}, Shape{3, 7}, Shape{2, 5, 33}, Shape{4, 4096}, Shape{2, 262144}}) {
      const auto x = rnd<float>(s, ++seed);
      const auto g = rnd<float>(s, ++seed, 1.0);
      check_graph<float>([](const auto& v) { return softmax(v); }, x, g, kTolF32, at("softmax", s, "f32"));
      check_graph<bf16>([](const auto& v) { return softmax(v); }, x.cast<bf16>(), g.cast<bf16>(), kTolBf16,
                        at("softmax", s, "bf16"));
    }
    CHECK_FALSE(softmax(Var<float, Cuda>(to_dev(rnd<float>({2, 3}, 9)))).requires_grad());
  }
  SUBCASE("deterministic: two runs give the same bits") {
    const auto x = to_dev(rnd<float>({3, 262144}, 61));
    const auto a = to_host(cuda::softmax(x)), b = to_host(cuda::softmax(x));
    CHECK(std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0);
  }
  SUBCASE("errors") {
    CHECK(contains(shape_error_of([] { cuda::softmax(Tensor<float, Cuda>::zeros(Shape())); }), "softmax"));
    const std::string b = shape_error_of([] {
      cuda::softmax_backward(Tensor<float, Cuda>::zeros({3, 4}), Tensor<float, Cuda>::zeros({4, 3}));
    });
    CHECK(contains(b, "[3, 4]"));
    CHECK(contains(b, "[4, 3]"));
  }
}

TEST_CASE("cuda:log_softmax") {
  forward_backward_case<true, float>("f32", 400);
  forward_backward_case<true, bf16>("bf16", 500);
  SUBCASE("f16") {
    const auto x = rnd<f16>({5, 300}, 3);
    check_close(cuda::log_softmax(to_dev(x)), ref::log_softmax(x), kTolF16, "log_softmax f16");
  }
  SUBCASE("hand values: -log(K) for zeros; huge logits stay finite; -inf gives -inf") {
    const auto y = to_host(cuda::log_softmax(Tensor<float, Cuda>::zeros({3, 8})));
    for (int64_t i = 0; i < y.numel(); ++i) CHECK(y.flat(i) == doctest::Approx(-std::log(8.0)).epsilon(1e-7));
    const auto z = to_host(cuda::log_softmax(to_dev(Tensor<float>::from_vector({3}, {1e4f, 1e4f, 0.0f}))));
    CHECK(z.flat(0) == doctest::Approx(-std::log(2.0)).epsilon(1e-6));
    CHECK(z.flat(2) == doctest::Approx(-1e4 - std::log(2.0)).epsilon(1e-6));
    const float inf = std::numeric_limits<float>::infinity();
    const auto w = to_host(cuda::log_softmax(to_dev(Tensor<float>::from_vector({2}, {-inf, 0.0f}))));
    CHECK(w.flat(0) == -inf);
    CHECK(w.flat(1) == 0.0f);
  }
  SUBCASE("-inf rows, chunked and not") { minus_inf_rows_case<true>(); }
  SUBCASE("Var graphs on Cuda and Cpu agree, also composed with reductions") {
    uint64_t seed = 600;
    for (const Shape& s : {Shape{1, 1}, Shape{2, 3, 7}, Shape{4, 4096}, Shape{2, 151936}}) {
      const auto x = rnd<float>(s, ++seed);
      const auto g = rnd<float>(s, ++seed, 1.0);
      check_graph<float>([](const auto& v) { return log_softmax(v); }, x, g, kTolF32, at("log_softmax", s, "f32"));
      check_graph<bf16>([](const auto& v) { return log_softmax(v); }, x.cast<bf16>(), g.cast<bf16>(), kTolBf16,
                        at("log_softmax", s, "bf16"));
      // Two ops deep: a row reduction of the (log-)probabilities.
      const auto gm = rnd<float>(s.without(-1), ++seed, 1.0);
      check_graph<float>([](const auto& v) { return mean_last(log_softmax(v)); }, x, gm, kTolF32,
                         at("mean_last(log_softmax)", s, "f32"));
      check_graph<float>([](const auto& v) { return sum_last(softmax(v)); }, x, gm, kTolF32,
                         at("sum_last(softmax)", s, "f32"));
    }
  }
  SUBCASE("errors") {
    CHECK(contains(shape_error_of([] { cuda::log_softmax(Tensor<float, Cuda>::zeros(Shape())); }), "log_softmax"));
    const std::string b = shape_error_of([] {
      auto dx = Tensor<float, Cuda>::zeros({5, 2});
      cuda::log_softmax_backward(Tensor<float, Cuda>::zeros({2, 5}), Tensor<float, Cuda>::zeros({2, 5}), dx);
    });
    CHECK(contains(b, "[2, 5]"));
    CHECK(contains(b, "[5, 2]"));
  }
}
