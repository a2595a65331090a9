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
