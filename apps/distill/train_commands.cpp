// The train, quantize and merge subcommands (declared in train_commands.hpp).
#include "train_commands.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include <sys/resource.h>

#include "distill/data/jsonl.hpp"
#include "distill/io/hf_hub.hpp"
#include "distill/models/export.hpp"
#include "distill/text/chat.hpp"
#include "distill/train/plot.hpp"
#include "distill/train/trainer.hpp"
#include "distill_teacher.hpp"
#include "mpi_env.hpp"
#include "progress.hpp"

namespace distill::app {

namespace detail {

// The process's peak resident memory so far, in MiB (getrusage; Linux reports KiB).
inline double peak_rss_mb() {
  struct rusage u {};
  if (::getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// The examples of a JSONL file, one per line: {"messages": [...]} or GSM8K's {"question", "answer"} (a user
// turn, then the assistant's), rendered with the model's chat template and labelled on assistant tokens; or
// pre-tokenized {"ids": [...], "labels": [...]} (labels optional: then every token is trained).
// texts (when given) receives each record's id and conversation, and the teacher's own version of it: a
// question/answer record with a "response" (the teacher's full response, e.g. with its thinking, as gsm8k_distill
// writes it beside the answer the student learns) gives the teacher that response.
inline std::vector<data::SftExample> read_examples(const std::string& path, const std::string& model_dir,
                                                   int64_t max_len, int64_t limit,
                                                   std::vector<ExampleText>* texts = nullptr) {
  data::JsonlReader r(path);
  std::vector<data::SftExample> out;
  std::optional<text::Tokenizer> tok;
  std::optional<text::ChatFormat> fmt;
  nlohmann::json j;
  auto ids_of = [&](const nlohmann::json& a, const std::string& where, const char* key) {
    if (!a.is_array() || a.empty()) throw Error(where + ": \"" + key + "\" must be a non-empty array of integers");
    std::vector<int32_t> v;
    for (const auto& x : a) {
      if (!x.is_number_integer() || x.get<int64_t>() < -100 || x.get<int64_t>() > INT32_MAX)
        throw Error(where + ": \"" + key + "\" holds " + x.dump() + ", not a token id");
      v.push_back(x.get<int32_t>());
    }
    return v;
  };
  while ((limit <= 0 || static_cast<int64_t>(out.size()) < limit) && r.next(j)) {
    const std::string where = path + ":" + std::to_string(out.size() + 1);
    if (j.contains("ids")) {
      data::SftExample e;
      e.ids = ids_of(j["ids"], where, "ids");
      e.labels = j.contains("labels") ? ids_of(j["labels"], where, "labels") : e.ids;
      if (e.labels.size() != e.ids.size()) throw Error(where + ": \"labels\" and \"ids\" differ in length");
      if (max_len > 0 && static_cast<int64_t>(e.ids.size()) > max_len) {
        e.ids.resize(static_cast<size_t>(max_len));
        e.labels.resize(static_cast<size_t>(max_len));
      }
      out.push_back(std::move(e));
      if (texts)
        texts->push_back({j.contains("id") && j["id"].is_string() ? j["id"].get<std::string>() : where, {}, {}});
      continue;
    }
    std::vector<text::Message> chat, teacher_chat;
    if (j.contains("messages")) {
      chat = text::messages_from_json(j.at("messages"), where);
    } else if (j.contains("question") && j.contains("answer") && j["question"].is_string() && j["answer"].is_string()) {
      chat = {text::Message{"user", j["question"].get<std::string>()},
              text::Message{"assistant", j["answer"].get<std::string>()}};
      if (j.contains("response") && j["response"].is_string())
        teacher_chat = {chat[0], text::Message{"assistant", j["response"].get<std::string>()}};
    } else {
      throw Error(where + ": expected {\"messages\": [...]}, {\"question\", \"answer\"} or {\"ids\", \"labels\"}");
    }
    if (!tok) {
      tok = text::Tokenizer::from_file(model_dir);
      fmt = text::detect_chat_format(model_dir);
    }
    out.push_back(data::build_sft_example(*tok, *fmt, chat, max_len));
    if (texts) {
      const std::string id = j.contains("id") && j["id"].is_string() ? j["id"].get<std::string>() : where;
      texts->push_back({id, chat, teacher_chat.empty() ? chat : teacher_chat});
    }
  }
  if (out.empty()) throw Error(path + ": no records");
  return out;
}

}  // namespace detail

void run_train(const TrainCmd& o, std::ostream& log, std::ostream& err) {
  set_max_threads(o.threads);
  DISTILL_CHECK(!o.out.empty(), "train: --out DIR is required");
  detail::with_model_type(o, [&]<models::TransformerSpec Spec, class T>() {
    models::LoadOptions lo;
    lo.quantize = o.quantize;
    DISTILL_CHECK(o.quant_type == "nf4" || o.quant_type == "fp4", "--quant-type must be nf4 or fp4");
    lo.qtype = o.quant_type == "nf4" ? quant::QuantType::Nf4 : quant::QuantType::Fp4;
    auto model = models::Transformer<Spec, T>::load(o.model, "model", lo);

    std::vector<ExampleText> texts;
    std::vector<data::SftExample> ex = detail::read_examples(o.data, o.model, o.max_len, o.limit, &texts);

    nn::LoraConfig lc;
    lc.r = o.lora_r;
    lc.alpha = o.lora_alpha;
    lc.dropout = o.lora_dropout;
    lc.rslora = o.rslora;
    if (!o.targets.empty()) lc.targets = o.targets;
    lc.seed = o.seed;
    if (!o.adapter.empty())
      lc = models::load_peft_adapter(model, o.adapter);  // continue training a given adapter
    else
      models::attach_lora(model, lc);

    train::TrainerConfig tc;
    tc.adamw = {o.lr, 0.9, 0.999, 1e-8, o.weight_decay};
    tc.schedule = parse_lr_schedule(o.schedule);
    tc.warmup_steps = o.warmup_steps;
    tc.max_grad_norm = o.max_grad_norm;
    tc.micro_batch = o.batch_size;
    tc.grad_accum = o.grad_accum;
    tc.epochs = o.epochs;
    tc.max_steps = o.max_steps;
    tc.packing = o.packing;
    tc.max_len = o.max_len;
    tc.pad_id = 0;
    tc.checkpoint_blocks = o.grad_checkpoint;
    tc.seed = o.seed;
    tc.shuffle = !o.no_shuffle;
    tc.save_every = o.save_every;
    tc.out_dir = o.out;
    tc.base_model = o.model;
    // Under mpirun -np N: data parallel, LoRA gradients summed over the processes (rank 0 writes the files).
    const mpi::World mw = mpi::world();
    tc.rank = mw.rank;
    tc.world = mw.size;
    if (mw.size > 1) {
      tc.allreduce_f32 = [](std::span<float> v) { mpi::allreduce_sum(v); };
      tc.allreduce_f64 = [](std::span<double> v) { mpi::allreduce_sum(v); };
    }
    const bool lead = mw.rank == 0;
    if (const char* k = std::getenv("DISTILL_TEST_KILL_AT")) {  // tests: die mid-run, like kill -9
      const std::string at = k;
      tc.fault = [at](const std::string& stage) {
        if (stage == at) std::_Exit(86);
      };
    }
    const bool distilling = o.mode != "sft";
    std::optional<train::DistillConfig> dc;
    if (distilling)
      dc =
          make_distillation(o, {o.model, model.dims().vocab, model.dims().hidden, model.dims().layers}, ex, texts, err);
    train::SftTrainer<Spec, T> tr(model, lc, std::move(ex), tc);
    if (dc) tr.set_distillation(std::move(*dc));
    int64_t from = 0;
    if (o.resume) {
      from = tr.resume();
      if (lead)
        err << (from ? "[distill] resumed from " + train::latest_checkpoint(o.out) + "\n"
                     : std::string("[distill] no checkpoint to resume from; starting at step 0\n"));
    } else {
      DISTILL_CHECK(train::latest_checkpoint(o.out).empty(), o.out,
                    " already holds checkpoints; pass --resume to continue that run or choose another --out");
    }
    if (lead)
      err << "[distill] " << models::family_name(Spec.family) << (o.quantize ? " NF4" : "") << " + LoRA r=" << lc.r
          << ": " << models::lora_parameters(model).size() << " adapter tensors, " << tr.steps_per_epoch()
          << " steps/epoch, " << tr.total_steps() << " steps"
          << (mw.size > 1 ? ", data parallel over " + std::to_string(mw.size) + " processes" : std::string()) << "\n";
    if (!lead) {  // the other ranks train in step with rank 0 and write nothing
      tr.train();
      return;
    }
    // The log keeps the steps the run now continues from (a killed run may have logged steps past its last
    // checkpoint; they are done again).
    std::filesystem::create_directories(o.out);
    const std::filesystem::path log_path = std::filesystem::path(o.out) / "train_log.jsonl";
    if (std::filesystem::exists(log_path)) {
      std::string kept;
      data::JsonlReader r(log_path.string());
      std::string_view line;
      while (r.next_line(line)) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.is_object() && j.value("step", int64_t{0}) <= from)
          kept.append(line).push_back('\n');
      }
      io::atomic_write(log_path.string(), kept);
    }
    ProgressBar bar(err, tr.total_steps(), !o.quiet);
    bar.set_start(from);
    data::JsonlWriter logw(log_path.string(), /*append=*/true);
    // The curves beside the log (OUT/train_curves.svg), redrawn about 100 times over the run and at its end.
    const std::string curves = (std::filesystem::path(o.out) / "train_curves.svg").string();
    const std::string curves_title = "distill train: " + o.model + " (LoRA r=" + std::to_string(lc.r) + ")";
    const int64_t plot_every = std::max<int64_t>(1, tr.total_steps() / 100);
    tr.train([&](const train::StepLog& l) {
      nlohmann::json j{{"step", l.step},
                       {"epoch", l.epoch},
                       {"loss", l.loss},
                       {"grad_norm", l.grad_norm},
                       {"lr", l.lr},
                       {"tokens", l.tokens},
                       {"seq_tokens", l.seq_tokens},
                       {"seconds", l.seconds},
                       {"tokens_per_second", static_cast<double>(l.seq_tokens) / std::max(l.seconds, 1e-9)},
                       {"peak_rss_mb", detail::peak_rss_mb()}};
      if (distilling) {  // the two components, unweighted; kd_loss is the mode's (kl, rkl, jsd, uld, feature)
        j["mode"] = o.mode;
        j["ce_loss"] = l.ce_loss;
        j["kd_loss"] = l.kd_loss;
      }
      logw.write(j);
      log << j.dump() << '\n' << std::flush;
      char f[160];
      std::snprintf(f, sizeof f, "loss %.4f lr %.2e gnorm %.3f %.0f tok/s", l.loss, l.lr, l.grad_norm,
                    static_cast<double>(l.seq_tokens) / std::max(l.seconds, 1e-9));
      bar.update(l.step, f);
      if (l.step % plot_every == 0) train::write_training_curves(tr.history(), curves, curves_title);
    });
    train::write_training_curves(tr.history(), curves, curves_title);
    const std::string fin = (std::filesystem::path(o.out) / "adapter").string();
    models::save_peft_adapter(model, lc, fin, o.model);
    if (!tr.feature_projections().empty())  // feature distillation: its projections beside the adapter
      train::save_projections(tr.feature_projections(),
                              (std::filesystem::path(fin) / train::SftTrainer<Spec, T>::kProjectionsFile).string());
    err << "[distill] adapter written to " << fin << "\n";
  });
}

void run_quantize(const QuantizeCmd& o, std::ostream& err) {
  models::QuantizeOptions q;
  DISTILL_CHECK(o.quant_type == "nf4" || o.quant_type == "fp4", "--quant-type must be nf4 or fp4");
  q.qtype = o.quant_type == "nf4" ? quant::QuantType::Nf4 : quant::QuantType::Fp4;
  q.blocksize = o.blocksize;
  q.double_quant = !o.no_double_quant;
  const int64_t n = models::quantize_checkpoint(o.model, o.out, q);
  err << "[distill] " << n << " projections quantized to " << o.quant_type << (q.double_quant ? " (double quant)" : "")
      << " -> " << o.out << "\n";
}

void run_merge(const MergeCmd& o, std::ostream& err) {
  ModelOptions mo;
  mo.model = o.model;
  mo.adapter = o.adapter;
  detail::with_model_type(mo, [&]<models::TransformerSpec Spec, class T>() {
    const auto model = detail::load_model<Spec, T>(mo);
    models::export_merged(model, o.model, o.out);
  });
  err << "[distill] merged " << o.adapter << " into " << o.model << " -> " << o.out << " (bf16)\n";
}

}  // namespace distill::app
