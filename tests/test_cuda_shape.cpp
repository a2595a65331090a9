// Shape ops on Cuda (concat, split, reshape, transpose; distill/ops/shape_ops.hpp): the same Var graph built
// on Cuda and on Cpu from the same inputs. They are copies and additions, so forward values must equal the
// CPU's bit for bit, and gradients too (checked bitwise and, for the error report, with kTolF32/kTolBf16).
// f32 and bf16; odd shapes, empty pieces, and the real model sizes (Qwen3-4B's fused q/k/v width
// 4096 + 1024 + 1024, Gemma3-1B's [B, T, 4, 256] attention layout).
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/ops/shape_ops.hpp"

using namespace distill;
using distill::test::check_close;
using distill::test::check_throws_naming;
using distill::test::to_dev;
using distill::test::to_host;
using distill::test::tol_for;

namespace {

template <class T>
struct Result {
  std::vector<Tensor<T>> outs;   // forward values
  std::vector<Tensor<T>> grads;  // per input; undefined when it got none
};

// Builds fn's graph on device D from host inputs, runs one backward per output (seeded upstream gradients),
// and returns values and input gradients on the host.
template <class D, class T, class F>
Result<T> run(F fn, const std::vector<Tensor<T>>& inputs, const std::vector<bool>& trainable, uint64_t seed) {
  std::vector<Var<T, D>> xs;
  for (size_t i = 0; i < inputs.size(); ++i)
    xs.push_back(Var<T, D>(inputs[i].template to<D>(), trainable.empty() || trainable[i]));
  const std::vector<Var<T, D>> ys = fn(xs);
  Result<T> r;
  for (size_t j = 0; j < ys.size(); ++j) {
    r.outs.push_back(ys[j].value().template to<Cpu>());
    if (ys[j].requires_grad() && ys[j].numel() > 0)
      ys[j].backward(Tensor<T>::uniform(ys[j].shape(), seed + j).template to<D>());
  }
  for (const auto& x : xs) r.grads.push_back(x.grad().defined() ? x.grad().template to<Cpu>() : Tensor<T>());
  return r;
}

template <class T>
int64_t mismatches(const Tensor<T>& a, const Tensor<T>& b) {
  int64_t n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) n += !(to_compute<T>(a.flat(i)) == to_compute<T>(b.flat(i)));
  return n;
}

// The graph on Cuda against the same graph on Cpu.
template <class T, class F>
void check_cuda_vs_cpu(F fn, const std::vector<Shape>& shapes, const std::string& what, uint64_t seed,
                       const std::vector<bool>& trainable = {}) {
  INFO(what << " (" << dtype_name_v<T> << ")");
  std::vector<Tensor<T>> inputs;
  for (size_t i = 0; i < shapes.size(); ++i) inputs.push_back(Tensor<T>::uniform(shapes[i], seed + 100 * i));
  const Result<T> want = run<Cpu>(fn, inputs, trainable, seed + 7);
  const Result<T> got = run<Cuda>(fn, inputs, trainable, seed + 7);
  REQUIRE(got.outs.size() == want.outs.size());
  for (size_t j = 0; j < got.outs.size(); ++j) {
    INFO("output " << j);
    REQUIRE(got.outs[j].shape() == want.outs[j].shape());
    CHECK(mismatches(got.outs[j], want.outs[j]) == 0);
  }
  for (size_t i = 0; i < got.grads.size(); ++i) {
    INFO("gradient of input " << i);
    REQUIRE(got.grads[i].defined() == want.grads[i].defined());
    if (!want.grads[i].defined()) continue;
    check_close(got.grads[i], want.grads[i], tol_for<T>(), what + ", gradient " + std::to_string(i));
    CHECK(mismatches(got.grads[i], want.grads[i]) == 0);
  }
}

template <class F>
void both_dtypes(F fn, const std::vector<Shape>& shapes, const std::string& what, uint64_t seed,
                 const std::vector<bool>& trainable = {}) {
  check_cuda_vs_cpu<float>(fn, shapes, what, seed, trainable);
  check_cuda_vs_cpu<bf16>(fn, shapes, what, seed, trainable);
}

std::string shapes_str(const std::vector<Shape>& s) {
  std::string out;
  for (const Shape& x : s) out += x.str();
  return out;
}

}  // namespace

TEST_CASE("cuda:concat") {
  struct Case {
    std::vector<Shape> xs;
    int axis;
  };
  const std::vector<Case> cases{{{{2, 3, 4}, {2, 1, 4}, {2, 5, 4}}, 1},
                                {{{2, 3, 4}, {2, 1, 4}, {2, 5, 4}}, -2},
                                {{{1, 3}, {4, 3}}, 0},
                                {{{3, 2}, {3, 1}, {3, 7}}, -1},
                                {{{2, 0, 4}, {2, 3, 4}}, 1},  // an empty piece
                                {{{5, 7}}, 1},                // a single input
                                {{{64, 130}, {64, 70}}, 1},
                                {{{128, 4096}, {128, 1024}, {128, 1024}}, -1},  // Qwen3-4B q | k | v
                                {{{1, 512, 1, 256}, {1, 64, 1, 256}}, 1}};      // Gemma3-1B KV append along T
  uint64_t seed = 5000;
  for (const Case& c : cases) {
    auto fn = [axis = c.axis](const auto& xs) {
      using V = typename std::decay_t<decltype(xs)>::value_type;
      return std::vector<V>{concat(xs, axis)};
    };
    both_dtypes(fn, c.xs, "concat axis " + std::to_string(c.axis) + " of " + shapes_str(c.xs), seed += 10);
  }
  // The same Var twice collects both slices; a frozen input gets nothing.
  both_dtypes(
      [](const auto& xs) {
        using V = typename std::decay_t<decltype(xs)>::value_type;
        return std::vector<V>{concat({xs[0], xs[1], xs[0]}, 0)};
      },
      {{2, 3}, {1, 3}}, "input used twice, frozen input", 5200, {true, false});

  std::vector<Var<float, Cuda>> bad{Var<float, Cuda>(to_dev(Tensor<float>::zeros({2, 3}))),
                                    Var<float, Cuda>(to_dev(Tensor<float>::zeros({3, 3})))};
  check_throws_naming<ShapeError>([&] { concat(bad, 1); }, {"[2, 3]", "[3, 3]"}, "non-axis extent differs on Cuda");
}

TEST_CASE("cuda:split") {
  struct Case {
    Shape x;
    std::vector<int64_t> sizes;
    int axis;
  };
  const std::vector<Case> cases{
      {{4, 9}, {2, 3, 4}, 1},         {{5, 2, 3}, {1, 4}, 0},  // along the outermost axis: contiguous slices
      {{3, 4, 5}, {0, 2, 3}, -1},                              // an empty piece
      {{2, 7, 3}, {7}, -2},                                    // one piece
      {{80, 300}, {100, 150, 50}, 1}, {{128, 6144}, {4096, 1024, 1024}, -1},  // Qwen3-4B fused q/k/v
      {{2, 64, 6, 128}, {4, 1, 1}, 2}};                                       // heads: 4 q, 1 k, 1 v
  uint64_t seed = 6000;
  for (const Case& c : cases) {
    auto fn = [c](const auto& xs) { return split(xs[0], c.sizes, c.axis); };
    both_dtypes(fn, {c.x}, "split along axis " + std::to_string(c.axis) + " of " + c.x.str(), seed += 10);
  }
  // Only one piece carries a gradient back; pieces rejoined by concat.
  both_dtypes(
      [](const auto& xs) {
        using V = typename std::decay_t<decltype(xs)>::value_type;
        return std::vector<V>{split(xs[0], {3, 5, 2}, 1)[1]};
      },
      {{6, 10}}, "one piece of three", 6300);
  both_dtypes(
      [](const auto& xs) {
        using V = typename std::decay_t<decltype(xs)>::value_type;
        auto p = split(xs[0], {2, 1, 1}, 0);
        return std::vector<V>{concat({p[2], p[0], p[1]}, 0)};
      },
      {{4, 33}}, "concat(split(x)) reordered", 6400);

  Var<float, Cuda> x(to_dev(Tensor<float>::zeros({4, 6})));
  check_throws_naming<ShapeError>([&] { split(x, {2, 3}, 1); }, {"[2, 3]", "[4, 6]"}, "sizes do not sum on Cuda");
}

TEST_CASE("cuda:reshape") {
  // Both uses of x accumulate into its gradient.
  both_dtypes(
      [](const auto& xs) {
        using V = typename std::decay_t<decltype(xs)>::value_type;
        return std::vector<V>{reshape(xs[0], Shape{6, 4}), reshape(xs[0], {-1, 3, 2}), reshape(xs[0], {24})};
      },
      {{2, 3, 4}}, "reshape three ways", 7000);
  both_dtypes(
      [](const auto& xs) {
        using V = typename std::decay_t<decltype(xs)>::value_type;
        return std::vector<V>{reshape(xs[0], {512, 4, 256})};
      },
      {{512, 1024}}, "Gemma3-1B q projection to heads", 7100);
  // A reshape of a transposed copy, then transposed back.
  both_dtypes(
      [](const auto& xs) {
        using V = typename std::decay_t<decltype(xs)>::value_type;
        return std::vector<V>{transpose(reshape(transpose(xs[0], 0, 1), {5, 3, 2}), 0, 2)};
      },
      {{6, 5}}, "transpose / reshape chain", 7200);

  // A view on the device: no copy.
  const auto xv = to_dev(Tensor<float>::uniform({2, 3, 4}, 7300));
  auto x = Var<float, Cuda>::param(xv);
  auto y = reshape(x, {4, -1});
  CHECK(y.shape() == Shape{4, 6});
  CHECK(y.value().data() == x.value().data());
  check_throws_naming<ShapeError>([&] { reshape(x, Shape{5}); }, {"[2, 3, 4]", "[5]"}, "element count differs on Cuda");
}

TEST_CASE("cuda:transpose") {
  struct Case {
    Shape x;
    int a, b;
  };
  const std::vector<Case> cases{{{3, 5}, 0, 1},           {{2, 3, 4}, 0, 2}, {{2, 3, 4}, -1, -2},
                                {{2, 3, 4, 5}, 1, 3},     {{1, 7}, 0, 1},    {{3, 4}, 1, 1},
                                {{2, 0, 3}, 0, 1},        {{96, 130}, 0, 1}, {{1, 512, 4, 256}, 1, 2},
                                {{2, 128, 32, 128}, 1, 2}};  // Gemma3-1B and Qwen3-4B [B, T, H, D] -> [B, H, T, D]
  uint64_t seed = 8000;
  for (const Case& c : cases) {
    auto fn = [c](const auto& xs) {
      using V = typename std::decay_t<decltype(xs)>::value_type;
      return std::vector<V>{transpose(xs[0], c.a, c.b)};
    };
    both_dtypes(fn, {c.x}, c.x.str() + " axes " + std::to_string(c.a) + ", " + std::to_string(c.b), seed += 10);
  }
  const auto xv = to_dev(Tensor<float>::uniform({3, 4}, 8200));
  auto x = Var<float, Cuda>::param(xv);
  auto y = transpose(x, 0, 1);
  CHECK(y.value().is_contiguous());
  CHECK(y.value().data() != x.value().data());
  check_throws_naming<ShapeError>([&] { transpose(x, 0, 2); }, {"axis 2", "[3, 4]"}, "axis out of range on Cuda");
}
