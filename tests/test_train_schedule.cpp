// LR schedules and gradient clipping (distill/train/schedule.hpp) against transformers' get_scheduler and torch's
// clip_grad_norm_ (tests/golden/schedule, tools/golden/schedule.py), and the equivalence of clipping in place
// with passing the clip coefficient to AdamW::step.
#include "distill/train/schedule.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/io/safetensors.hpp"
#include "distill/train/adamw.hpp"
#include "harness.hpp"
#include "shared_data.hpp"

using namespace distill;
using distill::test::check_throws_naming;
using json = nlohmann::json;

namespace {

json load_json(const std::string& rel) {
  const std::string path = test::golden_path(rel);
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "missing fixture " << path << " (tools/golden/schedule.py makes it)");
  return json::parse(in);
}

// A JSON number, or "inf" / "-inf" / "nan".
double num(const json& j) {
  if (j.is_number()) return j.get<double>();
  const std::string s = j.get<std::string>();
  if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (s == "inf") return std::numeric_limits<double>::infinity();
  if (s == "-inf") return -std::numeric_limits<double>::infinity();
  FAIL("not a number: " << s);
  return 0;
}

std::string fmt(double x) {
  std::ostringstream os;
  os.precision(9);
  os << x;
  return os.str();
}

bool same_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

bool same(const Tensor<float>& a, const Tensor<float>& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (!same_bits(a.flat(i), b.flat(i))) return false;
  return true;
}

// A trainable parameter whose gradient is `g` (copied).
Var<float> param_with_grad(const Tensor<float>& g) {
  Var<float> p = Var<float>::param(Tensor<float>::zeros(g.shape()));
  Tensor<float>& buf = p.grad_buffer();
  for (int64_t i = 0; i < g.numel(); ++i) buf.flat(i) = g.flat(i);
  return p;
}

struct ClipSet {
  std::string name;
  double max_norm, total_norm;
  std::vector<bool> has_grad;
  std::vector<Tensor<float>> before, after;  // undefined where there is no gradient
  std::vector<Shape> shapes;
};

std::vector<ClipSet> load_clip_sets() {
  const json doc = load_json("schedule/clip.json");
  const auto st = io::SafetensorsFile::open(test::golden_path("schedule/clip.safetensors"));
  std::vector<ClipSet> sets;
  for (const json& s : doc.at("sets")) {
    ClipSet c;
    c.name = s.at("name").get<std::string>();
    c.max_norm = num(s.at("max_norm"));
    c.total_norm = num(s.at("total_norm"));
    c.has_grad = s.at("has_grad").get<std::vector<bool>>();
    for (size_t i = 0; i < c.has_grad.size(); ++i) {
      Shape sh;
      for (const json& d : s.at("shapes").at(i)) sh.push_back(d.get<int64_t>());
      c.shapes.push_back(sh);
      if (c.has_grad[i]) {
        c.before.push_back(st.load<float>(c.name + ".before." + std::to_string(i)));
        c.after.push_back(st.load<float>(c.name + ".after." + std::to_string(i)));
        REQUIRE(c.before.back().shape() == sh);
      } else {
        c.before.emplace_back();
        c.after.emplace_back();
      }
    }
    sets.push_back(std::move(c));
  }
  return sets;
}

std::vector<Var<float>> make_params(const ClipSet& c) {
  std::vector<Var<float>> ps;
  for (size_t i = 0; i < c.has_grad.size(); ++i)
    ps.push_back(c.has_grad[i] ? param_with_grad(c.before[i]) : Var<float>::param(Tensor<float>::zeros(c.shapes[i])));
  return ps;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
TEST_CASE("train_schedule: lr_multiplier equals transformers' get_scheduler, step by step") {
  const json doc = load_json("schedule/schedules.json");
  int checked = 0, inexact = 0;
  for (const json& s : doc.at("schedules")) {
    const std::string name = s.at("name").get<std::string>();
    const auto w = s.at("warmup").get<int64_t>(), t = s.at("total").get<int64_t>();
    const double base = s.at("base_lr").get<double>();
    const LrSchedule sched = parse_lr_schedule(name);
    CHECK(lr_schedule_name(sched) == name);
    const auto& lrs = s.at("lr");
    REQUIRE(static_cast<int64_t>(lrs.size()) > t);  // the fixture runs past the end of training
    for (size_t k = 0; k < lrs.size(); ++k) {
      CAPTURE(name);
      CAPTURE(w);
      CAPTURE(t);
      CAPTURE(base);
      CAPTURE(k);
      const double want = lrs[k].get<double>();
      const double got = base * lr_multiplier(sched, static_cast<int64_t>(k), w, t);  // LambdaLR: base * lambda
      if (sched == LrSchedule::Cosine)
        CHECK(std::abs(got - want) <= 2e-16 * std::max(1.0, std::abs(want)));  // libm cos may differ by an ulp
      else
        CHECK(got == want);
      inexact += got != want;
      ++checked;
    }
  }
  MESSAGE(checked << " learning rates checked, " << inexact << " not bit-identical (cosine, within 2e-16)");
  CHECK(checked > 2000);
}

TEST_CASE("train_schedule: shapes of the schedules (warmup, decay, past the end)") {
  CHECK(lr_multiplier(LrSchedule::Linear, 0, 5, 60) == 0.0);  // the first update of a warmup has lr 0
  CHECK(lr_multiplier(LrSchedule::Linear, 5, 5, 60) == 1.0);
  CHECK(lr_multiplier(LrSchedule::Linear, 60, 5, 60) == 0.0);
  CHECK(lr_multiplier(LrSchedule::Linear, 90, 5, 60) == 0.0);
  CHECK(lr_multiplier(LrSchedule::Cosine, 60, 5, 60) == 0.0);
  CHECK(lr_multiplier(LrSchedule::Cosine, 115, 5, 60) == doctest::Approx(1.0));  // HF's cosine rises again
  CHECK(lr_multiplier(LrSchedule::Constant, 0, 5, 60) == 1.0);                   // constant ignores warmup
  CHECK(lr_multiplier(LrSchedule::ConstantWithWarmup, 1, 4, 60) == 0.25);
  CHECK(lr_multiplier(LrSchedule::ConstantWithWarmup, 1000, 4, 60) == 1.0);
}

TEST_CASE("train_schedule: warmup_steps_for equals TrainingArguments.get_warmup_steps") {
  const json doc = load_json("schedule/schedules.json");
  for (const json& w : doc.at("warmup_steps")) {
    CAPTURE(w.dump());
    CHECK(warmup_steps_for(w.at("warmup").get<double>(), w.at("total").get<int64_t>()) == w.at("steps").get<int64_t>());
  }
  CHECK_THROWS_AS(warmup_steps_for(-0.1, 10), Error);
  CHECK_THROWS_AS(warmup_steps_for(std::nan(""), 10), Error);
}

TEST_CASE("train_schedule: names and bad arguments") {
  for (const char* n : {"linear", "cosine", "constant", "constant_with_warmup"})
    CHECK(lr_schedule_name(parse_lr_schedule(n)) == n);
  check_throws_naming<Error>([] { parse_lr_schedule("cosine_with_restarts"); },
                             {"cosine_with_restarts", "linear, cosine, constant, constant_with_warmup"},
                             "an unsupported HF schedule");
  check_throws_naming<Error>([] { parse_lr_schedule("Linear"); }, {"\"Linear\""}, "names are case-sensitive");
  check_throws_naming<Error>([] { parse_lr_schedule(""); }, {"unknown LR schedule"}, "empty name");
  check_throws_naming<Error>([] { lr_multiplier(LrSchedule::Linear, -1, 0, 10); }, {"step (-1)"}, "negative step");
  check_throws_naming<Error>([] { lr_multiplier(LrSchedule::Cosine, 0, -2, 10); }, {"warmup (-2)"}, "negative warmup");
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("train_schedule: clip_coefficient is torch's clip_coef_clamped to the bit") {
  const json doc = load_json("schedule/clip.json");
  int n = 0;
  for (const json& c : doc.at("coefs")) {
    const double total = num(c.at("total_norm")), max_norm = num(c.at("max_norm"));
    const auto want = static_cast<float>(num(c.at("coef")));
    const float got = clip_coefficient(total, max_norm);
    CAPTURE(total);
    CAPTURE(max_norm);
    if (std::isnan(want))
      CHECK(std::isnan(got));
    else
      CHECK_MESSAGE(same_bits(got, want), "got " << got << ", torch " << want);
    ++n;
  }
  CHECK(n > 200);
  // the naive double formula differs from torch's f32 one at least somewhere in the table
  int naive_differs = 0;
  for (const json& c : doc.at("coefs")) {
    const double total = num(c.at("total_norm")), max_norm = num(c.at("max_norm"));
    if (!std::isfinite(total)) continue;
    const auto naive = static_cast<float>(std::min(1.0, max_norm / (total + 1e-6)));
    naive_differs += !same_bits(naive, static_cast<float>(num(c.at("coef"))));
  }
  MESSAGE("the double formula rounds differently from torch in " << naive_differs << " of " << n << " cases");
}

TEST_CASE("train_schedule: clip_grad_norm against torch.nn.utils.clip_grad_norm_") {
  for (const ClipSet& c : load_clip_sets()) {
    CAPTURE(c.name);
    std::vector<Var<float>> ps = make_params(c);
    const double measured = grad_global_norm(ps);
    for (size_t i = 0; i < ps.size(); ++i)  // measuring leaves the gradients alone
      if (c.has_grad[i]) CHECK(same(ps[i].grad(), c.before[i]));
    const double total = clip_grad_norm(ps, c.max_norm);
    CHECK(total == measured);
    CHECK(static_cast<double>(static_cast<float>(total)) == total);  // an f32 value, like torch's
    // torch's f32 sums may be an ulp or two off the exact norm; ours is the f32 rounding of a double sum
    CHECK(std::abs(total - c.total_norm) <= 4e-7 * std::max(c.total_norm, 1e-30));
    if (c.name == "exact" || c.name == "zero" || c.name == "no_grads") CHECK(total == c.total_norm);
    const std::string verdict = total == c.total_norm ? "bit-identical to torch's" : "torch's is " + fmt(c.total_norm);
    MESSAGE(c.name << ": total norm " << fmt(total) << ", " << verdict);
    const float coef = clip_coefficient(total, c.max_norm);
    const float torch_coef = clip_coefficient(c.total_norm, c.max_norm);
    for (size_t i = 0; i < ps.size(); ++i) {
      CAPTURE(i);
      if (!c.has_grad[i]) {
        CHECK_FALSE(ps[i].grad().defined());  // no gradient: skipped, none created
        continue;
      }
      const Tensor<float>& g = ps[i].grad();
      for (int64_t k = 0; k < g.numel(); ++k) {
        CHECK(same_bits(g.flat(k), c.before[i].flat(k) * coef));                 // scaled by our coefficient
        CHECK(same_bits(c.after[i].flat(k), c.before[i].flat(k) * torch_coef));  // torch's, given its norm
        CHECK(std::abs(g.flat(k) - c.after[i].flat(k)) <= 1e-6f * std::abs(c.after[i].flat(k)));
      }
      if (total == c.total_norm) CHECK(same(g, c.after[i]));
    }
  }
}

TEST_CASE("train_schedule: clipping in place and AdamW::step(coef) give the same parameters to the bit") {
  const auto sets = load_clip_sets();
  const ClipSet& c = sets.at(1);  // random_clipped: the coefficient is < 1
  REQUIRE(c.name == "random_clipped");
  std::vector<Var<float>> a, b;
  for (size_t i = 0; i < c.has_grad.size(); ++i) {
    a.push_back(Var<float>::param(Tensor<float>::uniform(c.shapes[i], 100 + i)));
    b.push_back(Var<float>::param(Tensor<float>::uniform(c.shapes[i], 100 + i)));
  }
  AdamW<> opt_a(a, {.lr = 1e-3, .weight_decay = 0.01}), opt_b(b, {.lr = 1e-3, .weight_decay = 0.01});
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < a.size(); ++i) {
      Tensor<float> g = c.before[i].clone();
      for (int64_t k = 0; k < g.numel(); ++k) g.flat(k) *= static_cast<float>(step + 1);
      a[i].zero_grad();
      b[i].zero_grad();
      for (Var<float>* p : {&a[i], &b[i]}) {
        Tensor<float>& buf = p->grad_buffer();
        for (int64_t k = 0; k < g.numel(); ++k) buf.flat(k) = g.flat(k);
      }
    }
    const double ta = clip_grad_norm(a, 1.0);
    opt_a.step();
    const double tb = grad_global_norm(b);
    CHECK(ta == tb);
    CHECK(clip_coefficient(tb, 1.0) < 1.0f);
    opt_b.step(clip_coefficient(tb, 1.0));
  }
  for (size_t i = 0; i < a.size(); ++i) CHECK(same(a[i].value(), b[i].value()));
}

TEST_CASE("train_schedule: clipping edge cases") {
  std::vector<Var<float>> none;
  CHECK(grad_global_norm(none) == 0.0);
  CHECK(clip_grad_norm(none, 1.0) == 0.0);
  // a non-finite gradient gives an infinite norm and a zero coefficient (torch: inf * 0 = nan, finite * 0 = 0)
  std::vector<Var<float>> ps{
      param_with_grad(Tensor<float>::from_vector({3}, {1.0f, std::numeric_limits<float>::infinity(), 2.0f}))};
  CHECK(std::isinf(clip_grad_norm(ps, 1.0)));
  CHECK(ps[0].grad().flat(0) == 0.0f);
  CHECK(std::isnan(ps[0].grad().flat(1)));
  // a norm just below max_norm is not clipped, just above it is
  std::vector<Var<float>> q{param_with_grad(Tensor<float>::from_vector({2}, {0.6f, 0.8f}))};  // norm 1
  CHECK(clip_grad_norm(q, 1.0) == doctest::Approx(1.0));
  CHECK(q[0].grad().flat(0) <= 0.6f);
  check_throws_naming<Error>([&] { clip_grad_norm(q, -1.0); }, {"max_norm", "-1"}, "negative max_norm");
  check_throws_naming<Error>([&] { clip_grad_norm(q, std::nan("")); }, {"max_norm"}, "NaN max_norm");
  std::vector<Var<float>> undef(1);
  check_throws_naming<Error>([&] { grad_global_norm(undef); }, {"parameter 0", "undefined"}, "undefined Var");
}

TEST_CASE("train_schedule: the norm is the same whatever the thread count (fixed chunks)") {
  // 3 chunks of kChunk and a tail, values of very different sizes
  const int64_t n = 3 * detail::clip::kChunk + 17;
  Tensor<float> g = Tensor<float>::uniform({n}, 7, -1.0, 1.0);
  for (int64_t i = 0; i < n; i += 101) g.flat(i) *= 1e4f;
  std::vector<Var<float>> ps{param_with_grad(g)};
  const double a = grad_global_norm(ps);
  double s = 0;  // one serial pass in the same chunk order
  for (int64_t c = 0; c * detail::clip::kChunk < n; ++c) {
    double part = 0;
    for (int64_t i = c * detail::clip::kChunk; i < std::min(n, (c + 1) * detail::clip::kChunk); ++i)
      part += static_cast<double>(g.flat(i)) * g.flat(i);
    s += part;
  }
  const auto per_param = static_cast<float>(std::sqrt(s));
  CHECK(a == static_cast<double>(static_cast<float>(std::sqrt(static_cast<double>(per_param) * per_param))));
}
