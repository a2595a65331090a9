// AdamW on the GPU (kernels/adamw.cu through AdamW<Cuda>): the same parameters and gradients stepped on
// Cuda and on Cpu for 5 steps (odd sizes incl. 1,000,003 elements, an unaligned view, more tensors than one
// launch takes, frozen and gradient-less parameters, an lr change and a grad_scale), and the torch.optim.AdamW
// trajectory of tests/golden/adamw on Cuda.
#include <string>
#include <vector>

#include "cuda_harness.hpp"
#include "distill/train/adamw.hpp"
#include "golden.hpp"

using namespace distill;
using distill::test::check_close;
using distill::test::kTolF32;
using distill::test::to_dev;
using distill::test::to_host;

namespace {

template <class X>
std::string name(const char* prefix, X x, const char* suffix = "") {
  std::string s = prefix;
  s += std::to_string(x);
  s += suffix;
  return s;
}

bool same(const Tensor<float>& a, const Tensor<float>& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (!(a.flat(i) == b.flat(i))) return false;
  return true;
}

}  // namespace

TEST_CASE("cuda:adamw") {
  SUBCASE("Cuda against Cpu over 5 steps") {
    AdamWConfig cfg;
    cfg.lr = 2e-3;
    cfg.weight_decay = 0.1;
    std::vector<Shape> shapes{{37}, {1000003}, {7, 5}, {1}, {4096}, {2048, 3}};
    for (int i = 0; i < 40; ++i) shapes.push_back(Shape{1 + 131 * i});  // more tensors than one launch takes
    const size_t n_plain = shapes.size();
    const int64_t n_view = 5001;
    const auto view_base = Tensor<float>::uniform({n_view + 1}, 99);

    std::vector<Var<float>> hp;
    std::vector<Var<float, Cuda>> dp;
    for (size_t i = 0; i < n_plain; ++i) {
      const auto v0 = Tensor<float>::uniform(shapes[i], 100 + i);
      hp.push_back(Var<float>::param(v0));
      dp.push_back(Var<float, Cuda>::param(to_dev(v0)));
    }
    // A parameter that is a view 4 bytes into its storage: the kernel's element-wise path.
    const auto dev_base = to_dev(view_base);
    hp.push_back(Var<float>::param(view_base.slice(0, 1, n_view + 1)));
    dp.push_back(Var<float, Cuda>::param(dev_base.slice(0, 1, n_view + 1)));
    REQUIRE(dp.back().value().data() == dev_base.data() + 1);
    const size_t i_view = hp.size() - 1;
    // Its aligned twin (same values, same gradients below): the float4 path must give the same bits.
    hp.push_back(Var<float>::param(view_base.slice(0, 1, n_view + 1).clone()));
    dp.push_back(Var<float, Cuda>::param(dev_base.slice(0, 1, n_view + 1).clone()));
    const size_t i_twin = hp.size() - 1;
    // A frozen parameter and one whose gradient only arrives at step 3.
    const auto frozen0 = Tensor<float>::uniform({300}, 7), late0 = Tensor<float>::uniform({301}, 8);
    hp.push_back(Var<float>(frozen0.clone(), false));
    dp.push_back(Var<float, Cuda>(to_dev(frozen0), false));
    const size_t i_frozen = hp.size() - 1;
    hp.push_back(Var<float>::param(late0.clone()));
    dp.push_back(Var<float, Cuda>::param(to_dev(late0)));
    const size_t i_late = hp.size() - 1;

    AdamW<Cpu> ho(hp, cfg);
    AdamW<Cuda> dop(dp, cfg);
    for (int k = 1; k <= 5; ++k) {
      for (size_t i = 0; i < hp.size(); ++i) {
        if (i == i_frozen || (i == i_late && k < 3)) continue;
        const uint64_t seed = 1000 * k + (i == i_twin ? i_view : i);
        const auto g = Tensor<float>::uniform(hp[i].shape(), seed, -3.0, 3.0);
        hp[i].grad_buffer().copy_from(g);
        dp[i].grad_buffer().copy_from(to_dev(g));
      }
      if (k == 3) {
        ho.set_lr(7e-4);
        dop.set_lr(7e-4);
      }
      const double scale = k == 4 ? 0.37 : 1.0;
      ho.step(scale);
      dop.step(scale);
      ho.zero_grad();
      dop.zero_grad();
      for (size_t i = 0; i < hp.size(); ++i) {
        const std::string tag = name("step ", k, ", parameter ") + std::to_string(i) + " " + hp[i].shape().str();
        check_close(dp[i].value(), hp[i].value(), kTolF32, "p, " + tag);
        CHECK(dop.state(i).t == ho.state(i).t);
        if (ho.state(i).m.defined()) {
          REQUIRE(dop.state(i).m.defined());
          check_close(dop.state(i).m, ho.state(i).m, kTolF32, "m, " + tag);
          check_close(dop.state(i).v, ho.state(i).v, kTolF32, "v, " + tag);
        } else {
          CHECK(!dop.state(i).m.defined());
        }
        CHECK(!dp[i].grad().defined());
      }
    }
    CHECK(same(to_host(dp[i_frozen].value()), frozen0));
    CHECK(dop.state(i_late).t == 3);
    CHECK(dop.state(0).t == 5);
    CHECK(same(to_host(dev_base).slice(0, 0, 1).clone(), view_base.slice(0, 0, 1).clone()));  // outside the view
    // The element-wise path (unaligned view) rounds exactly as the float4 path.
    CHECK(same(to_host(dp[i_view].value()), to_host(dp[i_twin].value())));
    CHECK(same(to_host(dop.state(i_view).v), to_host(dop.state(i_twin).v)));
  }

  SUBCASE("torch.optim.AdamW trajectory on Cuda") {
    auto gold = test::load_golden("../adamw/adamw_torch");
    const auto& h = gold.at("hyper");
    AdamWConfig cfg;
    cfg.beta1 = h.flat(0);
    cfg.beta2 = h.flat(1);
    cfg.eps = h.flat(2);
    cfg.weight_decay = h.flat(3);
    auto p = Var<float, Cuda>::param(to_dev(test::as<float>(gold.at("p0"))));
    AdamW<Cuda> opt({p}, cfg);
    for (int k = 1; k <= 5; ++k) {
      opt.set_lr(gold.at("lr").flat(k - 1));
      p.grad_buffer().copy_from(to_dev(test::as<float>(gold.at(name("g", k)))));
      opt.step();
      opt.zero_grad();
      check_close(p.value(), gold.at(name("p", k)), kTolF32, name("torch step ", k));
    }
    check_close(opt.state(0).m, gold.at("m5"), kTolF32, "exp_avg after step 5");
    check_close(opt.state(0).v, gold.at("v5"), kTolF32, "exp_avg_sq after step 5");
  }
}
