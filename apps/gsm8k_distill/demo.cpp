// `gsm8k_distill demo`: the whole loop on two tiny models, on the CPU, with no downloads (pipeline.hpp).
//   teacher traces on synthetic problems -> rejection filter -> NF4 + LoRA distillation of the student (4 epochs)
//   -> held-out accuracy before and after, and one question answered by both.
// Each stage is the subcommand of the same name, run in-process on files under --work; a killed demo continues
// where it stopped when run again (--fresh starts over).
#include <chrono>
#include <filesystem>
#include <sstream>

#include "demo_data.hpp"
#include "distill/io/file.hpp"
#include "distill/train/trainer.hpp"
#include "pipeline.hpp"

#ifndef DISTILL_DEMO_MODELS_DIR
#define DISTILL_DEMO_MODELS_DIR ""
#endif

namespace distill::gsm8k_app {

namespace fs = std::filesystem;

namespace {

std::string default_models_dir() {
  if (const char* e = std::getenv("DISTILL_DEMO_MODELS"); e && *e) return e;
  return DISTILL_DEMO_MODELS_DIR;
}

void write_questions(const std::string& path, const std::vector<data::SyntheticProblem>& ps) {
  std::string s;
  for (const auto& p : ps) s += nlohmann::json{{"question", p.question}, {"answer", p.answer}}.dump() + "\n";
  io::atomic_write(path, s);
}

std::string minsec(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return b;
}

// The first held-out question and the student's answers to it, before and after (from the eval records).
void show_example(const std::string& before_jsonl, const std::string& after_jsonl, std::ostream& out) {
  nlohmann::json a, b;
  data::JsonlReader ra(before_jsonl), rb(after_jsonl);
  std::map<std::string, nlohmann::json> after;
  while (rb.next(b)) after[b.value("id", "")] = b;
  // Prefer a question the distilled student gets right and the base student gets wrong.
  nlohmann::json pick_a, pick_b;
  while (ra.next(a)) {
    const auto it = after.find(a.value("id", ""));
    if (it == after.end()) continue;
    if (pick_a.is_null()) pick_a = a, pick_b = it->second;
    if (!a.value("strict_correct", false) && it->second.value("strict_correct", false)) {
      pick_a = a, pick_b = it->second;
      break;
    }
  }
  if (pick_a.is_null()) return;
  out << "\nQ: " << pick_a.value("question", "") << "  (gold: " << pick_a.value("gold", "") << ")\n\n";
  print_side_by_side("student before", pick_a.value("response", ""), "student after distillation",
                     pick_b.value("response", ""), 110, out);
}

}  // namespace

std::vector<DemoResult> run_demo(const DemoOpts& o, std::ostream& out, std::ostream& err) {
  if (!o.write_corpus.empty()) {
    write_demo_corpus(o.write_corpus, 30000, 40000, 300);
    out << "wrote teacher.jsonl, student.jsonl and eval.jsonl to " << o.write_corpus
        << "; make the models with tools/demo/make_demo_models.py " << o.write_corpus << " OUT\n";
    return {};
  }
  const std::string models = o.models.empty() ? default_models_dir() : o.models;
  const std::string teacher = (fs::path(models) / "teacher").string(),
                    student = (fs::path(models) / "student").string();
  for (const auto& d : {teacher, student})
    DISTILL_CHECK(fs::is_regular_file(fs::path(d) / "config.json"), "demo: no model in ", d,
                  " (pass --models DIR holding teacher/ and student/, as made by tools/demo/make_demo_models.py)");
  if (o.fresh && fs::exists(o.work)) fs::remove_all(o.work);
  std::vector<DemoResult> results;
  std::ostringstream sink;
  std::ostream& log = o.quiet ? static_cast<std::ostream&>(sink) : err;
  std::string example_before, example_after;
  for (const uint64_t seed : o.seeds) {
    const auto t0 = std::chrono::steady_clock::now();
    const fs::path w = fs::path(o.work) / ("seed-" + std::to_string(seed));
    fs::create_directories(w);
    log << "== demo seed " << seed << ": " << o.train_questions << " training questions, " << o.eval_questions
        << " held-out, work dir " << w.string() << "\n";
    const std::string qfile = (w / "questions.jsonl").string(), efile = (w / "heldout.jsonl").string();
    write_questions(qfile, demo_problems(distill_stream_seed(seed), o.train_questions, false));
    write_questions(efile, demo_problems(eval_stream_seed(seed), o.eval_questions, true));

    // 1. The teacher's traces, filtered.
    GenerateOpts g;
    g.teacher = teacher;
    g.data = qfile;
    g.out = (w / "traces.jsonl").string();
    g.batch_size = o.gen_batch;
    g.max_new_tokens = 160;
    g.greedy = true;
    g.threads = o.threads;
    g.quiet = o.quiet;
    const GenerateSummary gs = run_generate(g, log);

    // 2. The student learns from them: NF4 base + LoRA on all seven projections, once per mode.
    std::vector<std::string> adapters;
    std::vector<double> train_seconds;
    for (const std::string& mode : o.modes) {
      TrainOpts t;
      t.model = student;
      t.traces = {accepted_path(g.out)};
      t.out = (w / (mode == "sft" ? std::string("train") : "train-" + mode)).string();
      t.quantize = true;
      t.lora_r = o.lora_r;
      t.lora_alpha = o.lora_alpha;
      t.lr = o.lr;
      t.schedule = "linear";
      t.warmup_steps = 10;
      t.epochs = o.epochs;
      t.batch_size = o.batch_size;
      t.grad_accum = o.grad_accum;
      t.max_len = 256;
      t.seed = seed;
      t.threads = o.threads;
      t.quiet = o.quiet;
      t.mode = mode;
      if (mode != "sft") t.teacher = teacher;
      const std::string adapter = (fs::path(t.out) / "adapter").string();
      const std::string timing = (fs::path(t.out) / "demo_train_seconds.txt").string();
      if (!fs::is_regular_file(fs::path(adapter) / "adapter_config.json")) {
        log << "== " << mode << ": training the student\n";
        const auto t1 = std::chrono::steady_clock::now();
        t.resume = !train::latest_checkpoint(t.out).empty();
        run_gsm8k_train(t, sink, log);
        io::atomic_write(timing,
                         std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count()));
      }
      double secs = 0;
      if (fs::is_regular_file(timing)) secs = std::stod(io::read_file(timing));
      adapters.push_back(adapter);
      train_seconds.push_back(secs);
    }

    // 3. Held-out accuracy of the NF4 student before and after (each mode).
    EvalOpts e;
    e.model = student;
    e.adapters = {"none"};
    e.labels = {"student-before"};
    for (size_t m = 0; m < o.modes.size(); ++m) {
      e.adapters.push_back(adapters[m]);
      e.labels.push_back(o.modes[m] == "sft" ? std::string("student-after") : "student-" + o.modes[m]);
    }
    e.data = efile;
    e.out = (w / "eval").string();
    e.load_in_4bit = true;
    e.batch_size = 50;
    e.max_new_tokens = 160;
    e.threads = o.threads;
    e.quiet = o.quiet;
    std::ostringstream table;
    const auto rows = run_eval(e, table, log);
    log << table.str();

    for (size_t m = 0; m < o.modes.size(); ++m) {
      DemoResult r;
      r.seed = seed;
      r.mode = o.modes[m];
      r.traces = gs.total;
      r.accepted = gs.accepted;
      r.teacher = gs.total ? static_cast<double>(gs.accepted) / static_cast<double>(gs.total) : 0;
      r.before = rows.front().score.strict_accuracy();
      r.after = rows[m + 1].score.strict_accuracy();
      r.train_seconds = train_seconds[m];
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      results.push_back(r);
    }
    if (example_before.empty()) {
      example_before = (fs::path(e.out) / (rows.front().label + ".jsonl")).string();
      example_after = (fs::path(e.out) / (rows[1].label + ".jsonl")).string();
    }
  }

  if (o.modes.size() > 1 || o.modes.front() != "sft") {
    out << "\nDistill demo: a tiny Qwen3 teacher -> a tiny Gemma3 student (another tokenizer; NF4 + LoRA r=" << o.lora_r
        << ", " << o.epochs << " epochs) by each distillation mode, accuracy on " << o.eval_questions
        << " held-out problems (strict match)\n\n";
    char line[256];
    std::snprintf(line, sizeof line, "%-6s %-8s %15s %14s %8s %11s\n", "seed", "mode", "student before",
                  "student after", "gain", "train time");
    out << line;
    for (const auto& r : results) {
      std::snprintf(line, sizeof line, "%-6llu %-8s %14.1f%% %13.1f%% %+7.1f %11s\n",
                    static_cast<unsigned long long>(r.seed), r.mode.c_str(), 100 * r.before, 100 * r.after,
                    100 * (r.after - r.before), minsec(r.train_seconds).c_str());
      out << line;
    }
    out << "modes: sft = the teacher's text only; kl, jsd = + its next-token distribution over the shared "
           "vocabulary; uld = + its sorted distribution; feature = + its hidden states (train --mode)\n";
    return results;
  }
  out << "\nDistill demo: a tiny Qwen3 teacher's step-by-step traces -> a tiny Gemma3 student (NF4 + LoRA r="
      << o.lora_r << ", " << o.epochs << " epochs), accuracy on " << o.eval_questions
      << " held-out problems (strict match)\n\n";
  char line[256];
  std::snprintf(line, sizeof line, "%-6s %9s %16s %15s %14s %8s %9s\n", "seed", "teacher*", "traces accepted",
                "student before", "student after", "gain", "time");
  out << line;
  for (const auto& r : results) {
    std::snprintf(line, sizeof line, "%-6llu %8.1f%% %9lld/%-6lld %14.1f%% %13.1f%% %+7.1f %9s\n",
                  static_cast<unsigned long long>(r.seed), 100 * r.teacher, static_cast<long long>(r.accepted),
                  static_cast<long long>(r.traces), 100 * r.before, 100 * r.after, 100 * (r.after - r.before),
                  minsec(r.seconds).c_str());
    out << line;
  }
  out << "* the teacher's traces that were correct and complete (the rejection filter kept these)\n";
  if (!example_before.empty()) show_example(example_before, example_after, out);
  return results;
}

}  // namespace distill::gsm8k_app
