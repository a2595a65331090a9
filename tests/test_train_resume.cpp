// SftTrainer's checkpoints: 6 steps straight vs 3 steps, a kill, a resume and 3 more steps give identical
// adapter bytes (and optimizer state); a kill in the middle of writing a checkpoint leaves the previous one
// intact and no half checkpoint under a final name; a changed setting refuses to resume; the PEFT files of a
// checkpoint load back. The "kill" is an exception thrown from the trainer's fault hook at the named stage (the
// CLI's DISTILL_TEST_KILL_AT does a real _Exit at the same points; see the app tests).
#include <doctest/doctest.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <span>
#include <thread>

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

namespace {

// An in-process stand-in for MPI_Allreduce between threads: every rank posts its buffer, all wait, each sums the
// posted buffers in rank order (the same order on every rank, so they agree bit for bit), all wait again.
class ThreadAllreduce {
 public:
  explicit ThreadAllreduce(int n) : n_(n), f_(static_cast<size_t>(n)), d_(static_cast<size_t>(n)) {}
  template <class V>
  void sum(int rank, std::span<V> v) {
    auto& slots = slots_of<V>();
    slots[static_cast<size_t>(rank)].assign(v.begin(), v.end());
    wait();
    for (size_t i = 0; i < v.size(); ++i) {
      V s = 0;
      for (int r = 0; r < n_; ++r) s += slots[static_cast<size_t>(r)][i];
      v[i] = s;
    }
    wait();
  }

 private:
  template <class V>
  std::vector<std::vector<V>>& slots_of() {
    if constexpr (std::is_same_v<V, float>)
      return f_;
    else
      return d_;
  }
  void wait() {
    std::unique_lock<std::mutex> l(m_);
    const int64_t gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(l, [&] { return gen_ != gen; });
    }
  }
  int n_;
  std::vector<std::vector<float>> f_;
  std::vector<std::vector<double>> d_;
  std::mutex m_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t gen_ = 0;
};

std::vector<std::vector<float>> adapter_values(const Q& m) {
  std::vector<std::vector<float>> out;
  for (const auto& [name, v] : named_lora_parameters(m)) {
    const Tensor<float> t = v.value().contiguous();
    out.emplace_back(t.data(), t.data() + t.numel());
  }
  return out;
}

}  // namespace

TEST_CASE("data parallel: 2 ranks with micro-batch 2 train what one process with micro-batch 4 trains") {
  // 11 examples, micro-batches of 4 (one process) or 2 + 2 (two ranks), 2 per step: the last micro-batch of an
  // epoch has 3 items, so rank 1 gets 1 row of it; 2 epochs. No dropout (its masks are drawn per process).
  nn::LoraConfig lc = lora();
  lc.dropout = 0;
  auto cfg = [](int rank, int world) {
    train::TrainerConfig c = config("", false);
    c.max_steps = 0;
    c.epochs = 2;
    c.save_every = 0;
    c.micro_batch = 4 / world;
    c.rank = rank;
    c.world = world;
    return c;
  };
  auto model = [&] {
    LoadOptions lo;
    lo.quantize = true;
    auto m = std::make_unique<Q>(Q::load(test::golden_path("models/qwen3_tiny"), "model", lo));
    attach_lora(*m, lc);
    return m;
  };
  auto one = model();
  train::SftTrainer<qwen3::kFamily, float> t1(*one, lc, examples(), cfg(0, 1));
  CHECK(t1.total_steps() == 4);
  t1.train();

  ThreadAllreduce bus(2);
  std::vector<std::unique_ptr<Q>> ranks;
  ranks.push_back(model());
  ranks.push_back(model());
  std::vector<std::vector<train::StepLog>> logs(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> th;
  for (int r = 0; r < 2; ++r)
    th.emplace_back([&, r] {
      try {
        train::TrainerConfig c = cfg(r, 2);
        c.allreduce_f32 = [&, r](std::span<float> v) { bus.sum(r, v); };
        c.allreduce_f64 = [&, r](std::span<double> v) { bus.sum(r, v); };
        train::SftTrainer<qwen3::kFamily, float> t(*ranks[static_cast<size_t>(r)], lc, examples(), c);
        t.train();
        logs[static_cast<size_t>(r)] = t.history();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : th) t.join();
  REQUIRE(errors[0].empty());
  REQUIRE(errors[1].empty());
  // Same steps, tokens and losses as one process; the two ranks agree bit for bit; the adapters match the single
  // process within f32 summation-order tolerance.
  REQUIRE(logs[0].size() == t1.history().size());
  for (size_t s = 0; s < logs[0].size(); ++s) {
    CHECK(logs[0][s].tokens == t1.history()[s].tokens);
    CHECK(logs[0][s].loss == doctest::Approx(t1.history()[s].loss).epsilon(1e-5));
    CHECK(logs[0][s].grad_norm == doctest::Approx(t1.history()[s].grad_norm).epsilon(1e-4));
    CHECK(logs[1][s].loss == logs[0][s].loss);
  }
  const auto a = adapter_values(*one), b0 = adapter_values(*ranks[0]), b1 = adapter_values(*ranks[1]);
  REQUIRE(a.size() == b0.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(b0[i] == b1[i]);
    for (size_t k = 0; k < a[i].size(); ++k) {
      worst = std::max(worst, static_cast<double>(std::fabs(a[i][k] - b0[i][k])));
      scale = std::max(scale, static_cast<double>(std::fabs(a[i][k])));
    }
  }
  MESSAGE("max |one process - data parallel| = ", worst, " (largest weight ", scale, ")");
  CHECK(worst <= 1e-5 * std::max(1.0, scale));
}
