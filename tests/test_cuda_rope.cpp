// RoPE on the GPU (kernels/rope.cu): forward and backward against ref:: (f32, bf16), bit for bit against the
// CPU path for the 16-bit types (both use rope_cos_sin's tables and the same rounding points), gradients of
// the same Var graph on Cuda and on Cpu (tables and positions overloads), the table upload cache, the plan.
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/ops/rope.hpp"

using namespace distill;
using namespace distill::test;

namespace {

Tensor<int32_t> random_positions(const Shape& s, uint64_t seed, int32_t hi) {
  auto u = Tensor<double>::uniform(s, seed, 0.0, static_cast<double>(hi));
  auto p = Tensor<int32_t>::empty(s);
  for (int64_t i = 0; i < p.numel(); ++i) p.flat(i) = static_cast<int32_t>(u.flat(i));
  return p;
}

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

struct Case {
  Shape x;
  bool per_batch;
  RopeConfig cfg;
};

// The CPU cases (odd D/2, a single position, scaling), plus the model shapes: Qwen3-4B (32 q / 8 kv heads,
// head_dim 128, theta 5e6) and Gemma3-1B (4 q / 1 kv heads, head_dim 256, local 1e4 / global 1e6).
const std::vector<Case>& cases() {
  static const std::vector<Case> c{
      {{2, 5, 3, 8}, false, {1e4}},        {{2, 4, 2, 6}, true, {5e6}},  // D/2 = 3: one pair per thread
      {{1, 7, 1, 256}, false, {1e6, 8.0}}, {{3, 1, 4, 2}, true, {1e4, 3.0}}, {{2, 33, 5, 128}, true, {5e6}},
      {{1, 64, 32, 128}, false, {5e6}},    {{2, 40, 8, 128}, true, {5e6}},   {{1, 96, 4, 256}, false, {1e4}},
      {{1, 96, 1, 256}, false, {1e6}}};
  return c;
}

std::string tag_of(const Case& c) {
  return c.x.str() + (c.per_batch ? " positions [B, T]" : " positions [T]") + " theta " + num(c.cfg.theta) +
         " factor " + num(c.cfg.linear_factor);
}

template <class T>
int64_t mismatches(const Tensor<T>& a, const Tensor<T>& b) {
  int64_t n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) n += bits_of(a.flat(i)) != bits_of(b.flat(i));
  return n;
}

}  // namespace

TEST_CASE("cuda:rope") {
  uint64_t seed = 500;
  for (const Case& c : cases()) {
    const std::string tag = tag_of(c);
    const Shape ps = c.per_batch ? Shape{c.x[0], c.x[1]} : Shape{c.x[1]};
    const auto pos = random_positions(ps, ++seed, 32768);
    const auto tab = rope_cos_sin(pos, c.x[3], c.cfg);

    // f32: against ref:: and the CPU path.
    {
      const auto x = Tensor<float>::uniform(c.x, ++seed), g = Tensor<float>::uniform(c.x, ++seed);
      const auto y = cuda::rope_forward(to_dev(x), tab);
      check_close(y, ref::rope(x, pos, c.cfg), kTolF32, "f32 forward " + tag);
      check_close(y, cpu::rope_forward(x, tab), kTolF32, "f32 forward vs cpu " + tag);
      const auto dx = cuda::rope_backward(to_dev(g), tab);
      check_close(dx, ref::rope_backward(g, pos, c.cfg), kTolF32, "f32 backward " + tag);
      check_close(dx, cpu::rope_backward(g, tab), kTolF32, "f32 backward vs cpu " + tag);
    }
    // bf16: against ref:: within the bf16 tolerance, and the CPU path bit for bit.
    {
      const auto x = Tensor<float>::uniform(c.x, ++seed, -3.0, 3.0).cast<bf16>();
      const auto g = Tensor<float>::uniform(c.x, ++seed).cast<bf16>();
      const auto y = to_host(cuda::rope_forward(to_dev(x), tab));
      check_close(y, ref::rope(x, pos, c.cfg), kTolBf16, "bf16 forward " + tag);
      CHECK_MESSAGE(mismatches(y, cpu::rope_forward(x, tab)) == 0, "bf16 forward bitwise vs cpu " << tag);
      const auto dx = to_host(cuda::rope_backward(to_dev(g), tab));
      check_close(dx, ref::rope_backward(g, pos, c.cfg), kTolBf16, "bf16 backward " + tag);
      CHECK_MESSAGE(mismatches(dx, cpu::rope_backward(g, tab)) == 0, "bf16 backward bitwise vs cpu " << tag);
    }
    // f16 runs the same kernel: bit for bit against the CPU.
    {
      const auto x = Tensor<float>::uniform(c.x, ++seed, -3.0, 3.0).cast<f16>();
      const auto y = to_host(cuda::rope_forward(to_dev(x), tab));
      CHECK_MESSAGE(mismatches(y, cpu::rope_forward(x, tab)) == 0, "f16 forward bitwise vs cpu " << tag);
    }
  }

  // --- gradients: the same Var graph on Cuda and on Cpu ------------------------------------------------------
  // Both overloads; rope applied twice to one input (gradients add up), onto an existing gradient buffer.
  for (const Case& c : cases()) {
    const std::string tag = tag_of(c);
    const Shape ps = c.per_batch ? Shape{c.x[0], c.x[1]} : Shape{c.x[1]};
    const auto pos = random_positions(ps, ++seed, 8192);
    const auto tab = rope_cos_sin(pos, c.x[3], c.cfg);
    const auto xv = Tensor<float>::uniform(c.x, ++seed), g = Tensor<float>::uniform(c.x, ++seed);
    const auto g0 = Tensor<float>::uniform(c.x, ++seed);
    auto run = [&](auto dev) {
      using D = decltype(dev);
      auto x = Var<float, D>::param(xv.to<D>());
      x.grad_buffer().copy_from(g0.to<D>());
      auto a = rope(x, pos, c.cfg);
      auto b = rope(x, tab);
      a.backward(g.to<D>());
      b.backward(g.to<D>());
      return to_host(x.grad());
    };
    check_close(run(Cuda{}), run(Cpu{}), kTolF32, "grad x " + tag);
  }
  {
    Var<float, Cuda> frozen(to_dev(Tensor<float>::uniform({1, 3, 2, 4}, 9)), false);
    CHECK(!rope(frozen, Tensor<int32_t>::from_vector({3}, {0, 5, 17}), RopeConfig{1e4}).requires_grad());
  }

  // --- the upload cache ------------------------------------------------------------------------------------------
  {
    const auto pos = Tensor<int32_t>::from_vector({4}, {0, 1, 2, 3});
    const auto tab = rope_cos_sin(pos, 16, {1e4});
    const auto d1 = detail::rope::device_tables(tab), d2 = detail::rope::device_tables(tab);
    CHECK(d1.cos.data() == d2.cos.data());  // the same tables are uploaded once
    const auto p1 = detail::rope::device_tables(pos, 16, {1e4}), p2 = detail::rope::device_tables(pos, 16, {1e4});
    CHECK(p1.cos.data() == p2.cos.data());
    CHECK(detail::rope::device_tables(pos, 16, {1e6}).cos.data() != p1.cos.data());  // another theta
    check_close(p1.cos, tab.cos, kTolF32, "cached cos table");
    const auto p3 = Tensor<int32_t>::from_vector({4}, {4, 5, 6, 7});
    check_close(detail::rope::device_tables(p3, 16, {1e4}).sin, rope_cos_sin(p3, 16, {1e4}).sin, kTolF32,
                "other positions, other table");
  }
  // Tables that die are never served again, even if the next ones reuse their host memory.
  for (int round = 0; round < 4; ++round) {
    const auto pos = random_positions({6}, 900 + round, 4096);
    const auto tab = rope_cos_sin(pos, 32, {1e4});
    const auto x = Tensor<float>::uniform({1, 6, 2, 32}, 910 + round).cast<bf16>();
    const auto y = to_host(cuda::rope_forward(to_dev(x), tab));
    CHECK_MESSAGE(mismatches(y, cpu::rope_forward(x, tab)) == 0, "fresh tables, round " << round);
  }

  // --- errors name the shapes --------------------------------------------------------------------------------------
  {
    const auto pos2 = Tensor<int32_t>::from_vector({2}, {0, 1});
    Var<float, Cuda> x(to_dev(Tensor<float>::uniform({1, 2, 1, 4}, 330)));
    check_throws_naming<ShapeError>([&] { rope(x, Tensor<int32_t>::zeros({3}), {1e4}); }, {"[3]", "[1, 2, 1, 4]"},
                                    "positions [T] of the wrong length");
    check_throws_naming<ShapeError>([&] { rope(x, rope_cos_sin(pos2, 6, {1e4})); }, {"[2, 3]", "[1, 2, 1, 4]"},
                                    "tables for another head dim");
    check_throws_naming<Error>([&] { rope(x, pos2, {0.0}); }, {"theta"}, "theta 0");
  }
}
