// Token sampling against HF transformers' own warpers: tests/golden/sampling/warpers.json is written by
// tools/golden/sampling.py from the TemperatureLogitsWarper / TopK / TopP / MinP classes in the order
// GenerationMixin._get_logits_processor builds them. Also: the candidate-based fast path against ref:: on large
// vocabularies, torch.argmax's tie rule, the Sampler's determinism and its empirical distribution, and
// SamplingParams::validate.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "distill/generate/sampling.hpp"
#include "shared_data.hpp"

using distill::Error;
using namespace distill::generate;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

const nlohmann::json& fixture() {
  static const nlohmann::json j = [] {
    const std::string p = distill::test::golden_path("sampling/warpers.json");
    std::ifstream in(p, std::ios::binary);
    if (!in) throw Error("missing fixture " + p + " (tools/golden/sampling.py writes it)");
    return nlohmann::json::parse(in);
  }();
  return j;
}

// null = -inf; "inf" = +inf; numbers are float32 values written as decimals.
std::vector<float> floats(const nlohmann::json& a) {
  std::vector<float> v;
  for (const auto& e : a) {
    if (e.is_null())
      v.push_back(kNegInf);
    else if (e.is_string())
      v.push_back(e.get<std::string>() == "inf" ? std::numeric_limits<float>::infinity() : kNegInf);
    else
      v.push_back(static_cast<float>(e.get<double>()));
  }
  return v;
}

SamplingParams params_of(const nlohmann::json& j) {
  SamplingParams p;
  p.do_sample = true;
  p.temperature = static_cast<float>(j["temperature"].get<double>());
  p.top_k = j["top_k"].get<int64_t>();
  p.top_p = static_cast<float>(j["top_p"].get<double>());
  p.min_p = static_cast<float>(j["min_p"].get<double>());
  return p;
}

// Same -inf set, finite values within 1e-6 relative; reports the first mismatch.
void check_equal(const std::string& name, const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  size_t masked_diff = 0, value_diff = 0;
  double max_rel = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool gm = got[i] == kNegInf, wm = want[i] == kNegInf;
    if (gm != wm) {
      if (masked_diff++ == 0)
        MESSAGE(name << ": token " << i << " is " << (gm ? "masked" : "kept") << " here, " << (wm ? "masked" : "kept")
                     << " by HF");
      continue;
    }
    if (gm) continue;
    const double rel = std::abs(double(got[i]) - want[i]) / std::max(1e-30, std::abs(double(want[i])));
    max_rel = std::max(max_rel, rel);
    if (rel > 1e-6) ++value_diff;
  }
  INFO(name << ": max rel err " << max_rel);
  CHECK(masked_diff == 0);
  CHECK(value_diff == 0);
}

// Bit i of the fixture's hex mask (hex digit i/4, least significant bit first).
bool hex_bit(const std::string& hex, size_t i) {
  const char c = hex[i / 4];
  const int d = c <= '9' ? c - '0' : c - 'a' + 10;
  return (d >> (i % 4)) & 1;
}

// The fixture's large logits: k = (i * 7919) % V, q = k + k*k / V, logit = q / 1024 - 5 (exact in fp32).
std::vector<float> large_logits(int64_t V) {
  std::vector<float> x(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) {
    const int64_t k = (i * 7919) % V, q = k + (k * k) / V;
    x[static_cast<size_t>(i)] = static_cast<float>(static_cast<double>(q) / 1024.0 - 5.0);
  }
  return x;
}

std::vector<double> softmax(const std::vector<float>& x) {
  double mx = -std::numeric_limits<double>::infinity();
  for (float v : x) mx = std::max(mx, double(v));
  std::vector<double> p(x.size());
  double s = 0.0;
  for (size_t i = 0; i < x.size(); ++i) s += (p[i] = std::exp(double(x[i]) - mx));
  for (double& v : p) v /= s;
  return p;
}

}  // namespace

TEST_CASE("fixture provenance") {
  const auto& j = fixture();
  MESSAGE("warpers.json from transformers " << j["transformers"].get<std::string>() << ", torch "
                                            << j["torch"].get<std::string>());
  CHECK(j["transformers"].get<std::string>().rfind("5.24", 0) == 0);
  CHECK(j["cases"].size() >= 20);
}

TEST_CASE("apply_warpers equals HF's warpers element-wise (small vocabularies)") {
  for (const auto& c : fixture()["cases"]) {
    const std::string name = c["name"].get<std::string>();
    const SamplingParams p = params_of(c["params"]);
    const auto want = floats(c["expected"]);
    SUBCASE(name.c_str()) {
      auto got = floats(c["logits"]);
      apply_warpers(got, p);
      check_equal(name, got, want);
      auto r = floats(c["logits"]);
      ref::apply_warpers(r, p);
      check_equal(name + " (ref)", r, want);
    }
  }
}

TEST_CASE("apply_warpers keeps HF's set on V = 5000 (top-p over several partial-sort chunks)") {
  for (const auto& c : fixture()["large_cases"]) {
    const std::string name = c["name"].get<std::string>();
    const SamplingParams p = params_of(c["params"]);
    const std::string hex = c["kept_hex"].get<std::string>();
    SUBCASE(name.c_str()) {
      for (int which = 0; which < 2; ++which) {
        auto x = large_logits(c["V"].get<int64_t>());
        which == 0 ? apply_warpers(x, p) : ref::apply_warpers(x, p);
        size_t kept = 0, wrong = 0;
        double sum = 0.0;
        for (size_t i = 0; i < x.size(); ++i) {
          const bool k = x[i] != kNegInf;
          kept += k;
          wrong += k != hex_bit(hex, i);
          if (k) sum += x[i];
        }
        INFO(name << (which ? " (ref)" : ""));
        CHECK(wrong == 0);
        CHECK(kept == c["kept_count"].get<size_t>());
        CHECK(sum == doctest::Approx(c["kept_sum"].get<double>()).epsilon(1e-6));
      }
    }
  }
}

TEST_CASE("fast path equals ref:: on a 262144-token vocabulary") {
  const size_t V = 262144;
  std::mt19937_64 g(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> base(V);
  for (float& v : base) v = nd(g);
  for (size_t i = 0; i < V; i += 997) base[i] = kNegInf;  // a model's banned tokens
  struct Case {
    float t;
    int64_t k;
    float p, mp;
  };
  const Case cases[] = {{1.0f, 50, 1.0f, 0.0f},      {0.7f, 0, 0.9f, 0.0f},    {1.0f, 0, 0.95f, 0.0f},
                        {2.0f, 0, 0.5f, 0.0f},       {0.6f, 40, 0.95f, 0.05f}, {1.0f, 0, 1.0f, 0.1f},
                        {1.0f, 100000, 0.99f, 0.0f}, {0.9f, 0, 1e-7f, 0.0f}};
  for (const Case& c : cases) {
    SamplingParams p;
    p.temperature = c.t, p.top_k = c.k, p.top_p = c.p, p.min_p = c.mp;
    auto fast = base, slow = base;
    apply_warpers(fast, p);
    const auto t0 = std::chrono::steady_clock::now();
    ref::apply_warpers(slow, p);
    const auto t1 = std::chrono::steady_clock::now();
    size_t kept = 0, diff = 0;
    for (size_t i = 0; i < V; ++i) {
      kept += fast[i] != kNegInf;
      diff += !(fast[i] == slow[i]);
    }
    // A warmed-up Sampler (buffers allocated) is what generation runs per token; it must only draw survivors.
    p.do_sample = true;
    Sampler s(p);
    int masked_draws = 0;
    for (int i = 0; i < 3; ++i) masked_draws += fast[static_cast<size_t>(s.next(base))] == kNegInf;
    const auto t2 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) masked_draws += fast[static_cast<size_t>(s.next(base))] == kNegInf;
    const auto t3 = std::chrono::steady_clock::now();
    MESSAGE("T=" << c.t << " k=" << c.k << " p=" << c.p << " min_p=" << c.mp << ": kept " << kept << "; Sampler::next "
                 << std::chrono::duration<double, std::milli>(t3 - t2).count() / 10 << " ms/token, ref::apply_warpers "
                 << std::chrono::duration<double, std::milli>(t1 - t0).count() << " ms");
    CHECK(diff == 0);
    CHECK(kept >= 1);
    CHECK(masked_draws == 0);
  }
}

TEST_CASE("exp_nonpos is within 2 ulp-equivalents of exp over softmax's range") {
  double max_rel = 0.0;
  for (float x = 0.0f; x > -87.3f; x -= 0.000731f) {
    const double e = std::exp(static_cast<double>(x));
    max_rel = std::max(max_rel, std::abs(detail::exp_nonpos(x) - e) / e);
  }
  INFO("max rel err " << max_rel);
  CHECK(max_rel < 1.2e-7);  // fp32 ulp is 2^-23 ~ 1.19e-7 relative at worst
  CHECK(detail::exp_nonpos(0.0f) == 1.0f);
  CHECK(detail::exp_nonpos(-100.0f) == 0.0f);
  CHECK(detail::exp_nonpos(-std::numeric_limits<float>::infinity()) == 0.0f);
}

TEST_CASE("an all -inf row: apply_warpers leaves it (as HF does), the Sampler refuses it") {
  SamplingParams p;
  p.do_sample = true, p.top_p = 0.5f, p.min_p = 0.1f;
  std::vector<float> dead(6, kNegInf);
  apply_warpers(dead, p);
  for (float v : dead) CHECK(v == kNegInf);
  Sampler s(p);
  CHECK_THROWS_WITH_AS(s.next(dead), doctest::Contains("-inf"), Error);
}

TEST_CASE("argmax: first maximal index like torch.argmax; NaN is an error") {
  for (const auto& c : fixture()["argmax"]) {
    const auto x = floats(c["logits"]);
    CHECK(argmax(x) == c["argmax"].get<int64_t>());
    Sampler greedy(SamplingParams{});
    CHECK(greedy.next(x) == c["argmax"].get<int64_t>());
  }
  const std::vector<float> nan_row = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  CHECK_THROWS_WITH_AS(argmax(nan_row), doctest::Contains("NaN"), Error);
  CHECK_THROWS_AS(argmax(std::vector<float>{}), Error);
  SamplingParams s;
  s.do_sample = true;
  std::vector<float> w = nan_row;
  CHECK_THROWS_WITH_AS(apply_warpers(w, s), doctest::Contains("NaN"), Error);
}

TEST_CASE("greedy ignores the warper settings, as HF does without do_sample") {
  SamplingParams p;
  p.temperature = 0.1f, p.top_k = 1, p.top_p = 0.1f;
  Sampler s(p);
  const std::vector<float> x = {0.5f, 2.0f, 2.0f, -1.0f};
  CHECK(s.next(x) == 1);
}

TEST_CASE("Sampler: deterministic per seed, seeds differ, masked tokens never drawn") {
  const auto& c = fixture()["cases"];
  const nlohmann::json* pick = nullptr;
  for (const auto& e : c)
    if (e["name"] == "combined_all_four") pick = &e;
  REQUIRE(pick != nullptr);
  SamplingParams p = params_of((*pick)["params"]);
  const auto logits = floats((*pick)["logits"]);
  const auto warped = floats((*pick)["expected"]);  // HF's mask

  auto draws = [&](uint64_t seed, int n) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int64_t> out;
    for (int i = 0; i < n; ++i) out.push_back(s.next(logits));
    return out;
  };
  const auto a = draws(1, 500), b = draws(1, 500), d = draws(2, 500);
  CHECK(a == b);
  CHECK(a != d);
  for (auto id : a) CHECK(warped[static_cast<size_t>(id)] != kNegInf);
  for (auto id : d) CHECK(warped[static_cast<size_t>(id)] != kNegInf);

  // The caller's logits are not touched.
  const auto copy = logits;
  Sampler s(p);
  (void)s.next(logits);
  CHECK(copy == logits);
  CHECK(s.params().top_k == p.top_k);
}

TEST_CASE("Sampler: empirical frequencies match softmax of HF's warped logits") {
  for (const char* want_name : {"combined_k20_p0.95_t1.3", "min_p_0.05_temperature_1.5", "top_k_5_ties_at_kth"}) {
    const nlohmann::json* pick = nullptr;
    for (const auto& e : fixture()["cases"])
      if (e["name"] == want_name) pick = &e;
    REQUIRE(pick != nullptr);
    SamplingParams p = params_of((*pick)["params"]);
    p.seed = 12345;
    const auto logits = floats((*pick)["logits"]);
    const auto expect = softmax(floats((*pick)["expected"]));
    Sampler s(p);
    const int n = 20000;
    std::vector<int> count(logits.size(), 0);
    for (int i = 0; i < n; ++i) ++count[static_cast<size_t>(s.next(logits))];
    double max_diff = 0.0, chi2 = 0.0;
    int dof = -1;
    for (size_t i = 0; i < logits.size(); ++i) {
      if (expect[i] == 0.0) {
        CHECK(count[i] == 0);
        continue;
      }
      const double e = expect[i] * n;
      chi2 += (count[i] - e) * (count[i] - e) / e;
      ++dof;
      max_diff = std::max(max_diff, std::abs(count[i] / double(n) - expect[i]));
    }
    INFO(want_name << ": max |freq - p| = " << max_diff << ", chi2 = " << chi2 << " with " << dof << " dof");
    CHECK(max_diff < 0.02);
    // Chi-square far beyond its mean (dof) with std sqrt(2 dof): 6 sigma.
    CHECK(chi2 < dof + 6.0 * std::sqrt(2.0 * dof));
  }
}

TEST_CASE("Sampler: a single survivor is always drawn; all -inf is an error") {
  SamplingParams p;
  p.do_sample = true;
  p.top_k = 1;
  Sampler s(p);
  const std::vector<float> x = {0.1f, 3.0f, -2.0f, 2.9f};
  for (int i = 0; i < 50; ++i) CHECK(s.next(x) == 1);
  const std::vector<float> dead(5, kNegInf);
  CHECK_THROWS_WITH_AS(s.next(dead), doctest::Contains("-inf"), Error);
}

TEST_CASE("SamplingParams::validate rejects out-of-range values") {
  auto bad = [](auto edit, const char* field) {
    SamplingParams p;
    edit(p);
    CHECK_THROWS_WITH_AS(p.validate(), doctest::Contains(field), Error);
    CHECK_THROWS_AS(Sampler{p}, Error);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  bad([](SamplingParams& p) { p.temperature = 0.0f; }, "temperature");
  bad([](SamplingParams& p) { p.temperature = -1.0f; }, "temperature");
  bad([nan](SamplingParams& p) { p.temperature = nan; }, "temperature");
  bad([](SamplingParams& p) { p.top_p = 0.0f; }, "top_p");
  bad([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  bad([](SamplingParams& p) { p.top_p = -0.1f; }, "top_p");
  bad([nan](SamplingParams& p) { p.top_p = nan; }, "top_p");
  bad([](SamplingParams& p) { p.min_p = -0.01f; }, "min_p");
  bad([](SamplingParams& p) { p.min_p = 1.01f; }, "min_p");
  bad([](SamplingParams& p) { p.top_k = -1; }, "top_k");
  SamplingParams ok;
  ok.temperature = 0.01f, ok.top_p = 1.0f, ok.min_p = 1.0f, ok.top_k = 0;
  CHECK_NOTHROW(ok.validate());
  ok.top_p = 1e-7f, ok.min_p = 0.0f;
  CHECK_NOTHROW(ok.validate());
}
