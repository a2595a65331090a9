// AdamW (distill/train/adamw.hpp): the CPU path and ref:: against torch.optim.AdamW trajectories
// (tests/golden/adamw, tools/export_adamw_fixtures.py), ref:: against the CPU path, and the optimizer's
// contract: frozen parameters and parameters without a gradient are untouched, zero_grad, set_lr, state.
#include "distill/train/adamw.hpp"

#include <string>
#include <vector>

#include "golden.hpp"
#include "harness.hpp"

using namespace distill;
using distill::test::check_close;
using distill::test::check_throws_naming;
using distill::test::kTolF32;
using distill::test::kTolF64;

namespace {

// "<prefix><x><suffix>" (fixture keys like g3 / p3_f64, and messages).
template <class X>
std::string name(const char* prefix, X x, const char* suffix = "") {
  std::string s = prefix;
  s += std::to_string(x);
  s += suffix;
  return s;
}

// The AdamW fixtures sit beside the op fixtures (tests/golden/adamw/), in the same format.
test::Golden load_adamw_golden() { return test::load_golden("../adamw/adamw_torch"); }

bool same(const Tensor<float>& a, const Tensor<float>& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (!(a.flat(i) == b.flat(i))) return false;
  return true;
}

AdamWConfig golden_config(test::Golden& gold) {
  const auto& h = gold.at("hyper");
  AdamWConfig c;
  c.lr = gold.at("lr").flat(0);
  c.beta1 = h.flat(0);
  c.beta2 = h.flat(1);
  c.eps = h.flat(2);
  c.weight_decay = h.flat(3);
  return c;
}

}  // namespace

TEST_CASE("op:adamw") {
  auto gold = load_adamw_golden();
  const AdamWConfig cfg = golden_config(gold);
  const int steps = static_cast<int>(gold.at("lr").numel());
  REQUIRE(steps == 5);
  CHECK(cfg.weight_decay == 0.1);

  SUBCASE("AdamW<Cpu> follows torch.optim.AdamW (f32)") {
    auto p = Var<float>::param(test::as<float>(gold.at("p0")));
    AdamW<Cpu> opt({p}, cfg);
    for (int k = 1; k <= steps; ++k) {
      opt.set_lr(gold.at("lr").flat(k - 1));
      p.grad_buffer().copy_from(test::as<float>(gold.at(name("g", k))));
      opt.step();
      check_close(p.value(), gold.at(name("p", k)), kTolF32, name("torch step ", k));
      opt.zero_grad();
      CHECK(!p.grad().defined());
    }
    CHECK(opt.step_count() == steps);
    CHECK(opt.state(0).t == steps);
    check_close(opt.state(0).m, gold.at("m5"), kTolF32, "exp_avg after step 5");
    check_close(opt.state(0).v, gold.at("v5"), kTolF32, "exp_avg_sq after step 5");
  }

  SUBCASE("ref:: in f64 follows torch.optim.AdamW (f64)") {
    auto p = gold.at("p0").clone();
    auto m = Tensor<double>::zeros(p.shape()), v = Tensor<double>::zeros(p.shape());
    AdamWConfig c = cfg;
    for (int k = 1; k <= steps; ++k) {
      c.lr = gold.at("lr").flat(k - 1);
      ref::adamw_step(p, m, v, gold.at(name("g", k)), c, k);
      check_close(p, gold.at(name("p", k, "_f64")), kTolF64, name("ref step ", k));
    }
  }

  SUBCASE("cpu:: against ref:: (odd sizes, grad_scale, beta1 < 0.5)") {
    struct Case {
      int64_t n;
      double grad_scale, beta1;
    };
    for (const Case& cs : {Case{1, 1.0, 0.9}, Case{37, 0.5, 0.9}, Case{100003, 1.0, 0.9}, Case{1000, 0.25, 0.3}}) {
      const std::string tag = name("n ", cs.n) + name(", scale ", cs.grad_scale) + name(", beta1 ", cs.beta1);
      AdamWConfig c;
      c.lr = 3e-3;
      c.beta1 = cs.beta1;
      c.weight_decay = 0.05;
      const auto p0 = Tensor<float>::uniform({cs.n}, 40 + cs.n);
      auto pf = p0.clone(), mf = Tensor<float>::zeros({cs.n}), vf = Tensor<float>::zeros({cs.n});
      auto pr = p0.clone(), mr = Tensor<float>::zeros({cs.n}), vr = Tensor<float>::zeros({cs.n});
      for (int k = 1; k <= 5; ++k) {
        const auto g = Tensor<float>::uniform({cs.n}, 1000 * k + cs.n, -2.0, 2.0);
        cpu::adamw_step(pf, mf, vf, g, c, k, cs.grad_scale);
        ref::adamw_step(pr, mr, vr, g, c, k, cs.grad_scale);
        // ref:: stores f32 as well; compare against its double-computed result
        check_close(pf, pr.cast<double>(), kTolF32, name("p, step ", k, ", ") + tag);
        check_close(mf, mr.cast<double>(), kTolF32, name("m, step ", k, ", ") + tag);
        check_close(vf, vr.cast<double>(), kTolF32, name("v, step ", k, ", ") + tag);
      }
    }
  }

  SUBCASE("grad_scale multiplies the gradient first") {
    AdamWConfig c;
    c.lr = 1e-2;
    const auto p0 = Tensor<float>::uniform({64}, 7);
    const auto g = Tensor<float>::uniform({64}, 8);
    auto a = Var<float>::param(p0.clone()), b = Var<float>::param(p0.clone());
    AdamW<Cpu> oa({a}, c), ob({b}, c);
    a.grad_buffer().copy_from(g);
    auto g_half = Tensor<float>::empty({64});
    for (int64_t i = 0; i < 64; ++i) g_half.flat(i) = g.flat(i) * 0.5f;
    b.grad_buffer().copy_from(g_half);
    oa.step(0.5);
    ob.step();
    CHECK(same(a.value(), b.value()));
    CHECK(same(oa.state(0).v, ob.state(0).v));
  }

  SUBCASE("frozen parameters and parameters without a gradient are untouched") {
    AdamWConfig c;
    c.lr = 1e-2;
    c.weight_decay = 0.1;  // decay alone would move them
    const auto v0 = Tensor<float>::uniform({5, 3}, 11), v1 = Tensor<float>::uniform({4}, 12),
               v2 = Tensor<float>::uniform({6}, 13);
    auto trained = Var<float>::param(v0.clone());
    auto frozen = Var<float>::param(v1.clone());
    auto no_grad = Var<float>::param(v2.clone());
    frozen.grad_buffer().copy_from(Tensor<float>::uniform({4}, 14));  // a stale gradient, then frozen
    frozen.freeze();
    AdamW<Cpu> opt({trained, frozen, no_grad}, c);
    trained.grad_buffer().copy_from(Tensor<float>::uniform({5, 3}, 15));
    opt.step();
    CHECK(!same(trained.value(), v0));
    CHECK(same(frozen.value(), v1));
    CHECK(same(no_grad.value(), v2));
    CHECK(opt.state(0).t == 1);
    CHECK(opt.state(1).t == 0);
    CHECK(!opt.state(1).m.defined());
    CHECK(opt.state(2).t == 0);
    CHECK(!opt.state(2).v.defined());

    // no_grad gets a gradient later: its own step count starts at 1 (torch counts per parameter).
    opt.zero_grad();
    no_grad.grad_buffer().copy_from(Tensor<float>::uniform({6}, 16));
    const auto before = trained.value().clone();
    opt.step();
    CHECK(same(trained.value(), before));  // zero_grad released its gradient
    CHECK(opt.state(0).t == 1);
    CHECK(opt.state(2).t == 1);
    CHECK(opt.step_count() == 2);
    auto pr = v2.clone(), mr = Tensor<float>::zeros({6}), vr = Tensor<float>::zeros({6});
    ref::adamw_step(pr, mr, vr, no_grad.grad(), c, 1);
    check_close(no_grad.value(), pr.cast<double>(), kTolF32, "late parameter takes step 1");
  }

  SUBCASE("zero_grad, set_lr, state restore") {
    AdamWConfig c;
    c.lr = 2e-3;
    auto p = Var<float>::param(Tensor<float>::uniform({9}, 21));
    auto q = Var<float>::param(Tensor<float>::uniform({9}, 21));
    AdamW<Cpu> a({p}, c), b({q}, c);
    for (int k = 0; k < 3; ++k) {
      const auto g = Tensor<float>::uniform({9}, 30 + k);
      p.grad_buffer().copy_from(g);
      q.grad_buffer().copy_from(g);
      if (k == 2) {
        a.set_lr(1e-4);
        b.set_lr(1e-4);
      }
      a.step();
      if (k < 2) {
        b.step();
      } else {  // b restarts from a copy of its state, as after loading a checkpoint
        AdamW<Cpu> b2({q}, b.config());
        b2.state(0).m = b.state(0).m.clone();
        b2.state(0).v = b.state(0).v.clone();
        b2.state(0).t = b.state(0).t;
        b2.set_step_count(b.step_count());
        b2.step();
        CHECK(b2.step_count() == 3);
        CHECK(b2.lr() == 1e-4);
      }
      a.zero_grad();
      b.zero_grad();
      CHECK(!p.grad().defined());
      CHECK(!q.grad().defined());
    }
    CHECK(same(p.value(), q.value()));

    AdamW<Cpu> bad({q}, c);
    bad.state(0).m = Tensor<float>::zeros({8});
    q.grad_buffer().copy_from(Tensor<float>::uniform({9}, 40));
    check_throws_naming<Error>([&] { bad.step(); }, {"[8]", "[9]"}, "restored state of the wrong shape");
  }

  SUBCASE("invalid configurations") {
    auto p = Var<float>::param(Tensor<float>::zeros({2}));
    AdamWConfig c;
    c.beta1 = 1.0;
    check_throws_naming<Error>([&] { AdamW<Cpu>({p}, c); }, {"beta1"}, "beta1 = 1");
    c = AdamWConfig{};
    c.lr = -1;
    check_throws_naming<Error>([&] { AdamW<Cpu>({p}, c); }, {"learning rate"}, "negative lr");
    AdamW<Cpu> opt({p});
    check_throws_naming<Error>([&] { opt.set_lr(-1); }, {"learning rate"}, "set_lr negative");
    check_throws_naming<Error>([&] { opt.step(-1.0); }, {"grad_scale"}, "negative grad_scale");
    auto y = Var<float>(Var<float>::param(Tensor<float>::zeros({2})) * 2.0f);
    check_throws_naming<Error>([&] { AdamW<Cpu>({y}, AdamWConfig{}); }, {"not a leaf"}, "non-leaf parameter");
    check_throws_naming<Error>([&] { AdamW<Cpu>({p, p}, AdamWConfig{}); }, {"twice"}, "duplicate parameter");
  }

  SUBCASE("the CUDA kernel's launch plan") {
    using cuda::detail::adamw_launch_plan;
    using cuda::detail::kAdamWChunk;
    using cuda::detail::kAdamWMaxTensors;
    // 70 tensors, some empty, sizes around the chunk boundaries.
    std::vector<int64_t> sizes;
    for (int i = 0; i < 70; ++i) sizes.push_back(i % 9 == 4 ? 0 : (i * 997) % (3 * kAdamWChunk) + (i % 3));
    const auto plan = adamw_launch_plan(sizes);
    std::vector<int> seen;
    for (const auto& l : plan) {
      REQUIRE(l.first_block.size() == l.tensors.size() + 1);
      CHECK(static_cast<int>(l.tensors.size()) <= kAdamWMaxTensors);
      CHECK(l.first_block[0] == 0);
      for (size_t j = 0; j < l.tensors.size(); ++j) {
        const int64_t n = sizes[static_cast<size_t>(l.tensors[j])];
        CHECK(n > 0);
        CHECK(l.first_block[j + 1] - l.first_block[j] == (n + kAdamWChunk - 1) / kAdamWChunk);
        seen.push_back(l.tensors[j]);
      }
    }
    std::vector<int> want;
    for (int i = 0; i < 70; ++i)
      if (sizes[static_cast<size_t>(i)] > 0) want.push_back(i);
    CHECK(seen == want);
    CHECK(plan.size() == (want.size() + kAdamWMaxTensors - 1) / kAdamWMaxTensors);
    CHECK(adamw_launch_plan({}).empty());
    CHECK(adamw_launch_plan({0, 0}).empty());
  }
}
