// Element-wise expressions on the GPU (one generated kernel per expression, forward and backward) against
// the CPU's fused passes and ref-style loops: every op tag, broadcasting, strided views, the 16-byte
// vector path and its tail, bf16/f16, and gradients (including broadcast ones) against the CPU's.
#include <doctest/doctest.h>

#include <string>

#include "cuda_harness.hpp"
#include "distill/autograd.hpp"

using namespace distill;
using namespace distill::test;

namespace {

// Runs the same expression builder on CPU and CUDA tensors and compares the results.
template <class T, class Build>
void check_forward(const std::vector<Shape>& shapes, Build build, Tol tol, const std::string& what) {
  std::vector<Tensor<T>> h;
  std::vector<Tensor<T, Cuda>> d;
  uint64_t seed = 7;
  for (const auto& s : shapes) {
    h.push_back(Tensor<float>::uniform(s, ++seed, -2.0, 2.0).template cast<T>());
    d.push_back(h.back().template to<Cuda>());
  }
  const Tensor<T> want = eval(build(h));
  const Tensor<T, Cuda> got = eval(build(d));
  check_close(got, want, tol, what);
}

// One op tag on both backends: forward (f32, bf16) and gradients (f32) of y = op(a) or op(a, b), with
// a broadcast second operand for binaries. `lo` keeps log/rsqrt/div inputs positive.
template <class Fn>
void check_tag(Fn fn, double lo, const char* name) {
  INFO(name);
  const Shape sa{37, 129}, sb{129};
  auto ha = Tensor<float>::uniform(sa, 21, lo, lo + 3.0), hb = Tensor<float>::uniform(sb, 22, lo, lo + 3.0);
  auto hg = Tensor<float>::uniform(sa, 23);
  // forward
  check_close(eval(fn(ha.to<Cuda>(), hb.to<Cuda>())), eval(fn(ha, hb)), kTolF32, std::string(name) + " f32");
  auto ba = ha.cast<bf16>(), bb = hb.cast<bf16>();
  check_close(eval(fn(ba.to<Cuda>(), bb.to<Cuda>())), eval(fn(ba, bb)), kTolBf16, std::string(name) + " bf16");
  // backward: the same graph on both devices
  auto grads = [&](auto dev) {
    using D = decltype(dev);
    auto a = Var<float, D>::param(ha.to<D>()), b = Var<float, D>::param(hb.to<D>());
    Var<float, D> y = fn(a, b);
    y.backward(hg.to<D>());
    return std::pair{a.grad().template to<Cpu>(),
                     b.grad().defined() ? b.grad().template to<Cpu>() : Tensor<float>::zeros(sb)};
  };
  const auto [ca, cb] = grads(Cpu{});
  const auto [ga, gb] = grads(Cuda{});
  check_close(ga, ca, kTolF32, std::string(name) + " da");
  check_close(gb, cb, kTolF32, std::string(name) + " db (broadcast)");
}

}  // namespace

// A unary tag still uses b (y = op(a) + 0 * b) so that every case also exercises a broadcast leaf.
#define DISTILL_CUDA_UNARY_CASE(name, fn, lo)                                           \
  TEST_CASE(name) {                                                                     \
    check_tag([](const auto& a, const auto& b) { return fn(a) + b * 0.0f; }, lo, name); \
  }
DISTILL_CUDA_UNARY_CASE("cuda:neg", -, -1.5)
DISTILL_CUDA_UNARY_CASE("cuda:exp", exp, -1.5)
DISTILL_CUDA_UNARY_CASE("cuda:log", log, 0.5)
DISTILL_CUDA_UNARY_CASE("cuda:tanh", tanh, -1.5)
DISTILL_CUDA_UNARY_CASE("cuda:sigmoid", sigmoid, -1.5)
DISTILL_CUDA_UNARY_CASE("cuda:silu", silu, -1.5)
DISTILL_CUDA_UNARY_CASE("cuda:gelu_tanh", gelu_tanh, -1.5)
DISTILL_CUDA_UNARY_CASE("cuda:rsqrt", rsqrt, 0.5)
DISTILL_CUDA_UNARY_CASE("cuda:square", square, -1.5)
#define DISTILL_CUDA_BINARY_CASE(name, op, lo)                                \
  TEST_CASE(name) {                                                           \
    check_tag([](const auto& a, const auto& b) { return a op b; }, lo, name); \
  }
DISTILL_CUDA_BINARY_CASE("cuda:add", +, -1.5)
DISTILL_CUDA_BINARY_CASE("cuda:sub", -, -1.5)
DISTILL_CUDA_BINARY_CASE("cuda:mul", *, -1.5)
DISTILL_CUDA_BINARY_CASE("cuda:div", /, 0.5)

TEST_CASE("cuda:elementwise every op tag, f32 and bf16") {
  const std::vector<Shape> same{{1000003}, {1000003}};
  // Positive inputs for log/rsqrt/div: shift uniform(-2, 2) to (0.5, 4.5).
  check_forward<float>(
      same, [](auto& v) { return exp(v[0]) + tanh(v[1]) * sigmoid(v[0]); }, kTolF32, "exp/tanh/sigmoid");
  check_forward<float>(
      same, [](auto& v) { return silu(v[0]) * gelu_tanh(v[1]) - square(v[0]); }, kTolF32, "silu/gelu");
  check_forward<float>(
      same, [](auto& v) { return log(v[0] + 2.5f) / rsqrt(v[1] + 2.5f) - (-v[0]); }, kTolF32, "log/rsqrt/div/neg");
  check_forward<bf16>(
      same, [](auto& v) { return silu(v[0]) * v[1]; }, kTolBf16, "bf16 swiglu");
  check_forward<f16>(
      same, [](auto& v) { return gelu_tanh(v[0]) * v[1]; }, kTolF16, "f16 geglu");
  // Sizes around the vector width: tails of 0..7 elements.
  for (int64_t n : {1, 7, 8, 9, 15, 17, 4099})
    check_forward<bf16>(
        {{n}, {n}}, [](auto& v) { return v[0] * 2.0f + v[1]; }, kTolBf16, "tail n=" + std::to_string(n));
}

TEST_CASE("cuda:elementwise broadcasting and strided views") {
  check_forward<float>(
      {{64, 33}, {33}}, [](auto& v) { return v[0] * v[1]; }, kTolF32, "row broadcast");
  check_forward<float>(
      {{4, 1, 5}, {3, 1}}, [](auto& v) { return v[0] - v[1]; }, kTolF32, "both broadcast");
  check_forward<float>(
      {{7, 9}, {9, 7}}, [](auto& v) { return v[0] + v[1].transpose(0, 1); }, kTolF32, "transpose view");
  check_forward<float>(
      {{10, 12}, {10, 6}}, [](auto& v) { return v[0].slice(1, 3, 9) * v[1]; }, kTolF32, "slice view");
  // A misaligned (offset by one element) operand takes the scalar path.
  check_forward<bf16>(
      {{1, 4097}, {4096}}, [](auto& v) { return v[0].slice(1, 1, 4097).reshape({4096}) + v[1]; }, kTolBf16,
      "unaligned operand");
}

TEST_CASE("cuda:elementwise backward matches the CPU, including broadcast gradients") {
  auto run = [](auto dev, const Shape& sa, const Shape& sb) {
    using D = decltype(dev);
    Var<float, D> a = Var<float, D>::param(Tensor<float>::uniform(sa, 11).template to<D>());
    Var<float, D> b = Var<float, D>::param(Tensor<float>::uniform(sb, 12).template to<D>());
    Var<float, D> y = silu(a) * b + a * a - tanh(b) / (square(a) + 1.0f);
    y.backward(Tensor<float>::uniform(y.shape(), 13).template to<D>());
    return std::pair{a.grad().template to<Cpu>(), b.grad().template to<Cpu>()};
  };
  for (auto [sa, sb] :
       std::vector<std::pair<Shape, Shape>>{{{1000}, {1000}}, {{64, 130}, {130}}, {{3, 1, 8}, {5, 1}}}) {
    const auto [ca, cb] = run(Cpu{}, sa, sb);
    const auto [ga, gb] = run(Cuda{}, sa, sb);
    check_close(ga, ca, kTolF32, "da " + sa.str() + " " + sb.str());
    check_close(gb, cb, kTolF32, "db " + sa.str() + " " + sb.str());
  }
  // bf16: gradients accumulate in f32 scratch for broadcast leaves; compare with the CPU bf16 gradients.
  Var<bf16, Cuda> w = Var<bf16, Cuda>::param(Tensor<float>::uniform({256}, 3).cast<bf16>().to<Cuda>());
  Var<bf16, Cuda> x(Tensor<float>::uniform({512, 256}, 4).cast<bf16>().to<Cuda>());
  Var<bf16, Cuda> y = x * w;
  y.backward(Tensor<bf16, Cuda>::full(y.shape(), bf16(1.0f)));
  Var<bf16> wc = Var<bf16>::param(Tensor<float>::uniform({256}, 3).cast<bf16>());
  Var<bf16> xc(Tensor<float>::uniform({512, 256}, 4).cast<bf16>());
  Var<bf16> yc = xc * wc;
  yc.backward(Tensor<bf16>::full(yc.shape(), bf16(1.0f)));
  check_close(w.grad(), wc.grad().cast<double>(), kTolBf16, "bf16 broadcast weight gradient");
}

TEST_CASE("cuda:tensor copies, casts, fills and the caching allocator") {
  const auto h = Tensor<float>::uniform({33, 65}, 5);
  const auto d = h.to<Cuda>();
  // Strided device copy (transpose view) equals the host's.
  CHECK(d.transpose(0, 1).contiguous().to<Cpu>().to_vector() == h.transpose(0, 1).contiguous().to_vector());
  // Casts round exactly as the host does (bitwise), both directions.
  const auto hb = h.cast<bf16>();
  CHECK(bit_mismatches(d.cast<bf16>().to<Cpu>(), hb) == 0);
  CHECK(d.cast<bf16>().cast<float>().to<Cpu>().to_vector() == hb.cast<float>().to_vector());
  const auto h64 = Tensor<double>::uniform({1000}, 6);
  CHECK(bit_mismatches(h64.to<Cuda>().cast<bf16>().to<Cpu>(), h64.cast<bf16>()) == 0);
  CHECK(Tensor<float, Cuda>::full({5}, 2.5f).to<Cpu>().to_vector() == std::vector<float>(5, 2.5f));
  // Steady state: the same allocation pattern twice adds no cudaMalloc the second time.
  auto step = [] {
    for (int i = 0; i < 10; ++i) {
      auto a = Tensor<float, Cuda>::zeros({1024, 1024 + i});
      auto b = Tensor<bf16, Cuda>::zeros({3000 + i});
    }
  };
  step();
  const auto before = cuda::memory_stats();
  step();
  const auto after = cuda::memory_stats();
  CHECK(after.num_cuda_malloc == before.num_cuda_malloc);
  CHECK(after.peak_bytes >= size_t{1024} * 1034 * 4);
  CHECK(after.current_bytes <= before.current_bytes);
}
