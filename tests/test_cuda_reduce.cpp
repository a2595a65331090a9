// Reductions on the GPU (kernels/reduce.cu): sum_last, mean_last, max_last and sum_all forward and backward
// against ref:: (f32 with kTolF32, bf16 with kTolBf16, one f16 check), the same Var graphs on Cuda and on
// Cpu (gradients compared), max_last's first-argmax rule (ties, NaN, -inf, across chunk boundaries),
// sum_all's determinism, misaligned and strided inputs, empty axes, and the row plan.
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/ops/reduce.hpp"

using namespace distill;
using namespace distill::test;

namespace {

// Odd sizes, a single element, rank 1 (-> rank 0), the model widths (Gemma3-1B 1152, Qwen3-4B 2560),
// a row too long for the scalar path's registers ([3, 1031]: 1031 is no multiple of 4 or 8), rows cut into
// chunks ([2, 40000]: 3 chunks of f32 / bf16) and a vocabulary row ([2, 262144]).
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s{{1, 1},    {3, 7},    {7},       {2, 5, 33}, {4, 4096},
                                    {4, 1152}, {2, 2560}, {3, 1031}, {2, 40000}, {2, 262144}};
  return s;
}

template <class T>
Tensor<T> rnd(const Shape& s, uint64_t seed, double lo = -2.0, double hi = 2.0) {
  return Tensor<float>::uniform(s, seed, lo, hi).cast<T>();
}

std::string at(const std::string& what, const Shape& s, const char* dt) { return what + " " + s.str() + " " + dt; }

// A contiguous device copy of x whose data pointer is 4 bytes (f32) / 2 bytes (16-bit) past a 16-byte
// boundary: the kernels must take their one-element path.
template <class T>
Tensor<T, Cuda> misaligned_dev(const Tensor<T>& x) {
  auto big = Tensor<T>::zeros({x.numel() + 1});
  for (int64_t i = 0; i < x.numel(); ++i) big.data()[i + 1] = x.flat(i);
  return to_dev(big).slice(0, 1, x.numel() + 1).reshape(x.shape());
}

// The same Var graph on Cuda and on Cpu from the same start: values and input gradients must agree.
template <class T, class F>
void check_graph(F f, const Tensor<T>& x, const Tensor<T>* seed, Tol tol, const std::string& what) {
  Var<T> vc = Var<T>::param(x);
  Var<T> yc = f(vc);
  Var<T, Cuda> vd = Var<T, Cuda>::param(to_dev(x));
  Var<T, Cuda> yd = f(vd);
  check_close(yd.value(), yc.value(), tol, what + ": value vs the Cpu graph");
  if (seed) {
    yc.backward(*seed);
    yd.backward(to_dev(*seed));
  } else {
    yc.backward();
    yd.backward();
  }
  REQUIRE(vd.grad().defined());
  check_close(vd.grad(), vc.grad(), tol, what + ": gradient vs the Cpu graph");
}

template <class T>
void sum_mean_case(bool mean, const char* dt) {
  const Tol tol = tol_for<T>();
  const char* name = mean ? "mean_last" : "sum_last";
  uint64_t seed = mean ? 500 : 100;
  for (const Shape& s : shapes()) {
    const auto x = rnd<T>(s, ++seed);
    const Shape os = s.without(-1);
    const auto want = mean ? ref::mean_last(x) : ref::sum_last(x);
    const auto y = mean ? cuda::mean_last(to_dev(x)) : cuda::sum_last(to_dev(x));
    CHECK(y.shape() == os);
    check_close(y, want, tol, at(std::string(name) + " forward", s, dt));
    check_close(mean ? cuda::mean_last(misaligned_dev(x)) : cuda::sum_last(misaligned_dev(x)), want, tol,
                at(std::string(name) + " forward, misaligned input", s, dt));

    const auto g = rnd<T>(os, ++seed);
    const auto dx0 = rnd<T>(s, ++seed);
    const auto gref = mean ? ref::mean_last_backward(g, s) : ref::sum_last_backward(g, s);
    auto dx = to_dev(dx0);
    if (mean)
      cuda::mean_last_backward(to_dev(g), dx);
    else
      cuda::sum_last_backward(to_dev(g), dx);
    check_close(dx, plus(dx0, gref), tol, at(std::string(name) + " backward (accumulating)", s, dt));
    auto dxm = misaligned_dev(dx0);
    if (mean)
      cuda::mean_last_backward(to_dev(g), dxm);
    else
      cuda::sum_last_backward(to_dev(g), dxm);
    check_close(dxm, plus(dx0, gref), tol, at(std::string(name) + " backward, misaligned dx", s, dt));
    check_close(mean ? cuda::mean_last_backward(to_dev(g), s) : cuda::sum_last_backward(to_dev(g), s), gref, tol,
                at(std::string(name) + " backward (fresh)", s, dt));
  }
}

}  // namespace

TEST_CASE("cuda:sum_last") {
  sum_mean_case<float>(false, "f32");
  sum_mean_case<bf16>(false, "bf16");
  SUBCASE("f16") {
    const auto x = rnd<f16>({5, 300}, 3);
    check_close(cuda::sum_last(to_dev(x)), ref::sum_last(x), kTolF16, "sum_last f16");
  }
  SUBCASE("hand values; rank 1 gives a rank-0 one-element tensor; strided views; empty last axis") {
    const auto y = to_host(cuda::sum_last(to_dev(Tensor<float>::from_vector({4}, {1, 2, 3, 4}))));
    CHECK(y.rank() == 0);
    CHECK(y.flat(0) == 10.0f);
    const auto xt = rnd<float>({6, 9}, 4);
    check_close(cuda::sum_last(to_dev(xt).transpose(0, 1)), ref::sum_last(xt.transpose(0, 1).clone()), kTolF32,
                "sum_last on a transposed device view");
    const auto z = to_host(cuda::sum_last(Tensor<float, Cuda>::zeros({3, 0})));
    REQUIRE(z.shape() == Shape{3});
    CHECK(z.flat(2) == 0.0f);
  }
  SUBCASE("Var graphs on Cuda and Cpu agree") {
    for (const Shape& s : {Shape{3, 7}, Shape{2, 5, 33}, Shape{4, 4096}, Shape{2, 40000}}) {
      const auto x = rnd<float>(s, 7);
      const auto seed = rnd<float>(s.without(-1), 8);
      check_graph<float>([](const auto& v) { return sum_last(v); }, x, &seed, kTolF32, at("sum_last", s, "f32"));
      const auto xb = x.cast<bf16>(), sb = seed.cast<bf16>();
      check_graph<bf16>([](const auto& v) { return sum_last(v); }, xb, &sb, kTolBf16, at("sum_last", s, "bf16"));
    }
    CHECK_FALSE(sum_last(Var<float, Cuda>(to_dev(rnd<float>({2, 3}, 9)))).requires_grad());
  }
  SUBCASE("errors name the shapes") {
    CHECK(contains(shape_error_of([] { cuda::sum_last(Tensor<float, Cuda>::zeros(Shape())); }), "sum_last"));
    const std::string b = shape_error_of([] {
      auto dx = Tensor<float, Cuda>::zeros({3, 4});
      cuda::sum_last_backward(Tensor<float, Cuda>::zeros({4}), dx);
    });
    CHECK(contains(b, "[4]"));
    CHECK(contains(b, "[3]"));
  }
}

TEST_CASE("cuda:mean_last") {
  sum_mean_case<float>(true, "f32");
  sum_mean_case<bf16>(true, "bf16");
  SUBCASE("hand values; 0/0 over an empty axis") {
    const auto y = to_host(cuda::mean_last(to_dev(Tensor<float>::from_vector({2, 4}, {1, 2, 3, 4, -4, 0, 0, 0}))));
    CHECK(y.flat(0) == 2.5f);
    CHECK(y.flat(1) == -1.0f);
    CHECK(std::isnan(to_host(cuda::mean_last(Tensor<float, Cuda>::zeros({2, 0}))).flat(0)));
  }
  SUBCASE("Var graphs on Cuda and Cpu agree") {
    for (const Shape& s : {Shape{1, 1}, Shape{3, 7}, Shape{4, 1152}, Shape{2, 40000}}) {
      const auto x = rnd<float>(s, 11);
      const auto seed = rnd<float>(s.without(-1), 12);
      check_graph<float>([](const auto& v) { return mean_last(v); }, x, &seed, kTolF32, at("mean_last", s, "f32"));
      const auto xb = x.cast<bf16>(), sb = seed.cast<bf16>();
      check_graph<bf16>([](const auto& v) { return mean_last(v); }, xb, &sb, kTolBf16, at("mean_last", s, "bf16"));
    }
  }
}

TEST_CASE("cuda:max_last") {
  uint64_t seed = 900;
  for (const Shape& s : shapes()) {
    for (int dt = 0; dt < 2; ++dt) {
      const char* dn = dt ? "bf16" : "f32";
      const auto xf = rnd<float>(s, ++seed);
      const auto g = rnd<float>(s.without(-1), ++seed);
      const auto dx0 = rnd<float>(s, ++seed);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        const auto x = xf.cast<T>();
        const auto m = cuda::max_last_with_indices(to_dev(x));
        const auto c = cpu::max_last_with_indices(x);
        check_close(m.values, ref::max_last(x), tol_for<T>(), at("max_last forward", s, dn));
        CHECK(to_host(m.indices).to_vector() == c.indices.to_vector());
        const auto mm = cuda::max_last_with_indices(misaligned_dev(x));
        CHECK(to_host(mm.indices).to_vector() == c.indices.to_vector());
        auto dx = to_dev(dx0.cast<T>());
        cuda::max_last_backward(m.indices, to_dev(g.cast<T>()), dx);
        check_close(dx, plus(dx0.cast<T>(), ref::max_last_backward(x, g.cast<T>())), tol_for<T>(),
                    at("max_last backward (accumulating)", s, dn));
      };
      if (dt)
        run(bf16{});
      else
        run(float{});
    }
  }
  SUBCASE("ties: the gradient goes to the first argmax only") {
    const auto x = Tensor<float>::from_vector({2, 4}, {1, 3, 3, 2, 5, 5, 5, 5});
    Var<float, Cuda> v = Var<float, Cuda>::param(to_dev(x));
    Var<float, Cuda> y = max_last(v);
    const auto yh = to_host(y.value());
    CHECK(yh.flat(0) == 3.0f);
    CHECK(yh.flat(1) == 5.0f);
    y.backward(to_dev(Tensor<float>::from_vector({2}, {10, 20})));
    const std::vector<float> want = {0, 10, 0, 0, 20, 0, 0, 0};
    CHECK(to_host(v.grad()).to_vector() == want);
  }
  SUBCASE("NaN propagates; -inf is an ordinary value") {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const auto x = Tensor<float>::from_vector({3, 3}, {1, nan, 2, -inf, -inf, -5, -inf, -inf, -inf});
    const auto m = cuda::max_last_with_indices(to_dev(x));
    const auto v = to_host(m.values);
    const auto i = to_host(m.indices);
    CHECK(std::isnan(v.flat(0)));
    CHECK(i.flat(0) == 1);
    CHECK(v.flat(1) == -5.0f);
    CHECK(i.flat(1) == 2);
    CHECK(v.flat(2) == -inf);
    CHECK(i.flat(2) == 0);
  }
  SUBCASE("first argmax across threads, warps and chunks") {
    // [4, 40000] f32 is cut into 3 chunks of 13336; [5, 33] and [5, 1031] take the one-element path.
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    for (const int64_t K : {int64_t{33}, int64_t{1031}, int64_t{4096}, int64_t{40000}}) {
      auto x = Tensor<float>::uniform({5, K}, 21, -1.0, 1.0);
      for (int64_t k = 0; k < K; ++k) x(0, k) = 1.0f;  // all equal: index 0
      const int64_t a = K / 3, b = (2 * K) / 3, c = K - 1;
      x(1, c) = 5.0f, x(1, b) = 5.0f, x(1, a) = 5.0f;  // ties in different chunks/threads: the first
      x(2, b) = nan, x(2, a + 1) = nan;                // the first NaN, even after a larger value
      x(2, 0) = 7.0f;
      for (int64_t k = 0; k < K; ++k) x(3, k) = -inf;  // all -inf: index 0, value -inf
      x(4, c) = 9.0f;                                  // the last element
      const auto want = cpu::max_last_with_indices(x);
      for (int dt = 0; dt < 2; ++dt) {
        INFO("K " << K << (dt ? " bf16" : " f32"));
        if (dt) {
          const auto xb = x.cast<bf16>();
          const auto m = cuda::max_last_with_indices(to_dev(xb));
          CHECK(to_host(m.indices).to_vector() == cpu::max_last_with_indices(xb).indices.to_vector());
        } else {
          const auto m = cuda::max_last_with_indices(to_dev(x));
          const auto idx = to_host(m.indices).to_vector();
          CHECK(idx == want.indices.to_vector());
          CHECK(idx == std::vector<int64_t>{0, a, a + 1, 0, c});
          const auto vals = to_host(m.values);
          CHECK(vals.flat(0) == 1.0f);
          CHECK(vals.flat(1) == 5.0f);
          CHECK(std::isnan(vals.flat(2)));
          CHECK(vals.flat(3) == -inf);
          CHECK(vals.flat(4) == 9.0f);
        }
      }
    }
  }
  SUBCASE("Var graphs on Cuda and Cpu agree") {
    for (const Shape& s : {Shape{3, 7}, Shape{2, 5, 33}, Shape{4, 4096}, Shape{2, 40000}}) {
      const auto x = rnd<float>(s, 31);
      const auto seed = rnd<float>(s.without(-1), 32);
      check_graph<float>([](const auto& v) { return max_last(v); }, x, &seed, kTolF32, at("max_last", s, "f32"));
      const auto xb = x.cast<bf16>(), sb = seed.cast<bf16>();
      check_graph<bf16>([](const auto& v) { return max_last(v); }, xb, &sb, kTolBf16, at("max_last", s, "bf16"));
    }
  }
  SUBCASE("errors") {
    CHECK(contains(shape_error_of([] { cuda::max_last(Tensor<float, Cuda>::zeros(Shape())); }), "max_last"));
    CHECK_THROWS_AS(cuda::max_last(Tensor<float, Cuda>::zeros({2, 0})), Error);
    CHECK_NOTHROW(cuda::max_last(Tensor<float, Cuda>::zeros({0, 3})));
  }
}

TEST_CASE("cuda:sum_all") {
  uint64_t seed = 1300;
  for (const Shape& s : {Shape{1, 1}, Shape{3, 7}, Shape{2, 5, 33}, Shape{4, 4096}, Shape{5, 4099}, Shape{3, 100003}}) {
    auto run = [&](auto tag, const char* dn) {
      using T = decltype(tag);
      const auto x = rnd<T>(s, ++seed);
      const auto y = cuda::sum_all(to_dev(x));
      CHECK(y.rank() == 0);
      check_close(y, ref::sum_all(x), tol_for<T>(), at("sum_all forward", s, dn));
      check_close(cuda::sum_all(misaligned_dev(x)), ref::sum_all(x), tol_for<T>(),
                  at("sum_all forward, misaligned", s, dn));
      const auto g = Tensor<T>::full(Shape(), T(0.75f));
      const auto dx0 = rnd<T>(s, ++seed);
      auto dx = to_dev(dx0);
      cuda::sum_all_backward(to_dev(g), dx);
      check_close(dx, plus(dx0, Tensor<T>::full(s, T(0.75f))), tol_for<T>(), at("sum_all backward", s, dn));
      auto dxm = misaligned_dev(dx0);
      cuda::sum_all_backward(to_dev(g), dxm);
      check_close(dxm, plus(dx0, Tensor<T>::full(s, T(0.75f))), tol_for<T>(),
                  at("sum_all backward, misaligned", s, dn));
    };
    run(float{}, "f32");
    run(bf16{}, "bf16");
  }
  SUBCASE("deterministic: two runs give the same bits") {
    const auto x = to_dev(rnd<float>({3000001}, 41));
    const auto a = to_host(cuda::sum_all(x)), b = to_host(cuda::sum_all(x));
    CHECK(same_bits(a, b));
    const auto xb = to_dev(rnd<bf16>({3000001}, 42));
    CHECK(bits_of(to_host(cuda::sum_all(xb)).flat(0)) == bits_of(to_host(cuda::sum_all(xb)).flat(0)));
    check_close(cuda::sum_all(x), ref::sum_all(to_host(x)), kTolF32, "sum_all of 3M elements");
  }
  SUBCASE("hand value and empty input") {
    CHECK(to_host(cuda::sum_all(to_dev(Tensor<float>::from_vector({2, 2}, {1, 2, 3, 4.5f})))).flat(0) == 10.5f);
    CHECK(to_host(cuda::sum_all(Tensor<float, Cuda>::zeros({0, 3}))).flat(0) == 0.0f);
  }
  SUBCASE("Var graphs on Cuda and Cpu agree, composed into a scalar loss") {
    for (const Shape& s : {Shape{3, 4}, Shape{2, 5, 33}, Shape{4, 4096}}) {
      const auto x = rnd<float>(s, 43);
      check_graph<float>([](const auto& v) { return sum_all(v); }, x, nullptr, kTolF32, at("sum_all", s, "f32"));
      check_graph<float>([](const auto& v) { return sum_all(mean_last(v)); }, x, nullptr, kTolF32,
                         at("sum_all(mean_last)", s, "f32"));
      check_graph<float>([](const auto& v) { return sum_all(max_last(v)); }, x, nullptr, kTolF32,
                         at("sum_all(max_last)", s, "f32"));
      check_graph<bf16>([](const auto& v) { return sum_all(sum_last(v)); }, x.cast<bf16>(), nullptr, kTolBf16,
                        at("sum_all(sum_last)", s, "bf16"));
    }
  }
}
