// A tiny two-layer network (x -> matmul -> silu -> matmul -> cross-entropy, AdamW on f32 master weights)
// trained for 20 steps on the GPU and on the CPU from the same start: the loss curves must agree within
// the bf16 tolerance, and training must actually lower the loss on both.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/distill.hpp"
#include "distill/train/adamw.hpp"

using namespace distill;
using namespace distill::test;

namespace {

constexpr int64_t kBatch = 48, kIn = 24, kHidden = 40, kClasses = 10, kSteps = 20;

// Labels from a fixed random teacher, so there is something to learn.
Tensor<int32_t> make_targets(const Tensor<float>& x) {
  const auto teacher = Tensor<float>::uniform({kIn, kClasses}, 99);
  auto t = Tensor<int32_t>::empty({kBatch});
  for (int64_t i = 0; i < kBatch; ++i) {
    int32_t best = 0;
    double bv = -1e30;
    for (int64_t c = 0; c < kClasses; ++c) {
      double s = 0;
      for (int64_t k = 0; k < kIn; ++k) s += x(i, k) * teacher(k, c);
      if (s > bv) bv = s, best = static_cast<int32_t>(c);
    }
    t(i) = best;
  }
  return t;
}

template <class D>
std::vector<double> train(const Tensor<float>& x_host, const Tensor<int32_t>& targets) {
  const auto x = Var<float, D>(x_host.to<D>());
  auto w1 = Var<float, D>::param(Tensor<float>::uniform({kIn, kHidden}, 1, -0.3, 0.3).to<D>());
  auto w2 = Var<float, D>::param(Tensor<float>::uniform({kHidden, kClasses}, 2, -0.3, 0.3).to<D>());
  AdamWConfig cfg;
  cfg.lr = 3e-2;
  cfg.weight_decay = 0.01;
  AdamW<D> opt({w1, w2}, cfg);
  std::vector<double> losses;
  for (int64_t s = 0; s < kSteps; ++s) {
    Var<float, D> h = silu(matmul(x, w1));  // the element-wise part is a generated kernel on Cuda
    Var<float, D> loss = cross_entropy(matmul(h, w2), targets);
    losses.push_back(static_cast<double>(loss.value().template to<Cpu>().flat(0)));
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  return losses;
}

}  // namespace

TEST_CASE("cuda:two-layer model trains 20 steps like the CPU") {
  const auto x = Tensor<float>::uniform({kBatch, kIn}, 7);
  const auto targets = make_targets(x);
  const auto cpu = train<Cpu>(x, targets);
  const auto gpu = train<Cuda>(x, targets);
  REQUIRE(cpu.size() == gpu.size());
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double d = std::abs(cpu[i] - gpu[i]);
    worst = std::max(worst, d / std::max(1e-12, kTolBf16.atol + kTolBf16.rtol * std::abs(cpu[i])));
    INFO("step " << i << ": cpu loss " << cpu[i] << ", cuda loss " << gpu[i]);
    CHECK(d <= kTolBf16.atol + kTolBf16.rtol * std::abs(cpu[i]));
  }
  MESSAGE("loss " << cpu.front() << " -> " << cpu.back() << " (cpu), " << gpu.front() << " -> " << gpu.back()
                  << " (cuda); worst |diff| / bf16 tolerance = " << worst);
  CHECK(cpu.back() < 0.7 * cpu.front());
  CHECK(gpu.back() < 0.7 * gpu.front());
}
