// Logit distillation inside SftTrainer (DistillConfig): a random student with the tiny Qwen3's shapes learns the
// tiny Qwen3 teacher's distribution (the KD loss falls as LoRA trains on it alone); with kd_weight 0 the run is
// exactly plain SFT (the same adapter bit for bit); the logged loss is the weighted sum of its logged parts; and
// misconfigurations are refused with a reason.
#include <doctest/doctest.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "distill/models/qwen3.hpp"
#include "distill/models/random.hpp"
#include "distill/train/trainer.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::models;
using test::TempDir;

namespace {

using Q = Transformer<qwen3::kFamily, float>;

std::vector<data::SftExample> examples() {
  std::mt19937 g(11);
  std::uniform_int_distribution<int32_t> tok(3, 255);
  std::vector<data::SftExample> ex;
  for (int i = 0; i < 8; ++i) {
    data::SftExample e;
    for (int t = 0; t < 12; ++t) {
      e.ids.push_back(tok(g));
      e.labels.push_back(t < 3 ? -100 : e.ids.back());
    }
    ex.push_back(e);
  }
  return ex;
}

train::TrainerConfig config() {
  train::TrainerConfig c;
  c.adamw = {2e-2, 0.9, 0.999, 1e-8, 0.0};
  c.schedule = LrSchedule::Constant;
  c.micro_batch = 2;
  c.grad_accum = 2;
  c.max_steps = 25;
  c.max_len = 16;
  return c;
}

nn::LoraConfig lora() {
  nn::LoraConfig c;
  c.r = 8;
  c.alpha = 16;
  return c;
}

// The tiny Qwen3 as a teacher callback (what gsm8k_distill train --teacher does).
std::function<train::TeacherRows(const Tensor<int32_t>&, const Tensor<int32_t>&)> teacher_of(
    std::shared_ptr<const Q> m) {
  return [m](const Tensor<int32_t>& ids, const Tensor<int32_t>& mask) -> train::TeacherRows {
    autograd::NoGradGuard ng;
    const Tensor<float> logits = m->forward(ids, mask).value().contiguous();  // [B, T, V]
    const int64_t V = logits.shape().back();
    return [logits, V](int64_t r0, int64_t r1) {
      return Tensor<float>::from_vector({r1 - r0, V},
                                        std::vector<float>(logits.data() + r0 * V, logits.data() + r1 * V));
    };
  };
}

std::unique_ptr<Q> student(const std::string& dir) {
  auto m = std::make_unique<Q>(Q::load(dir));
  attach_lora(*m, lora());
  return m;
}

}  // namespace

TEST_CASE("KD alone moves a random student toward the teacher; kd_weight 0 is plain SFT; the logged parts add up") {
  TempDir t("distill_train");
  const std::string teacher_dir = test::golden_path("models/qwen3_tiny");
  const auto cfg = nlohmann::json::parse(std::ifstream(teacher_dir + "/config.json"));
  RandomModelOptions ro;
  ro.seed = 5;
  ro.std = 0.2;  // far from the teacher
  write_random_checkpoint(cfg, t / "student", ro);
  const auto teacher = std::make_shared<const Q>(Q::load(teacher_dir));

  SUBCASE("kd only: the KL falls") {
    auto s = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> tr(*s, lora(), examples(), config());
    train::DistillConfig d;
    d.kd.div = train::KdDivergence::ForwardKL;
    d.kd.temperature = 2.0;
    d.ce_weight = 0;
    d.kd_weight = 1;
    d.chunk_rows = 7;
    d.teacher = teacher_of(teacher);
    tr.set_distillation(d);
    tr.train();
    const auto& h = tr.history();
    CHECK(h.front().kd_loss > 0);
    CHECK(h.back().kd_loss < 0.7 * h.front().kd_loss);
    CHECK(h.back().loss == doctest::Approx(h.back().kd_loss).epsilon(1e-6));
  }
  SUBCASE("kd_weight 0 trains exactly what SFT trains") {
    auto a = student(t / "student");
    auto b = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> ta(*a, lora(), examples(), config());
    train::SftTrainer<qwen3::kFamily, float> tb(*b, lora(), examples(), config());
    train::DistillConfig d;
    d.ce_weight = 1;
    d.kd_weight = 0;
    d.teacher = teacher_of(teacher);
    tb.set_distillation(d);
    ta.train();
    tb.train();
    const auto pa = lora_parameters(*a), pb = lora_parameters(*b);
    REQUIRE(pa.size() == pb.size());
    for (size_t i = 0; i < pa.size(); ++i)
      for (int64_t k = 0; k < pa[i].value().numel(); ++k) REQUIRE(pa[i].value().flat(k) == pb[i].value().flat(k));
    for (size_t i = 0; i < ta.history().size(); ++i) CHECK(ta.history()[i].loss == tb.history()[i].loss);
  }
  SUBCASE("mixed: loss = ce_weight * CE + kd_weight * KD, with CE the SFT loss") {
    auto s = student(t / "student");
    train::TrainerConfig c = config();
    c.max_steps = 3;
    train::SftTrainer<qwen3::kFamily, float> tr(*s, lora(), examples(), c);
    train::DistillConfig d;
    d.kd.div = train::KdDivergence::JSD;
    d.kd.beta = 0.3;
    d.ce_weight = 0.4;
    d.kd_weight = 0.6;
    d.teacher = teacher_of(teacher);
    tr.set_distillation(d);
    const auto first = tr.train_step();
    CHECK(first.loss == doctest::Approx(0.4 * first.ce_loss + 0.6 * first.kd_loss).epsilon(1e-5));
    auto s2 = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> sft(*s2, lora(), examples(), c);
    CHECK(sft.train_step().loss == doctest::Approx(first.ce_loss).epsilon(1e-5));
  }
  SUBCASE("refused: no teacher, both weights 0, packing, JSD beta 1") {
    auto s = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> tr(*s, lora(), examples(), config());
    train::DistillConfig d;
    CHECK_THROWS_WITH_AS(tr.set_distillation(d), doctest::Contains("needs a teacher"), Error);
    d.teacher = teacher_of(teacher);
    d.ce_weight = d.kd_weight = 0;
    CHECK_THROWS_WITH_AS(tr.set_distillation(d), doctest::Contains("not both 0"), Error);
    d.kd_weight = 1;
    d.kd.div = train::KdDivergence::JSD;
    d.kd.beta = 1;
    CHECK_THROWS_WITH_AS(tr.set_distillation(d), doctest::Contains("strictly between 0 and 1"), Error);
    train::TrainerConfig pc = config();
    pc.packing = true;
    train::SftTrainer<qwen3::kFamily, float> tp(*s, lora(), examples(), pc);
    d.kd.div = train::KdDivergence::ForwardKL;
    CHECK_THROWS_WITH_AS(tp.set_distillation(d), doctest::Contains("does not pack"), Error);
  }
}

namespace {

// The teacher's full log-softmax rows at the trained positions of a micro-batch as top-K rows listing every token
// (K = V): the TopK target then computes exactly the Logits target's divergence.
train::AlignedTargets full_topk(const Q& teacher, const data::Batch& mb) {
  autograd::NoGradGuard ng;
  const Tensor<float> logits = teacher.forward(mb.ids, mb.attention_mask).value().contiguous();
  const int64_t V = logits.shape().back();
  const Tensor<int32_t> tg = train::shift_labels(mb.labels).contiguous();
  train::AlignedTargets at;
  for (int64_t r = 0; r < tg.numel(); ++r)
    if (tg.data()[r] != -100) at.rows.push_back(r);
  at.values = Tensor<float>::zeros({static_cast<int64_t>(at.rows.size()), 2 * V + 1});
  for (size_t i = 0; i < at.rows.size(); ++i) {
    const float* l = logits.data() + at.rows[i] * V;
    double m = -INFINITY, z = 0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(l[v]));
    for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(l[v]) - m);
    for (int64_t v = 0; v < V; ++v) {
      at.values(static_cast<int64_t>(i), v) = static_cast<float>(V - 1 - v);  // listed in reverse order
      at.values(static_cast<int64_t>(i), V + v) =
          static_cast<float>(static_cast<double>(l[V - 1 - v]) - m - std::log(z));
    }
    at.values(static_cast<int64_t>(i), 2 * V) = -INFINITY;
  }
  return at;
}

}  // namespace

TEST_CASE("aligned targets: full top-K rows == logits; ULD and features fall; projections resume exactly") {
  TempDir t("distill_train_aligned");
  const std::string teacher_dir = test::golden_path("models/qwen3_tiny");
  const auto cfg = nlohmann::json::parse(std::ifstream(teacher_dir + "/config.json"));
  RandomModelOptions ro;
  ro.seed = 5;
  ro.std = 0.2;
  write_random_checkpoint(cfg, t / "student", ro);
  const auto teacher = std::make_shared<const Q>(Q::load(teacher_dir));
  train::TrainerConfig c = config();
  c.max_steps = 4;

  SUBCASE("top-K rows listing every token train what the dense teacher trains") {
    auto a = student(t / "student");
    auto b = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> ta(*a, lora(), examples(), c), tb(*b, lora(), examples(), c);
    train::DistillConfig d;
    d.kd.temperature = 1.0;
    d.teacher = teacher_of(teacher);
    ta.set_distillation(d);
    d.teacher = nullptr;
    d.target = train::DistillTarget::TopK;
    d.topk = teacher->dims().vocab;
    d.aligned = [&](std::span<const int64_t>, const data::Batch& mb) { return full_topk(*teacher, mb); };
    tb.set_distillation(d);
    ta.train();
    tb.train();
    for (size_t i = 0; i < ta.history().size(); ++i) {
      CHECK(tb.history()[i].kd_loss == doctest::Approx(ta.history()[i].kd_loss).epsilon(1e-4));
      CHECK(tb.history()[i].ce_loss == doctest::Approx(ta.history()[i].ce_loss).epsilon(1e-4));
    }
  }
  SUBCASE("ULD against the teacher's logits at every trained position falls") {
    auto s = student(t / "student");
    train::TrainerConfig c2 = config();
    train::SftTrainer<qwen3::kFamily, float> tr(*s, lora(), examples(), c2);
    train::DistillConfig d;
    d.target = train::DistillTarget::Uld;
    d.ce_weight = 0;
    d.kd_weight = 1;
    d.aligned = [&](std::span<const int64_t>, const data::Batch& mb) {
      autograd::NoGradGuard ng;
      const Tensor<float> logits = teacher->forward(mb.ids, mb.attention_mask).value().contiguous();
      const int64_t V = logits.shape().back();
      const Tensor<int32_t> tg = train::shift_labels(mb.labels).contiguous();
      train::AlignedTargets at;
      for (int64_t r = 0; r < tg.numel(); ++r)
        if (tg.data()[r] != -100) at.rows.push_back(r);
      at.values = Tensor<float>::zeros({static_cast<int64_t>(at.rows.size()), V});
      for (size_t i = 0; i < at.rows.size(); ++i)
        for (int64_t v = 0; v < V; ++v) at.values(static_cast<int64_t>(i), v) = logits.data()[at.rows[i] * V + v];
      return at;
    };
    tr.set_distillation(d);
    tr.train();
    CHECK(tr.history().front().kd_loss > 0);
    CHECK(tr.history().back().kd_loss < 0.8 * tr.history().front().kd_loss);
  }
  SUBCASE("features: the projected student layers approach the teacher's; a resumed run is bit-identical") {
    std::map<int64_t, int64_t> layer_map;
    const auto prop = train::proportional_layer_map(teacher->dims().layers, teacher->dims().layers);
    for (size_t sl = 0; sl < prop.size(); ++sl) layer_map[static_cast<int64_t>(sl)] = prop[sl];
    // The teacher's block outputs at every trained position.
    auto feats = [&](std::span<const int64_t>, const data::Batch& mb) {
      autograd::NoGradGuard ng;
      Capture<float> cap;
      for (const auto& [sl, tl] : layer_map) cap.request(Hook::Block, tl);
      (void)teacher->hidden(mb.ids, mb.attention_mask, &cap);
      const Tensor<int32_t> tg = train::shift_labels(mb.labels).contiguous();
      train::AlignedTargets at;
      for (int64_t r = 0; r < tg.numel(); ++r)
        if (tg.data()[r] != -100) at.rows.push_back(r);
      for (const auto& [sl, tl] : layer_map) {
        const Tensor<float> hv = cap.at(Hook::Block, tl).value().contiguous();
        const int64_t C = hv.shape().back();
        Tensor<float> f = Tensor<float>::zeros({static_cast<int64_t>(at.rows.size()), C});
        for (size_t i = 0; i < at.rows.size(); ++i)
          for (int64_t k = 0; k < C; ++k) f(static_cast<int64_t>(i), k) = hv.data()[at.rows[i] * C + k];
        at.features[sl] = f;
      }
      return at;
    };
    train::DistillConfig d;
    d.target = train::DistillTarget::Feature;
    d.ce_weight = 0;
    d.kd_weight = 1;
    d.layer_map = layer_map;
    d.teacher_hidden = teacher->dims().hidden;
    d.projection_seed = 3;
    d.aligned = feats;
    train::TrainerConfig c2 = config();
    c2.max_steps = 8;
    c2.out_dir = t / "run";
    c2.save_every = 4;
    auto a = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> ta(*a, lora(), examples(), c2);
    ta.set_distillation(d);
    ta.train();
    CHECK(ta.history().back().kd_loss < 0.8 * ta.history().front().kd_loss);
    CHECK(std::filesystem::is_regular_file(t / "run/checkpoint-4/feature_projections.safetensors"));
    // Resume from step 4 in a fresh trainer: the same projections and adapter at step 8.
    for (const char* later : {"run/checkpoint-6", "run/checkpoint-8"}) std::filesystem::remove_all(t / later);
    auto b = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> tb(*b, lora(), examples(), c2);
    tb.set_distillation(d);
    CHECK(tb.resume() == 4);
    tb.train();
    const auto pa = ta.feature_projections(), pb = tb.feature_projections();
    REQUIRE(pa.size() == layer_map.size());
    for (const auto& [sl, p] : pa)
      for (int64_t k = 0; k < p.weight.value().numel(); ++k)
        REQUIRE(p.weight.value().flat(k) == pb.at(sl).weight.value().flat(k));
    const auto la = lora_parameters(*a), lb = lora_parameters(*b);
    for (size_t i = 0; i < la.size(); ++i)
      for (int64_t k = 0; k < la[i].value().numel(); ++k) REQUIRE(la[i].value().flat(k) == lb[i].value().flat(k));
    // Different distillation settings refuse the checkpoint.
    auto e = student(t / "student");
    train::SftTrainer<qwen3::kFamily, float> te(*e, lora(), examples(), c2);
    d.feature_loss = train::FeatureLoss::Cosine;
    d.kd_weight = 2;
    te.set_distillation(d);
    CHECK_THROWS_WITH_AS(te.resume(), doctest::Contains("different training settings"), Error);
  }
  SUBCASE("a padded teacher vocabulary: columns beyond vocab_limit never count") {
    const int64_t V = teacher->dims().vocab, L = V - 5;
    auto run = [&](float junk) {
      auto s = student(t / "student");
      train::SftTrainer<qwen3::kFamily, float> tr(*s, lora(), examples(), c);
      train::DistillConfig d;
      d.vocab_limit = L;
      const auto base = teacher_of(teacher);
      d.teacher = [base, junk, V](const Tensor<int32_t>& ids, const Tensor<int32_t>& mask) -> train::TeacherRows {
        const train::TeacherRows r = base(ids, mask);
        return [r, junk, V](int64_t r0, int64_t r1) {  // 3 extra padding columns, and junk in the last 5 real ones
          const Tensor<float> x = r(r0, r1);
          Tensor<float> w = Tensor<float>::full({r1 - r0, V + 3}, junk);
          for (int64_t i = 0; i < r1 - r0; ++i)
            for (int64_t v = 0; v < V - 5; ++v) w(i, v) = x(i, v);
          return w;
        };
      };
      tr.set_distillation(d);
      return tr.train_step().kd_loss;
    };
    const double a = run(0.0f), b = run(30.0f);
    CHECK(a > 0);
    CHECK(a == b);
  }
}
