// SftTrainer's checkpoints: 6 steps straight vs 3 steps, a kill, a resume and 3 more steps give identical
// adapter bytes (and optimizer state); a kill in the middle of writing a checkpoint leaves the previous one
// intact and no half checkpoint under a final name; a changed setting refuses to resume; the PEFT files of a
// checkpoint load back. The "kill" is an exception thrown from the trainer's fault hook at the named stage (the
// CLI's DISTILL_TEST_KILL_AT does a real _Exit at the same points; see the app tests).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "distill/models/qwen3.hpp"
#include "distill/train/trainer.hpp"
#include "shared_data.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::models;
namespace fs = std::filesystem;

using test::TempDir;

namespace {

using Q = Transformer<qwen3::kFamily, float>;

struct Killed {};

std::vector<data::SftExample> examples() {
  std::mt19937 g(5);
  std::uniform_int_distribution<int32_t> tok(3, 255);
  std::vector<data::SftExample> ex;
  for (int i = 0; i < 11; ++i) {
    data::SftExample e;
    const int n = 6 + i % 5, prompt = 2 + i % 3;
    for (int t = 0; t < n; ++t) {
      e.ids.push_back(tok(g));
      e.labels.push_back(t < prompt ? -100 : e.ids.back());
    }
    ex.push_back(e);
  }
  return ex;
}

nn::LoraConfig lora() {
  nn::LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = 0.1;  // masks must replay after a resume
  return c;
}

train::TrainerConfig config(const std::string& out, bool packing) {
  train::TrainerConfig c;
  c.adamw = {1e-2, 0.9, 0.999, 1e-8, 0.01};
  c.schedule = LrSchedule::Cosine;
  c.warmup_steps = 2;
  c.micro_batch = 2;
  c.grad_accum = 2;
  c.epochs = 3;  // 11 examples: 6 micro-batches, 3 steps per epoch
  c.max_steps = 6;
  c.save_every = 3;
  c.out_dir = out;
  c.packing = packing;
  c.max_len = 16;
  c.checkpoint_blocks = packing;  // exercise both
  c.base_model = "tests/golden/models/qwen3_tiny";
  return c;
}

// A fresh process: the model from disk (NF4 on load), a fresh adapter (replaced by the checkpoint's on resume).
std::unique_ptr<Q> fresh_model() {
  LoadOptions lo;
  lo.quantize = true;
  auto m = std::make_unique<Q>(Q::load(test::golden_path("models/qwen3_tiny"), "model", lo));
  attach_lora(*m, lora());
  return m;
}

std::string bytes_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("resume after a kill reproduces the uninterrupted run bit for bit") {
  for (bool packing : {false, true}) {
    CAPTURE(packing);
    TempDir straight, killed, torn;
    {
      auto m = fresh_model();
      train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), examples(), config(straight.str(), packing));
      CHECK(t.total_steps() == 6);
      t.train();
      CHECK(t.history().size() == 6);
      CHECK(t.history()[5].loss < t.history()[0].loss * 1.5);
    }
    const fs::path ref6 = straight.path / "checkpoint-6";
    REQUIRE(fs::exists(ref6 / "COMPLETE"));
    CHECK(fs::exists(straight.path / "checkpoint-3" / "COMPLETE"));
    // The newest checkpoint before step n (every 3 steps and at epoch ends, which packing moves).
    auto saved_before = [&](int n) {
      for (int k = n - 1; k > 0; --k)
        if (fs::exists(straight.path / ("checkpoint-" + std::to_string(k)) / "COMPLETE")) return k;
      return 0;
    };

    // Killed during step 4 (after checkpoint-3), then resumed in a "new process".
    {
      auto m = fresh_model();
      auto c = config(killed.str(), packing);
      c.fault = [](const std::string& s) {
        if (s == "step:4") throw Killed{};
      };
      train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), examples(), c);
      CHECK_THROWS_AS(t.train(), Killed);
    }
    CHECK(!fs::exists(killed.path / "checkpoint-6"));
    {
      auto m = fresh_model();
      train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), examples(), config(killed.str(), packing));
      CHECK(t.resume() == saved_before(4));
      CHECK(t.history().size() == static_cast<size_t>(saved_before(4)));
      t.train();
    }
    for (const char* f : {"adapter_model.safetensors", "optimizer.safetensors", "adapter_config.json"})
      CHECK_MESSAGE(bytes_of(killed.path / "checkpoint-6" / f) == bytes_of(ref6 / f), f);

    // Killed while writing checkpoint-6: checkpoint-3 stays complete, no checkpoint-6, then resume finishes.
    {
      auto m = fresh_model();
      auto c = config(torn.str(), packing);
      c.fault = [](const std::string& s) {
        if (s == "checkpoint:6") throw Killed{};
      };
      train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), examples(), c);
      CHECK_THROWS_AS(t.train(), Killed);
    }
    const std::string prev = "checkpoint-" + std::to_string(saved_before(6));
    CHECK(fs::exists(torn.path / prev / "COMPLETE"));
    CHECK(bytes_of(torn.path / prev / "adapter_model.safetensors") ==
          bytes_of(straight.path / prev / "adapter_model.safetensors"));
    CHECK(!fs::exists(torn.path / "checkpoint-6"));
    CHECK(train::latest_checkpoint(torn.str()) == (torn.path / prev).string());
    {
      auto m = fresh_model();
      train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), examples(), config(torn.str(), packing));
      CHECK(t.resume() == saved_before(6));
      t.train();
    }
    CHECK(bytes_of(torn.path / "checkpoint-6" / "adapter_model.safetensors") ==
          bytes_of(ref6 / "adapter_model.safetensors"));
  }
}

TEST_CASE("resume refuses other settings; a checkpoint's adapter loads as a PEFT adapter") {
  TempDir d;
  {
    auto m = fresh_model();
    auto c = config(d.str(), false);
    c.max_steps = 3;
    train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), examples(), c);
    t.train();
  }
  {
    auto m = fresh_model();
    auto c = config(d.str(), false);
    c.max_steps = 3;
    c.adamw.lr = 2e-2;
    train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), examples(), c);
    CHECK_THROWS_WITH_AS(t.resume(), doctest::Contains("different training settings"), Error);
  }
  auto m = fresh_model();
  detach_lora(*m);
  const nn::LoraConfig got = load_peft_adapter(*m, (d.path / "checkpoint-3").string());
  CHECK(got.r == 4);
  CHECK(lora_parameters(*m).size() == 3 * 7 * 2);
}

TEST_CASE("a training step whose examples have no trained token fails loudly") {
  auto m = fresh_model();
  std::vector<data::SftExample> ex(4);
  for (auto& e : ex) {
    e.ids = {5, 6, 7, 8};
    e.labels = {-100, -100, -100, -100};
  }
  auto c = config("", false);
  c.max_steps = 1;
  train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), ex, c);
  CHECK_THROWS_WITH_AS(t.train_step(), doctest::Contains("none of its examples has a trained"), Error);
}

TEST_CASE("packing: rows are packed once, every epoch visits each example exactly once in the same number of rows") {
  // Lengths whose greedy packing depends on the order (9,9,7,7 -> 3 rows; 9,7,9,7 -> 2 rows at max_len 16).
  std::vector<data::SftExample> ex;
  for (int n : {9, 9, 7, 7, 9, 7, 7, 9}) {
    data::SftExample e;
    for (int t = 0; t < n; ++t) {
      e.ids.push_back(3 + t);
      e.labels.push_back(t < 2 ? -100 : 3 + t);
    }
    ex.push_back(e);
  }
  auto m = fresh_model();
  auto c = config("", true);
  c.max_steps = 0;
  c.epochs = 4;
  train::SftTrainer<qwen3::kFamily, float> t(*m, lora(), ex, c);
  const size_t rows = t.plan(0).size();
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    const auto plan = t.plan(epoch);
    CHECK(plan.size() == rows);
    std::vector<int> seen(ex.size(), 0);
    for (const auto& row : plan) {
      int64_t used = 0;
      for (int64_t e : row) {
        ++seen[static_cast<size_t>(e)];
        used += static_cast<int64_t>(ex[static_cast<size_t>(e)].ids.size());
      }
      CHECK(used <= c.max_len);
    }
    for (int s : seen) CHECK(s == 1);
  }
  t.train();
  CHECK(t.step() == t.total_steps());
}
