// SftTrainer: LoRA/QLoRA supervised fine-tuning of a Transformer on tokenized chat examples (loss on assistant
// tokens only), with the semantics of HF Trainer + PEFT (SPEC §7, §9):
//   - an optimizer step = grad_accum micro-batches of micro_batch examples (right padded, or packed rows);
//     the loss of each micro-batch is its CE sum / the step's count of trained tokens (train/loss.hpp), so
//     accumulation equals one big batch; a step without any trained token is an error, never a silent zero
//   - global-norm clipping (torch clip_grad_norm_), then torch's AdamW; the LR multiplier of the schedule at the
//     step index (HF's LambdaLR: step s uses lr(s), s = 0, 1, ...)
//   - epochs visit the examples (packing: rows packed once in file order) in a seeded order (our own
//     Fisher-Yates over a splitmix stream: the same on every platform); the last micro-batches of an epoch form a
//     shorter final step, as in HF
//   - dropout masks are drawn from (seed, step, micro-batch, layer, projection): recomputation under activation
//     checkpointing and resumed runs see the same masks
// Checkpoints (every save_every steps, at each epoch end, and at the end) go to out_dir/checkpoint-<step>/:
//   adapter_model.safetensors + adapter_config.json   (PEFT: PeftModel.from_pretrained loads it)
//   optimizer.safetensors                              (AdamW m, v of every adapter tensor, by name)
//   feature_projections.safetensors                    (feature distillation only: its learned projections)
//   trainer_state.json                                 (step, epoch cursor, per-parameter AdamW step counts,
//                                                       seed, the run's settings, log history)
//   COMPLETE                                           (written last)
// A checkpoint is written into a temp directory and renamed into place after COMPLETE: a run killed at any
// moment leaves every earlier checkpoint intact and no half checkpoint under a final name. resume() continues
// from the newest complete checkpoint; on the CPU the result is bit-identical to an uninterrupted run (same
// thread count).
#pragma once
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "distill/data/sft.hpp"
#include "distill/models/adapter.hpp"
#include "distill/train/adamw.hpp"
#include "distill/train/feature_kd.hpp"
#include "distill/train/kd.hpp"
#include "distill/train/loss.hpp"
#include "distill/train/schedule.hpp"

namespace distill::train {

struct TrainerConfig {
  AdamWConfig adamw{2e-4, 0.9, 0.999, 1e-8, 0.0};
  LrSchedule schedule = LrSchedule::Linear;
  int64_t warmup_steps = 0;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  int64_t micro_batch = 2;
  int64_t grad_accum = 4;
  int64_t epochs = 1;
  int64_t max_steps = 0;  // > 0: stop after this many steps (and the schedule spans them)
  bool packing = false;   // several examples per row (max_len tokens), no attention across them
  int64_t max_len = 2048;
  int32_t pad_id = 0;
  bool checkpoint_blocks = false;  // activation checkpointing per block
  uint64_t seed = 3407;
  bool shuffle = true;
  int64_t save_every = 0;  // steps; 0: only at epoch ends and at the end
  std::string out_dir;     // empty: no checkpoints
  std::string base_model;  // adapter_config.json's base_model_name_or_path
  // Data parallel (CPU): this process is `rank` of `world`. A micro-batch then spans world * micro_batch items
  // of the epoch order, and this process trains rows [rank * micro_batch, (rank + 1) * micro_batch) of it; the
  // trained-token count, the loss and every gradient are summed across the processes by `allreduce` (in place,
  // e.g. MPI_Allreduce) before clipping and the update, so every process makes the same update, and world
  // processes with micro_batch b train what one process with micro_batch world * b would (up to f32 summation
  // order; adapter dropout draws its masks per process, so equality needs dropout 0). Only rank 0 writes
  // checkpoints; every rank resumes from them.
  int rank = 0, world = 1;
  std::function<void(std::span<float>)> allreduce_f32;
  std::function<void(std::span<double>)> allreduce_f64;
  // Test hook: called with a stage name ("step:<n>" before step n's update, "checkpoint:<n>" in the middle of
  // writing checkpoint n); throwing from it simulates a kill at that point.
  std::function<void(const std::string&)> fault;
};

// Distillation in the trainer (kd.hpp, feature_kd.hpp): each micro-batch's loss becomes
// ce_weight * CE(student, labels) + kd_weight * D, with D normalized like the CE by the step's global count of
// trained tokens (so accumulation and data parallel stay exact). D by target:
//   Logits   KD(teacher || student) over every trained position (label != -100 after the shift), for a teacher
//            with the student's tokenizer: `teacher(ids, attention_mask)` runs it once per micro-batch on the
//            student's ids and returns its logits by rows of the flattened [B * T] positions (TeacherRows), at
//            most the student's vocabulary wide (padded vocabularies: see below)
//   TopK     KD against top-K rows (kd.hpp, ref::topk_kd_row) at the positions `aligned` gives: offline teacher
//            logits, or a teacher with another tokenizer seen through the shared vocabulary
//   Uld      Universal Logit Distillation against the teacher's logits at the aligned positions
//   Feature  feature_kd.hpp: for each mapped student layer, a learned projection of its residual stream (the
//            output of the block) against the teacher's at the aligned positions; the mean over mapped layers
// `aligned(examples, micro_batch)` gets the micro-batch's examples (indices into the trainer's examples, in row
// order) and returns the aligned positions and the teacher's values there (AlignedTargets). Positions it leaves
// out are trained by the CE only. The fused losses hold only chunk_rows rows of logits at a time. f32 students on
// the CPU, without packing.
// Padded vocabularies (a same-tokenizer teacher whose logits are narrower or wider than the student's): set
// vocab_limit to the tokenizer's real vocabulary size; both sides' rows are cut to it (the rows beyond are
// embedding padding no token ever takes).
enum class DistillTarget : uint8_t { Logits, TopK, Uld, Feature };

inline const char* distill_target_name(DistillTarget t) {
  constexpr const char* names[] = {"logits", "topk", "uld", "feature"};
  return names[static_cast<int>(t)];
}

struct AlignedTargets {
  std::vector<int64_t> rows;  // positions b * T + t of the micro-batch whose hidden state predicts token t + 1
  Tensor<float> values;       // TopK: [rows, 2K + 1]; Uld: [rows, V_teacher]
  std::map<int64_t, Tensor<float>> features;  // Feature: student layer -> teacher hidden states [rows, C_teacher]
};

struct DistillConfig {
  DistillTarget target = DistillTarget::Logits;
  KdConfig kd;
  double ce_weight = 0.5, kd_weight = 0.5;
  int64_t chunk_rows = 256;
  int64_t vocab_limit = 0;  // Logits: compare the first vocab_limit entries of both (0: the student's width)
  int64_t topk = 0;         // TopK: K
  std::function<TeacherRows(const Tensor<int32_t>& ids, const Tensor<int32_t>& attention_mask)> teacher;
  std::function<AlignedTargets(std::span<const int64_t> examples, const data::Batch& mb)> aligned;
  // Feature
  std::map<int64_t, int64_t> layer_map;  // student layer -> teacher layer
  int64_t teacher_hidden = 0;
  FeatureLoss feature_loss = FeatureLoss::Mse;
  uint64_t projection_seed = 0;
};

struct StepLog {
  int64_t step = 0;  // 1-based, after the update
  int64_t total_steps = 0;
  double epoch = 0;  // fractional
  double loss = 0;
  double ce_loss = 0, kd_loss = 0;  // the two components (unweighted) when distilling; 0 otherwise
  double grad_norm = 0;
  double lr = 0;
  int64_t tokens = 0;      // trained tokens of the step
  int64_t seq_tokens = 0;  // all tokens (with padding) of the step
  double seconds = 0;
};

// Our portable shuffle: Fisher-Yates driven by splitmix64.
inline std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  if (!shuffle) return p;
  const uint64_t s = nn::derive_seed(seed, 0x5348554646ull + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t r = nn::mix64(s + static_cast<uint64_t>(i));
    const auto j = static_cast<int64_t>(r % static_cast<uint64_t>(i + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

// The newest checkpoint-<n> with a COMPLETE marker under dir ("" if none).
inline std::string latest_checkpoint(const std::string& dir) {
  namespace fs = std::filesystem;
  if (dir.empty() || !fs::is_directory(dir)) return "";
  int64_t best = -1;
  std::string path;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (!e.is_directory() || n.rfind("checkpoint-", 0) != 0) continue;
    const std::string num = n.substr(11);
    if (num.empty() || !std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    if (!fs::exists(e.path() / "COMPLETE")) continue;
    const int64_t k = std::stoll(num);
    if (k > best) {
      best = k;
      path = e.path().string();
    }
  }
  return path;
}

template <models::TransformerSpec Spec, class T, class D = Cpu>
class SftTrainer {
 public:
  using Model = models::Transformer<Spec, T, D>;

  // `model` must carry its adapters already (attach_lora or load_peft_adapter); `lora` is their config.
  SftTrainer(Model& model, nn::LoraConfig lora, std::vector<data::SftExample> examples, TrainerConfig cfg)
      : model_(model), lora_(std::move(lora)), ex_(std::move(examples)), cfg_(std::move(cfg)) {
    DISTILL_CHECK(!ex_.empty(), "SftTrainer: no training examples");
    DISTILL_CHECK(cfg_.micro_batch >= 1 && cfg_.grad_accum >= 1, "SftTrainer: micro_batch and grad_accum must be >= 1");
    DISTILL_CHECK(cfg_.epochs >= 1 || cfg_.max_steps > 0, "SftTrainer: need epochs >= 1 or max_steps > 0");
    DISTILL_CHECK(!cfg_.packing || cfg_.max_len >= 2, "SftTrainer: packing needs max_len >= 2");
    for (size_t i = 0; i < ex_.size(); ++i) {
      DISTILL_CHECK(ex_[i].ids.size() == ex_[i].labels.size() && !ex_[i].ids.empty(), "SftTrainer: example ", i,
                    " has ", ex_[i].ids.size(), " ids and ", ex_[i].labels.size(), " labels");
      DISTILL_CHECK(!cfg_.packing || static_cast<int64_t>(ex_[i].ids.size()) <= cfg_.max_len, "SftTrainer: example ", i,
                    " has ", ex_[i].ids.size(), " tokens, more than max_len ", cfg_.max_len, " (truncate first)");
    }
    items_ = pack_items();
    items_per_epoch_ = static_cast<int64_t>(items_.size());
    DISTILL_CHECK(cfg_.world >= 1 && cfg_.rank >= 0 && cfg_.rank < cfg_.world, "SftTrainer: rank ", cfg_.rank,
                  " of world ", cfg_.world, " is not a valid data-parallel position");
    DISTILL_CHECK(cfg_.world == 1 || (cfg_.allreduce_f32 && cfg_.allreduce_f64), "SftTrainer: data parallel over ",
                  cfg_.world, " processes needs the all-reduce functions");
    DISTILL_CHECK(cfg_.world == 1 || (std::is_same_v<D, Cpu>), "SftTrainer: data parallel runs on the CPU only");
    steps_per_epoch_ = ceil_div(ceil_div(items_per_epoch_, cfg_.micro_batch * cfg_.world), cfg_.grad_accum);
    total_steps_ = cfg_.max_steps > 0 ? cfg_.max_steps : steps_per_epoch_ * cfg_.epochs;
    make_optimizer();
  }

  // The items of an epoch in visiting order: one example each, or (packing) the examples of one row. Rows are
  // packed once, in file order, and their order is shuffled per epoch (as TRL packs the dataset, then shuffles):
  // every epoch has the same number of items, hence the same number of steps.
  std::vector<std::vector<int64_t>> plan(int64_t epoch) const {
    std::vector<std::vector<int64_t>> items;
    items.reserve(items_.size());
    for (int64_t i : epoch_order(items_per_epoch_, cfg_.seed, epoch, cfg_.shuffle))
      items.push_back(items_[static_cast<size_t>(i)]);
    return items;
  }

  // Distill from a teacher as well as (or instead of) the labels (see DistillConfig). Call before resume():
  // feature distillation adds its projections to the optimizer (and to every checkpoint).
  void set_distillation(DistillConfig d) {
    const bool aligned = d.target != DistillTarget::Logits;
    DISTILL_CHECK(aligned ? static_cast<bool>(d.aligned) : static_cast<bool>(d.teacher), "SftTrainer: distillation (",
                  distill_target_name(d.target), ") needs a teacher");
    DISTILL_CHECK(d.ce_weight >= 0 && d.kd_weight >= 0 && d.ce_weight + d.kd_weight > 0,
                  "SftTrainer: distillation weights must be >= 0 and not both 0 (ce ", d.ce_weight, ", kd ",
                  d.kd_weight, ")");
    DISTILL_CHECK((std::is_same_v<T, float> && std::is_same_v<D, Cpu>),
                  "SftTrainer: distillation runs with an f32 student on the CPU (for now)");
    DISTILL_CHECK(!cfg_.packing,
                  "SftTrainer: distillation does not pack examples (the teacher would attend "
                  "across them); turn packing off");
    DISTILL_CHECK(model_.dims().final_softcap == 0,
                  "SftTrainer: logit distillation needs a model without a final "
                  "logit softcap");
    DISTILL_CHECK(d.target != DistillTarget::TopK || d.topk >= 1, "SftTrainer: top-K distillation needs K >= 1");
    DISTILL_CHECK(d.vocab_limit >= 0 && d.vocab_limit <= model_.dims().vocab, "SftTrainer: vocab_limit ", d.vocab_limit,
                  " is outside 0..", model_.dims().vocab);
    d.kd.validate();
    projections_.clear();
    if (d.target == DistillTarget::Feature) {
      DISTILL_CHECK(!d.layer_map.empty() && d.teacher_hidden > 0,
                    "SftTrainer: feature distillation needs a layer map and the teacher's hidden size");
      DISTILL_CHECK(!cfg_.checkpoint_blocks,
                    "SftTrainer: feature distillation reads the blocks' outputs, which activation checkpointing "
                    "does not keep; turn it off");
      for (const auto& [sl, tl] : d.layer_map) {
        DISTILL_CHECK(sl >= 0 && sl < model_.dims().layers, "SftTrainer: student layer ", sl, " is outside 0..",
                      model_.dims().layers - 1);
        projections_.emplace(sl,
                             FeatureProjection::init(model_.dims().hidden, d.teacher_hidden,
                                                     nn::derive_seed(d.projection_seed, static_cast<uint64_t>(sl))));
      }
    }
    distill_ = std::move(d);
    make_optimizer();
  }

  // Feature distillation's projections (empty otherwise), by student layer; checkpoints hold them in this file
  // (feature_kd.hpp's save_projections), beside the adapter.
  static constexpr const char* kProjectionsFile = "feature_projections.safetensors";
  const std::map<int64_t, FeatureProjection>& feature_projections() const { return projections_; }

  int64_t total_steps() const { return total_steps_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t step() const { return step_; }
  const std::vector<StepLog>& history() const { return history_; }
  AdamW<D>& optimizer() { return *opt_; }

  // Continues from the newest complete checkpoint under out_dir, if any; returns its step (0: none).
  int64_t resume() {
    const std::string dir = latest_checkpoint(cfg_.out_dir);
    if (dir.empty()) return 0;
    load_checkpoint(dir);
    return step_;
  }

  // Runs to total_steps(); on_step is called after every step (progress, logging).
  void train(const std::function<void(const StepLog&)>& on_step = {}) {
    while (step_ < total_steps_) {
      const StepLog log = train_step();
      if (on_step) on_step(log);
      const bool epoch_end = step_ % steps_per_epoch_ == 0;
      if (!cfg_.out_dir.empty() && cfg_.rank == 0 &&
          ((cfg_.save_every > 0 && step_ % cfg_.save_every == 0) || epoch_end || step_ == total_steps_))
        save_checkpoint();
    }
  }

  // One optimizer step.
  StepLog train_step() {
    DISTILL_CHECK(step_ < total_steps_, "SftTrainer: all ", total_steps_, " steps are done");
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t epoch = step_ / steps_per_epoch_, in_epoch = step_ % steps_per_epoch_;
    const std::vector<int64_t> order = epoch_order(items_per_epoch_, cfg_.seed, epoch, cfg_.shuffle);
    const int64_t gmb = cfg_.micro_batch * cfg_.world;  // items per micro-batch over all processes
    const int64_t first = in_epoch * cfg_.grad_accum * gmb;
    const int64_t last = std::min<int64_t>(first + cfg_.grad_accum * gmb, items_per_epoch_);
    DISTILL_CHECK(first < last, "SftTrainer: internal error: empty step");
    std::vector<data::Batch> mbs;
    std::vector<std::vector<int64_t>> mb_examples;  // without packing: each micro-batch's examples, in row order
    int64_t num_items = 0, seq_tokens = 0;
    for (int64_t g = first; g < last; g += gmb) {
      // This process's rows of the micro-batch (none, at the end of an epoch, for some ranks).
      const int64_t b = std::min(g + cfg_.rank * cfg_.micro_batch, last);
      const int64_t e = std::min({b + cfg_.micro_batch, g + gmb, last});
      if (b >= e) continue;
      // One row per item: an example, or the examples packed together (rows stay as packed).
      std::vector<std::vector<const data::SftExample*>> rows;
      for (int64_t i = b; i < e; ++i) {
        rows.emplace_back();
        for (int64_t x : items_[static_cast<size_t>(order[static_cast<size_t>(i)])])
          rows.back().push_back(&ex_[static_cast<size_t>(x)]);
      }
      if (cfg_.packing) {
        mbs.push_back(data::make_rows_batch(rows, cfg_.pad_id));
      } else {
        std::vector<const data::SftExample*> ex;
        mb_examples.emplace_back();
        for (const auto& r : rows) ex.push_back(r[0]);
        for (int64_t i = b; i < e; ++i)
          mb_examples.back().push_back(items_[static_cast<size_t>(order[static_cast<size_t>(i)])][0]);
        mbs.push_back(data::make_batch(ex, cfg_.pad_id));
      }
      num_items += count_targets(mbs.back().labels);
      seq_tokens += mbs.back().ids.numel();
    }
    if (cfg_.world > 1) {
      double c[2] = {static_cast<double>(num_items), static_cast<double>(seq_tokens)};
      cfg_.allreduce_f64(std::span<double>(c, 2));
      num_items = static_cast<int64_t>(c[0]);
      seq_tokens = static_cast<int64_t>(c[1]);
    }
    if (num_items == 0)
      throw Error("training step " + std::to_string(step_ + 1) + " (epoch " + std::to_string(epoch + 1) +
                  "): none of its examples has a trained (assistant) token after truncation; check max_len and the "
                  "data");
    opt_->zero_grad();
    double loss = 0, ce_sum = 0, kd_sum = 0;
    for (size_t m = 0; m < mbs.size(); ++m) {
      models::RunOptions run;
      run.train = true;
      run.seed = nn::derive_seed(cfg_.seed, static_cast<uint64_t>(step_) * 1024 + m);
      run.checkpoint_blocks = cfg_.checkpoint_blocks;
      if (cfg_.packing) run.segments = mbs[m].segments;
      if (distilling()) {
        if constexpr (std::is_same_v<T, float> && std::is_same_v<D, Cpu>) {
          const auto [ce, kd] = distill_loss(mbs[m], mb_examples[m], num_items, run);
          ce_sum += static_cast<double>(ce.value().data()[0]);
          kd_sum += static_cast<double>(kd.value().data()[0]);
          const Var<float> l =
              ce * static_cast<float>(distill_.ce_weight) + kd * static_cast<float>(distill_.kd_weight);
          loss += static_cast<double>(l.value().data()[0]);
          l.backward();
        }
        continue;
      }
      const Var<T, D> l = causal_lm_loss(model_, mbs[m].ids, mbs[m].labels, mbs[m].attention_mask, num_items, run);
      loss += static_cast<double>(to_compute<T>(l.value().template to<Cpu>().data()[0]));
      l.backward();
    }
    const auto params = opt_->params();
    if (cfg_.world > 1) {
      if constexpr (std::is_same_v<D, Cpu>) {
        for (const auto& p : params) {
          Tensor<float>& g = p.grad_buffer();  // zeros when this process's rows did not reach it
          cfg_.allreduce_f32(std::span<float>(g.data(), static_cast<size_t>(g.numel())));
        }
      }
      double l3[3] = {loss, ce_sum, kd_sum};
      cfg_.allreduce_f64(std::span<double>(l3, 3));
      loss = l3[0];
      ce_sum = l3[1];
      kd_sum = l3[2];
    }
    const double norm = grad_global_norm<D>(std::span<const Var<float, D>>(params));
    const double scale = cfg_.max_grad_norm > 0 ? clip_coefficient(norm, cfg_.max_grad_norm) : 1.0;
    const double lr = cfg_.adamw.lr * lr_multiplier(cfg_.schedule, step_, cfg_.warmup_steps, total_steps_);
    if (cfg_.fault) cfg_.fault("step:" + std::to_string(step_ + 1));
    opt_->set_lr(lr);
    opt_->step(scale);
    opt_->zero_grad();
    ++step_;
    StepLog log;
    log.step = step_;
    log.total_steps = total_steps_;
    log.epoch = static_cast<double>(epoch) + static_cast<double>(last) / static_cast<double>(items_per_epoch_);
    log.loss = loss;
    log.ce_loss = ce_sum;
    log.kd_loss = kd_sum;
    log.grad_norm = norm;
    log.lr = lr;
    log.tokens = num_items;
    log.seq_tokens = seq_tokens;
    log.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    history_.push_back(log);
    return log;
  }

  // Writes checkpoint-<step> under out_dir (atomically, see the file comment); returns its path.
  std::string save_checkpoint() {
    namespace fs = std::filesystem;
    DISTILL_CHECK(!cfg_.out_dir.empty(), "SftTrainer: no out_dir to save checkpoints in");
    fs::create_directories(cfg_.out_dir);
    const fs::path final_dir = fs::path(cfg_.out_dir) / ("checkpoint-" + std::to_string(step_));
    const fs::path tmp = fs::path(cfg_.out_dir) / (".checkpoint-" + std::to_string(step_) + ".tmp");
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    models::save_peft_adapter(model_, lora_, tmp.string(), cfg_.base_model);
    if (!projections_.empty()) save_projections(projections_, (tmp / kProjectionsFile).string());
    if (cfg_.fault) cfg_.fault("checkpoint:" + std::to_string(step_));
    io::SafetensorsWriter w;
    const auto named = named_parameters();
    nlohmann::ordered_json t = nlohmann::ordered_json::array();
    for (size_t i = 0; i < named.size(); ++i) {
      const auto& st = opt_->state(i);
      if (st.m.defined()) {
        w.add("m." + named[i].first, st.m.template to<Cpu>());
        w.add("v." + named[i].first, st.v.template to<Cpu>());
      }
      t.push_back(st.t);
    }
    w.set_metadata("format", "distill-adamw");
    w.save((tmp / "optimizer.safetensors").string());
    nlohmann::ordered_json s;
    s["format"] = "distill-trainer-state/1";
    s["step"] = step_;
    s["total_steps"] = total_steps_;
    s["steps_per_epoch"] = steps_per_epoch_;
    s["epoch"] = step_ / steps_per_epoch_;
    s["optimizer_steps"] = opt_->step_count();
    s["param_steps"] = t;
    s["seed"] = cfg_.seed;
    s["settings"] = settings_json();
    nlohmann::ordered_json h = nlohmann::ordered_json::array();
    for (const StepLog& l : history_)
      h.push_back({{"step", l.step},
                   {"epoch", l.epoch},
                   {"loss", l.loss},
                   {"grad_norm", l.grad_norm},
                   {"lr", l.lr},
                   {"tokens", l.tokens},
                   {"seconds", l.seconds}});
    s["log_history"] = h;
    io::atomic_write((tmp / "trainer_state.json").string(), s.dump(2) + "\n");
    io::atomic_write((tmp / "COMPLETE").string(), std::string_view("ok\n"));
    fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
    io::fsync_dir(cfg_.out_dir);
    return final_dir.string();
  }

  // Restores a checkpoint directory (adapter, optimizer state, step, log). A malformed or foreign checkpoint is
  // one distill::Error naming the file.
  void load_checkpoint(const std::string& dir) {
    try {
      load_checkpoint_unchecked(dir);
    } catch (const nlohmann::json::exception& e) {
      throw Error(dir + "/trainer_state.json: malformed trainer state: " + e.what());
    }
  }

 private:
  bool distilling() const { return distill_.teacher || distill_.aligned; }

  // One micro-batch's (CE, D), each already divided by the step's trained-token count.
  std::pair<Var<float>, Var<float>> distill_loss(
      const data::Batch& mb, std::span<const int64_t> examples, int64_t num_items,
      const models::RunOptions& run) requires(std::is_same_v<T, float>&& std::is_same_v<D, Cpu>) {
    const Tensor<int32_t> targets = shift_labels(mb.labels);
    models::Capture<float> cap;
    for (const auto& [sl, tl] : distill_.layer_map)
      if (distill_.target == DistillTarget::Feature) cap.request(models::Hook::Block, sl);
    const Var<float> h = model_.hidden(mb.ids, mb.attention_mask, projections_.empty() ? nullptr : &cap, run);
    const Var<float>& head = model_.weights().lm_head;
    const Var<float> ce = causal_lm_loss_from_hidden(model_, h, mb.labels, num_items);
    const auto nrm = static_cast<double>(num_items);
    if (distill_.target == DistillTarget::Logits) {
      Tensor<int32_t> valid = Tensor<int32_t>::zeros({targets.numel()});
      const Tensor<int32_t> tc = targets.contiguous();
      for (int64_t i = 0; i < tc.numel(); ++i) valid.data()[i] = tc.data()[i] != kIgnoreIndex;
      TeacherRows rows = distill_.teacher(mb.ids, mb.attention_mask);
      const int64_t limit = distill_.vocab_limit;
      if (limit > 0 && limit < model_.dims().vocab) {  // padded vocabularies: the real tokens' columns only
        rows = [rows, limit](int64_t r0, int64_t r1) {
          const Tensor<float> t = rows(r0, r1);
          DISTILL_CHECK(t.rank() == 2 && t.dim(1) >= limit, "distillation: the teacher's logits ", t.shape().str(),
                        " are narrower than the vocabulary limit ", limit);
          return t.slice(1, 0, limit).contiguous();
        };
        const Var<float> hh = reshape(h, {h.value().numel() / h.value().shape().back(), h.value().shape().back()});
        const Var<float> head_cut = split(head, {limit, model_.dims().vocab - limit}, 0)[0];
        return {ce, linear_kd_loss(hh, head_cut, rows, valid, distill_.kd, nrm, distill_.chunk_rows)};
      }
      return {ce, linear_kd_loss(h, head, rows, valid, distill_.kd, nrm, distill_.chunk_rows)};
    }
    const AlignedTargets at = distill_.aligned(examples, mb);
    const int64_t N = targets.numel(), n = static_cast<int64_t>(at.rows.size());
    Tensor<int32_t> idx = Tensor<int32_t>::zeros({std::max<int64_t>(n, 1)});
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = at.rows[static_cast<size_t>(i)];
      DISTILL_CHECK(r >= 0 && r < N, "distillation: aligned position ", r, " is outside the micro-batch's ", N);
      idx.data()[i] = static_cast<int32_t>(r);
    }
    if (n == 0) return {ce, ce * 0.0f};  // nothing aligned in this micro-batch: the CE alone
    idx = idx.slice(0, 0, n).contiguous();
    auto gather = [&](const Var<float>& x) {  // rows idx of x [B, T, C] as [n, C]
      const int64_t C = x.value().shape().back();
      return embedding(reshape(x, {x.value().numel() / C, C}), idx);
    };
    const Var<float> hr = gather(h);
    // By value: the backward asks for the rows again after this function returns.
    const TeacherRows rows = [vals = at.values](int64_t r0, int64_t r1) { return vals.slice(0, r0, r1).contiguous(); };
    switch (distill_.target) {
      case DistillTarget::TopK:
        return {ce, linear_topk_kd_loss(hr, head, rows, distill_.topk, Tensor<int32_t>(), distill_.kd, nrm,
                                        distill_.chunk_rows)};
      case DistillTarget::Uld:
        return {ce, linear_uld_loss(hr, head, rows, at.values.dim(1), Tensor<int32_t>(), distill_.kd.temperature, nrm,
                                    distill_.chunk_rows)};
      default: {
        Var<float> sum;
        for (const auto& [sl, proj] : projections_) {
          const auto it = at.features.find(sl);
          DISTILL_CHECK(it != at.features.end(), "distillation: no teacher features for student layer ", sl);
          const Var<float> f = feature_loss(gather(cap.at(models::Hook::Block, sl)), proj, it->second,
                                            Tensor<int32_t>(), distill_.feature_loss, nrm);
          sum = sum.defined() ? sum + f : f;
        }
        return {ce, sum * static_cast<float>(1.0 / static_cast<double>(projections_.size()))};
      }
    }
  }

  void load_checkpoint_unchecked(const std::string& dir) {
    namespace fs = std::filesystem;
    DISTILL_CHECK(fs::exists(fs::path(dir) / "COMPLETE"), dir, ": incomplete checkpoint (no COMPLETE marker)");
    const std::string p = (fs::path(dir) / "trainer_state.json").string();
    const nlohmann::json s = io::read_json_file(p);
    DISTILL_CHECK(s.value("format", "") == "distill-trainer-state/1", p, ": not a Distill trainer state");
    const nlohmann::json now = nlohmann::json::parse(settings_json().dump());
    DISTILL_CHECK(s.at("settings") == now, p,
                  ": the checkpoint was made with different training settings; resuming would not continue the "
                  "same run (saved ",
                  s.at("settings").dump(), ", now ", now.dump(), ")");
    lora_ = models::load_peft_adapter(model_, dir);
    if (!projections_.empty()) load_projections(projections_, (fs::path(dir) / kProjectionsFile).string());
    make_optimizer();
    const io::SafetensorsFile f = io::SafetensorsFile::open((fs::path(dir) / "optimizer.safetensors").string());
    const auto named = named_parameters();
    const auto& t = s.at("param_steps");
    DISTILL_CHECK(t.is_array() && t.size() == named.size(), dir, ": optimizer state for ", t.size(),
                  " tensors, the adapter has ", named.size());
    for (size_t i = 0; i < named.size(); ++i) {
      auto& st = opt_->state(i);
      st.t = t[i].get<int64_t>();
      if (st.t == 0) continue;
      auto load = [&](const std::string& n) {
        DISTILL_CHECK(f.find(n) != nullptr, dir, "/optimizer.safetensors: missing ", n);
        Tensor<float> x = f.template load<float>(n);
        check_same_shape(x.shape(), named[i].second.shape(), "optimizer state vs adapter");
        if constexpr (std::is_same_v<D, Cpu>)
          return x;
        else
          return x.template to<D>();
      };
      st.m = load("m." + named[i].first);
      st.v = load("v." + named[i].first);
    }
    opt_->set_step_count(s.at("optimizer_steps").get<int64_t>());
    step_ = s.at("step").get<int64_t>();
    history_.clear();
    for (const auto& h : s.at("log_history")) {
      StepLog l;
      l.step = h.at("step").get<int64_t>();
      l.epoch = h.at("epoch").get<double>();
      l.loss = h.at("loss").get<double>();
      l.grad_norm = h.at("grad_norm").get<double>();
      l.lr = h.at("lr").get<double>();
      l.tokens = h.at("tokens").get<int64_t>();
      l.seconds = h.at("seconds").get<double>();
      l.total_steps = total_steps_;
      history_.push_back(l);
    }
  }

  static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

  // Every trained tensor by name, in the optimizer's order: the adapter's, then feature projections' (if any).
  std::vector<std::pair<std::string, Var<float, D>>> named_parameters() const {
    auto named = models::named_lora_parameters(model_);
    if constexpr (std::is_same_v<D, Cpu>)
      for (const auto& [sl, p] : projections_) {
        named.emplace_back("feature_projection.layers." + std::to_string(sl) + ".weight", p.weight);
        named.emplace_back("feature_projection.layers." + std::to_string(sl) + ".bias", p.bias);
      }
    return named;
  }

  void make_optimizer() {
    std::vector<Var<float, D>> params;
    for (const auto& [n, p] : named_parameters()) params.push_back(p);
    opt_ = std::make_unique<AdamW<D>>(std::move(params), cfg_.adamw);
  }

  // The examples of each item in file order (see plan()).
  std::vector<std::vector<int64_t>> pack_items() const {
    std::vector<std::vector<int64_t>> items;
    if (!cfg_.packing) {
      for (int64_t i = 0; i < static_cast<int64_t>(ex_.size()); ++i) items.push_back({i});
      return items;
    }
    std::vector<int64_t> lengths;
    for (const auto& e : ex_) lengths.push_back(static_cast<int64_t>(e.ids.size()));
    for (const auto& row : data::pack_greedy(lengths, cfg_.max_len)) items.emplace_back(row.begin(), row.end());
    return items;
  }

  // What must not change between a run and its resumption.
  nlohmann::ordered_json settings_json() const {
    nlohmann::ordered_json j;
    j["lr"] = cfg_.adamw.lr;
    j["betas"] = {cfg_.adamw.beta1, cfg_.adamw.beta2};
    j["eps"] = cfg_.adamw.eps;
    j["weight_decay"] = cfg_.adamw.weight_decay;
    j["schedule"] = static_cast<int>(cfg_.schedule);
    j["warmup_steps"] = cfg_.warmup_steps;
    j["max_grad_norm"] = cfg_.max_grad_norm;
    j["micro_batch"] = cfg_.micro_batch;
    j["grad_accum"] = cfg_.grad_accum;
    j["total_steps"] = total_steps_;
    j["packing"] = cfg_.packing;
    j["max_len"] = cfg_.max_len;
    j["seed"] = cfg_.seed;
    j["shuffle"] = cfg_.shuffle;
    j["examples"] = ex_.size();
    uint64_t h = 1469598103934665603ull;  // FNV-1a over every example's ids and labels
    for (const auto& e : ex_) {
      for (int32_t v : e.ids) h = (h ^ static_cast<uint32_t>(v)) * 1099511628211ull;
      h = (h ^ 0xFFFFFFFFull) * 1099511628211ull;
      for (int32_t v : e.labels) h = (h ^ static_cast<uint32_t>(v)) * 1099511628211ull;
    }
    j["data_hash"] = std::to_string(h);
    j["lora_r"] = lora_.r;
    j["lora_alpha"] = lora_.alpha;
    if (distilling()) {  // absent for plain SFT, so earlier checkpoints still resume
      j["distill"] = {distill_target_name(distill_.target),
                      kd_divergence_name(distill_.kd.div),
                      distill_.kd.beta,
                      distill_.kd.temperature,
                      distill_.ce_weight,
                      distill_.kd_weight,
                      distill_.topk,
                      distill_.vocab_limit};
      for (const auto& [sl, tl] : distill_.layer_map) j["distill_layers"].push_back({sl, tl});
    }
    j["lora_dropout"] = lora_.dropout;
    j["rslora"] = lora_.rslora;
    if (cfg_.world > 1) j["data_parallel_world"] = cfg_.world;  // absent for one process (older checkpoints)
    return j;
  }

  Model& model_;
  nn::LoraConfig lora_;
  std::vector<data::SftExample> ex_;
  TrainerConfig cfg_;
  std::unique_ptr<AdamW<D>> opt_;
  std::vector<std::vector<int64_t>> items_;  // pack_items()
  int64_t items_per_epoch_ = 0, steps_per_epoch_ = 0, total_steps_ = 0, step_ = 0;
  std::vector<StepLog> history_;
  DistillConfig distill_;
  std::map<int64_t, FeatureProjection> projections_;  // feature distillation, by student layer
};

}  // namespace distill::train
