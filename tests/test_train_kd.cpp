// Logit distillation losses (train/kd.hpp) against PyTorch: loss values and gradients of forward KL, reverse KL
// and JSD(beta) on random logits with masked positions, T = 1 and 2.5, with and without the T^2 scale, with a
// given global token count (tests/golden/kd/kd.json, made by tools/golden/kd.py in float64 autograd). The fused
// linear_kd_loss matches the same goldens for every chunk size, and its weight gradient matches matmul +
// kd_loss; f64 gradchecks cover every divergence.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/autograd/gradcheck.hpp"
#include "distill/ops.hpp"
#include "distill/train/feature_kd.hpp"
#include "distill/train/kd.hpp"
#include "harness.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::train;
using nlohmann::json;

namespace {

const json& fixture() {
  static const json j = [] {
    const std::string path = test::golden_path("kd/kd.json");
    std::ifstream in(path);
    REQUIRE_MESSAGE(in.good(), "missing fixture " << path << " (tools/golden/kd.py makes it)");
    return json::parse(in);
  }();
  return j;
}

Tensor<float> tensor(const json& v, std::initializer_list<int64_t> shape) {
  return Tensor<float>::from_vector(Shape(shape), v.get<std::vector<float>>());
}

KdConfig config_of(const json& c) {
  KdConfig k;
  k.div = parse_kd_divergence(c["div"].get<std::string>());
  k.beta = c["beta"].get<double>();
  k.temperature = c["T"].get<double>();
  k.t2_scale = c["t2"].get<bool>();
  return k;
}

// max |a - b| relative to max |b|
double rel_err(const Tensor<float>& a, const std::vector<double>& b) {
  REQUIRE(a.numel() == static_cast<int64_t>(b.size()));
  double m = 0, r = 1e-30;
  for (size_t i = 0; i < b.size(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(a.flat(static_cast<int64_t>(i))) - b[i]));
    r = std::max(r, std::abs(b[i]));
  }
  return m / r;
}

}  // namespace

TEST_CASE("kd_loss matches PyTorch: every divergence, masked positions, T != 1, T^2 scale, global count") {
  const json& f = fixture();
  const int64_t N = f["N"], V = f["V"];
  const Tensor<float> s = tensor(f["student"], {N, V}), t = tensor(f["teacher"], {N, V});
  const auto valid = Tensor<int32_t>::from_vector({N}, f["valid"].get<std::vector<int32_t>>());
  int checked = 0;
  for (const json& c : f["cases"]) {
    if (c["linear"].get<bool>() || c["div"] == "uld") continue;
    CAPTURE(c["name"].get<std::string>());
    Var<float> x(s.clone(), true);
    Var<float> loss = kd_loss(x, t, valid, config_of(c), c["norm"].get<double>());
    CHECK(loss.value().flat(0) == doctest::Approx(c["loss"].get<double>()).epsilon(1e-6));
    loss.backward();
    CHECK(rel_err(x.grad(), c["grad"].get<std::vector<double>>()) < 1e-6);
    ++checked;
  }
  CHECK(checked == 25);
}

TEST_CASE("linear_kd_loss matches PyTorch for every chunk size, and its weight gradient matches matmul + kd_loss") {
  const json& f = fixture();
  const int64_t N = f["N"], V = f["V"], C = f["C"];
  const Tensor<float> h = tensor(f["hidden"], {N, C}), w = tensor(f["weight"], {V, C}),
                      t = tensor(f["teacher"], {N, V});
  const auto valid = Tensor<int32_t>::from_vector({N}, f["valid"].get<std::vector<int32_t>>());
  int calls = 0;
  const TeacherRows rows = [&](int64_t r0, int64_t r1) {
    ++calls;
    return t.slice(0, r0, r1).contiguous();
  };
  for (const json& c : f["cases"]) {
    if (!c["linear"].get<bool>() || c["div"] == "uld") continue;
    for (int64_t chunk : {int64_t{1}, int64_t{5}, int64_t{256}}) {
      CAPTURE(c["name"].get<std::string>());
      CAPTURE(chunk);
      Var<float> hv(h.clone(), true), wv(w.clone(), false);
      calls = 0;
      Var<float> loss = linear_kd_loss(hv, wv, rows, valid, config_of(c), c["norm"].get<double>(), chunk);
      CHECK(loss.value().flat(0) == doctest::Approx(c["loss"].get<double>()).epsilon(1e-5));
      loss.backward();
      CHECK(rel_err(hv.grad(), c["grad"].get<std::vector<double>>()) < 1e-5);
      CHECK(calls == 2 * ((N + chunk - 1) / chunk));  // one pass forward, one backward; never all rows at once
    }
  }
  // dweight: the fused op against the unfused graph (our matmul's backward + kd_loss).
  KdConfig k;
  k.div = KdDivergence::JSD;
  k.beta = 0.3;
  k.temperature = 2.0;
  Var<float> h1(h.clone(), true), w1(w.clone(), true), h2(h.clone(), true), w2(w.clone(), true);
  Var<float> fused = linear_kd_loss(h1, w1, rows, valid, k, 0, 5);
  Var<float> plain = kd_loss(matmul(h2, w2, false, true), t, valid, k);
  CHECK(fused.value().flat(0) == doctest::Approx(plain.value().flat(0)).epsilon(1e-6));
  fused.backward();
  plain.backward();
  const Tensor<float> gw2 = w2.grad(), gh2 = h2.grad();
  std::vector<double> want_w(gw2.numel()), want_h(gh2.numel());
  for (int64_t i = 0; i < gw2.numel(); ++i) want_w[static_cast<size_t>(i)] = gw2.flat(i);
  for (int64_t i = 0; i < gh2.numel(); ++i) want_h[static_cast<size_t>(i)] = gh2.flat(i);
  CHECK(rel_err(w1.grad(), want_w) < 1e-5);
  CHECK(rel_err(h1.grad(), want_h) < 1e-5);
}

TEST_CASE("kd gradients pass f64 gradchecks; masked rows get none; bad arguments are clear errors") {
  const auto valid = Tensor<int32_t>::from_vector({4}, {1, 0, 1, 1});
  const auto teacher = Tensor<double>::uniform({4, 7}, 21, -3, 3);
  for (auto div : {KdDivergence::ForwardKL, KdDivergence::ReverseKL, KdDivergence::JSD}) {
    CAPTURE(kd_divergence_name(div));
    KdConfig k;
    k.div = div;
    k.beta = 0.35;
    k.temperature = 1.7;
    const auto rep = autograd::gradcheck([&](auto& v) { return kd_loss(v[0], teacher, valid, k, 5.0); },
                                         {Tensor<double>::uniform({4, 7}, 22, -3, 3)});
    CHECK_MESSAGE(rep.ok, rep.first_failure);
  }
  Var<float> x(Tensor<float>::uniform({4, 7}, 23, -2, 2), true);
  kd_loss(x, teacher.cast<float>(), valid, KdConfig{}).backward();
  for (int64_t v = 0; v < 7; ++v) CHECK(x.grad().flat(7 + v) == 0.0f);
  // Identical distributions: zero loss and gradient.
  Var<float> y(teacher.cast<float>(), true);
  Var<float> l = kd_loss(y, teacher.cast<float>(), Tensor<int32_t>(), KdConfig{});
  CHECK(std::abs(l.value().flat(0)) < 1e-6);
  // Nothing valid: 0, like cross_entropy (not torch's 0/0).
  CHECK(kd_loss(Var<float>(teacher.cast<float>(), true), teacher.cast<float>(),
                Tensor<int32_t>::from_vector({4}, {0, 0, 0, 0}), KdConfig{})
            .value()
            .flat(0) == 0.0f);

  KdConfig bad;
  bad.div = KdDivergence::JSD;
  bad.beta = 1.0;
  CHECK_THROWS_WITH_AS(kd_loss(y, teacher.cast<float>(), Tensor<int32_t>(), bad),
                       doctest::Contains("strictly between 0 and 1"), Error);
  bad = KdConfig{};
  bad.temperature = 0;
  CHECK_THROWS_WITH_AS(kd_loss(y, teacher.cast<float>(), Tensor<int32_t>(), bad), doctest::Contains("temperature"),
                       Error);
  CHECK_THROWS_WITH_AS(kd_loss(y, Tensor<float>::zeros({4, 6}), Tensor<int32_t>(), KdConfig{}),
                       doctest::Contains("same shape"), Error);
  CHECK_THROWS_WITH_AS(parse_kd_divergence("kld"), doctest::Contains("expected kl, rkl or jsd"), Error);
  CHECK(parse_kd_divergence("fkl") == KdDivergence::ForwardKL);
}

TEST_CASE("uld_loss (different vocabularies) matches PyTorch; uld_align pairs the k-th answer positions") {
  const json& f = fixture();
  const int64_t N = f["N"], V = f["V"], VT = f["VT"];
  const Tensor<float> s = tensor(f["student"], {N, V}), t = tensor(f["teacher_uld"], {N, VT});
  const auto valid = Tensor<int32_t>::from_vector({N}, f["valid"].get<std::vector<int32_t>>());
  int checked = 0;
  for (const json& c : f["cases"]) {
    if (c["div"] != "uld") continue;
    CAPTURE(c["name"].get<std::string>());
    Var<float> x(s.clone(), true);
    Var<float> loss = uld_loss(x, t, valid, c["T"].get<double>(), c["norm"].get<double>());
    CHECK(loss.value().flat(0) == doctest::Approx(c["loss"].get<double>()).epsilon(1e-6));
    loss.backward();
    CHECK(rel_err(x.grad(), c["grad"].get<std::vector<double>>()) < 1e-6);
    ++checked;
  }
  CHECK(checked == 4);
  // The teacher's vocabulary may also be the smaller one (the student's sorted vector is then the longer).
  Var<float> y(t.clone(), true);
  CHECK(uld_loss(y, s, valid).value().flat(0) > 0);
  // A distribution against itself (any vocabulary order) is at distance 0.
  Tensor<float> rev = s.clone();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t v = 0; v < V; ++v) rev.data()[i * V + v] = s.data()[i * V + (V - 1 - v)];
  CHECK(std::abs(uld_loss(Var<float>(s, true), rev, Tensor<int32_t>()).value().flat(0)) < 1e-6);
  CHECK_THROWS_WITH_AS(uld_loss(y, Tensor<float>::zeros({N + 1, V}), Tensor<int32_t>()), doctest::Contains("aligned"),
                       Error);

  const auto pairs = uld_align({0, 0, 1, 1, 1, 0}, {0, 1, 0, 1, 0, 0, 0});
  REQUIRE(pairs.size() == 2);
  CHECK(pairs[0] == std::pair<int64_t, int64_t>{2, 1});
  CHECK(pairs[1] == std::pair<int64_t, int64_t>{3, 3});
}

TEST_CASE("feature_loss (mse, cosine) matches PyTorch in the value and the hidden, W and b gradients") {
  const json& f = fixture();
  const int64_t N = f["N"], C = f["C"], CT = f["CT"];
  const Tensor<float> h = tensor(f["hidden"], {N, C}), th = tensor(f["teacher_hidden"], {N, CT});
  const auto valid = Tensor<int32_t>::from_vector({N}, f["valid"].get<std::vector<int32_t>>());
  for (const json& c : f["features"]) {
    CAPTURE(c["kind"].get<std::string>());
    FeatureProjection p{Var<float>::param(tensor(f["proj_w"], {CT, C})),
                        Var<float>::param(Tensor<float>::from_vector({CT}, f["proj_b"].get<std::vector<float>>()))};
    Var<float> hv(h.clone(), true);
    Var<float> loss = feature_loss(hv, p, th, valid, parse_feature_loss(c["kind"].get<std::string>()));
    CHECK(loss.value().flat(0) == doctest::Approx(c["loss"].get<double>()).epsilon(1e-5));
    loss.backward();
    CHECK(rel_err(hv.grad(), c["grad_hidden"].get<std::vector<double>>()) < 1e-5);
    CHECK(rel_err(p.weight.grad(), c["grad_w"].get<std::vector<double>>()) < 1e-5);
    CHECK(rel_err(p.bias.grad(), c["grad_b"].get<std::vector<double>>()) < 1e-5);
  }
  CHECK_THROWS_WITH_AS(parse_feature_loss("l1"), doctest::Contains("mse or cosine"), Error);
}

TEST_CASE("layer maps, and projections saved beside the adapter and reloaded") {
  const auto m = proportional_layer_map(26, 36);  // gemma-3-1b -> Qwen3-4B
  CHECK(m.front() == 0);
  CHECK(m.back() == 35);
  CHECK(m[12] == 17);  // 13 * 36 / 26 = 18.0 -> layer 17
  for (size_t i = 1; i < m.size(); ++i) CHECK(m[i] > m[i - 1]);
  CHECK(proportional_layer_map(4, 4) == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(proportional_layer_map(2, 8) == std::vector<int64_t>{3, 7});
  const auto g = parse_layer_map("25:35,12:17", 26, 36);
  CHECK(g.at(25) == 35);
  CHECK(g.at(12) == 17);
  CHECK_THROWS_WITH_AS(parse_layer_map("26:35", 26, 36), doctest::Contains("outside 0..25"), Error);
  CHECK_THROWS_WITH_AS(parse_layer_map("3:4,3:5", 26, 36), doctest::Contains("mapped twice"), Error);
  CHECK_THROWS_WITH_AS(parse_layer_map("3-4", 26, 36), doctest::Contains("not student:teacher"), Error);
  CHECK_THROWS_WITH_AS(parse_layer_map("3:4x", 26, 36), doctest::Contains("not student:teacher"), Error);

  test::TempDir dir("feature_proj");
  std::map<int64_t, FeatureProjection> a{{3, FeatureProjection::init(8, 12, 1)},
                                         {7, FeatureProjection::init(8, 12, 2)}};
  a.at(7).bias.value().copy_from(Tensor<float>::uniform({12}, 9));
  save_projections(a, dir / "feature_projections.safetensors");
  std::map<int64_t, FeatureProjection> b{{3, FeatureProjection::init(8, 12, 5)},
                                         {7, FeatureProjection::init(8, 12, 6)}};
  load_projections(b, dir / "feature_projections.safetensors");
  for (int64_t l : {3, 7}) {
    for (int64_t i = 0; i < 96; ++i) CHECK(b.at(l).weight.value().flat(i) == a.at(l).weight.value().flat(i));
    for (int64_t i = 0; i < 12; ++i) CHECK(b.at(l).bias.value().flat(i) == a.at(l).bias.value().flat(i));
  }
  std::map<int64_t, FeatureProjection> wrong{{3, FeatureProjection::init(8, 10, 5)},
                                             {7, FeatureProjection::init(8, 12, 6)}};
  CHECK_THROWS_WITH_AS(load_projections(wrong, dir / "feature_projections.safetensors"),
                       doctest::Contains("layers.3.weight has shape"), Error);
}

TEST_CASE("linear_topk_kd_loss matches PyTorch on top-K rows (duplicate, out-of-vocabulary and padding ids)") {
  const json& f = fixture();
  const int64_t N = f["N"], V = f["V"], C = f["C"], K = f["K"];
  const Tensor<float> h = tensor(f["hidden"], {N, C}), w = tensor(f["weight"], {V, C});
  const auto valid = Tensor<int32_t>::from_vector({N}, f["valid"].get<std::vector<int32_t>>());
  auto with_inf = [](const json& a) {  // JSON has no -inf: the fixture writes null
    std::vector<double> v;
    for (const json& x : a) v.push_back(x.is_null() ? -INFINITY : x.get<double>());
    return v;
  };
  const auto ids = f["topk_ids"].get<std::vector<double>>(), lps = with_inf(f["topk_logprobs"]),
             tail = with_inf(f["topk_tail"]);
  Tensor<float> rows_t = Tensor<float>::zeros({N, 2 * K + 1});
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      rows_t(i, k) = static_cast<float>(ids[static_cast<size_t>(i * K + k)]);
      rows_t(i, K + k) = static_cast<float>(lps[static_cast<size_t>(i * K + k)]);
    }
    rows_t(i, 2 * K) = static_cast<float>(tail[static_cast<size_t>(i)]);
  }
  const TeacherRows rows = [&](int64_t r0, int64_t r1) { return rows_t.slice(0, r0, r1).contiguous(); };
  int checked = 0;
  for (const json& c : f["topk_cases"]) {
    for (int64_t chunk : {int64_t{1}, int64_t{7}, int64_t{256}}) {
      CAPTURE(c["name"].get<std::string>());
      CAPTURE(chunk);
      Var<float> hv(h.clone(), true), wv(w.clone(), false);
      Var<float> loss = linear_topk_kd_loss(hv, wv, rows, K, valid, config_of(c), c["norm"].get<double>(), chunk);
      CHECK(loss.value().flat(0) == doctest::Approx(c["loss"].get<double>()).epsilon(1e-5));
      loss.backward();
      CHECK(rel_err(hv.grad(), c["grad"].get<std::vector<double>>()) < 1e-5);
    }
    ++checked;
  }
  CHECK(checked == 6);
}

TEST_CASE("top-K rows listing the whole vocabulary are the dense divergence; linear_uld_loss == uld_loss") {
  const json& f = fixture();
  const int64_t N = f["N"], V = f["V"], C = f["C"], VT = f["VT"];
  const Tensor<float> h = tensor(f["hidden"], {N, C}), w = tensor(f["weight"], {V, C}),
                      t = tensor(f["teacher"], {N, V}), tu = tensor(f["teacher_uld"], {N, VT});
  const auto valid = Tensor<int32_t>::from_vector({N}, f["valid"].get<std::vector<int32_t>>());
  // Every token listed once, in a scrambled order, with the dense teacher's log-probs: K = V, an empty tail.
  Tensor<float> full = Tensor<float>::zeros({N, 2 * V + 1});
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, z = 0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(t(i, v)));
    for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(t(i, v)) - m);
    for (int64_t k = 0; k < V; ++k) {
      const int64_t v = (k * 7 + 3) % V;  // 7 and 50 are coprime: a permutation
      full(i, k) = static_cast<float>(v);
      full(i, V + k) = static_cast<float>(static_cast<double>(t(i, v)) - m - std::log(z));
    }
    full(i, 2 * V) = -INFINITY;
  }
  for (const char* div : {"kl", "rkl", "jsd"}) {
    CAPTURE(div);
    KdConfig k;
    k.div = parse_kd_divergence(div);
    Var<float> h1(h.clone(), true), h2(h.clone(), true), w1(w.clone(), false);
    Var<float> a = linear_topk_kd_loss(
        h1, w1, [&](int64_t r0, int64_t r1) { return full.slice(0, r0, r1).contiguous(); }, V, valid, k, 0, 5);
    Var<float> b = linear_kd_loss(
        h2, w1, [&](int64_t r0, int64_t r1) { return t.slice(0, r0, r1).contiguous(); }, valid, k, 0, 5);
    CHECK(a.value().flat(0) == doctest::Approx(b.value().flat(0)).epsilon(1e-5));
    a.backward();
    b.backward();
    const Tensor<float> g2 = h2.grad();
    std::vector<double> want(static_cast<size_t>(g2.numel()));
    for (int64_t i = 0; i < g2.numel(); ++i) want[static_cast<size_t>(i)] = g2.flat(i);
    CHECK(rel_err(h1.grad(), want) < 1e-4);
  }
  Var<float> h3(h.clone(), true), h4(h.clone(), true), w3(w.clone(), false);
  Var<float> fused = linear_uld_loss(
      h3, w3, [&](int64_t r0, int64_t r1) { return tu.slice(0, r0, r1).contiguous(); }, VT, valid, 2.0, 0, 3);
  Var<float> plain = uld_loss(matmul(h4, w3, false, true), tu, valid, 2.0);
  CHECK(fused.value().flat(0) == doctest::Approx(plain.value().flat(0)).epsilon(1e-5));
  fused.backward();
  plain.backward();
  const Tensor<float> g4 = h4.grad();
  std::vector<double> want(static_cast<size_t>(g4.numel()));
  for (int64_t i = 0; i < g4.numel(); ++i) want[static_cast<size_t>(i)] = g4.flat(i);
  CHECK(rel_err(h3.grad(), want) < 1e-5);
}
