// The gsm8k_distill subcommands: generate (teacher traces), train (the student on accepted traces), eval (GSM8K
// accuracy), ask (one question, base vs distilled) and demo (the whole loop on tiny models, on the CPU).
#pragma once
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "distill/data/gsm8k.hpp"
#include "train_commands.hpp"  // distill::app::TrainCmd, run_train (shared with the distill tool)

namespace distill::gsm8k_app {

// The reference recipe's models (hub ids, found in the local Hugging Face cache).
inline constexpr const char* kTeacher = "Qwen/Qwen3-4B-Thinking-2507";
inline constexpr const char* kStudent = "google/gemma-3-1b-it";

// Where a record of a data set came from: ids are "<file stem>-<line>" (1-based, 5 digits), stable across runs.
struct Question {
  std::string id, question, answer;
};

// The question/answer records of a JSONL file (GSM8K's format; other keys ignored). A malformed line is reported on
// `err` with its line number and skipped, or is fatal when strict. No records at all is an error.
std::vector<Question> load_questions(const std::string& path, bool strict, std::ostream& err);

// This process's shard under mpirun (OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE, or the flags), as rank/world.
struct Shard {
  int rank = 0, world = 1;
  static Shard from_env(int rank_flag, int world_flag);
  std::string suffix() const;  // "" or ".rank1-of-2"
};

struct GenerateOpts {
  std::string teacher = kTeacher;
  std::string data;                  // JSONL with question/answer (GSM8K train.jsonl)
  std::string out = "traces.jsonl";  // every record; the accepted ones also go to <stem>.accepted.jsonl
  std::string dtype = "f32";
  std::string device = "cpu";  // cpu, cuda, cuda:N (the teacher's device)
  std::string system;
  int64_t limit = 0;  // first N questions only
  int64_t batch_size = 16;
  int64_t max_new_tokens = 4096;
  int64_t save_logits = 0;  // K > 0: the teacher's top-K log-probs per generated position in <stem>.topk.bin
  bool greedy = false;      // default: the teacher's generation_config.json sampling
  std::optional<double> temperature;
  uint64_t seed = 0;
  bool strict = false;
  int rank = -1, world = -1;
  int threads = 0;
  bool quiet = false;
};

struct GenerateSummary {
  int64_t total = 0, done_before = 0, generated = 0, accepted = 0, records = 0;
  double seconds = 0, tokens_per_second = 0;
};
GenerateSummary run_generate(const GenerateOpts& o, std::ostream& err);

// Rebuilds <traces stem>.accepted.jsonl from a traces file: the rejection filter (complete, correct), the student's
// text (thinking tags removed, final line "#### N"), {"id", "question", "answer"} per accepted record. Returns the
// number accepted; a summary of the reasons for rejection goes to err. Nothing accepted is an error.
int64_t write_accepted(const std::string& traces, const std::string& accepted, bool strict, std::ostream& err);
std::string accepted_path(const std::string& traces);
std::string topk_path(const std::string& traces);  // <stem>.topk.bin (generate --save-logits)

struct TrainOpts : app::TrainCmd {
  std::vector<std::string> traces;  // trace files (generate's output, any shards) or accepted files
  bool strict = false;
};
void run_gsm8k_train(TrainOpts o, std::ostream& log, std::ostream& err);

struct EvalOpts {
  std::string model = kStudent;
  std::vector<std::string> adapters;  // "none" (or "") is the base model; two: a before/after table
  std::vector<std::string> labels;    // names for the rows and files (default: "base", or from the adapter path)
  std::string data;                   // GSM8K test.jsonl
  std::string out = "eval";           // OUT/<label>.jsonl per example, OUT/<label>.json summary
  std::string dtype = "f32";
  std::string device = "cpu";
  std::string system;
  bool load_in_4bit = false;
  int64_t limit = 0;
  int64_t batch_size = 16;
  int64_t max_new_tokens = 1024;
  bool strict = false;
  int threads = 0;
  bool quiet = false;
};

struct EvalSummary {
  std::string label;
  data::Gsm8kScore score;
  double seconds = 0;
  int64_t new_tokens = 0;
};
std::vector<EvalSummary> run_eval(const EvalOpts& o, std::ostream& out, std::ostream& err);
void print_eval_table(const std::vector<EvalSummary>& rows, std::ostream& out);

struct AskOpts {
  std::string model = kStudent;
  std::string adapter;  // the distilled student
  std::string question;
  std::string dtype = "f32";
  std::string device = "cpu";
  bool load_in_4bit = false;
  int64_t max_new_tokens = 1024;
  int width = 0;  // 0: from $COLUMNS, else 100
  int threads = 0;
};
void run_ask(const AskOpts& o, std::ostream& out);
// Two texts in two columns of a `width`-character table, each under its title.
void print_side_by_side(const std::string& left_title, const std::string& left, const std::string& right_title,
                        const std::string& right, int width, std::ostream& out);

struct DemoOpts {
  std::string models;  // the demo models' directory (teacher/, student/); default: the committed ones
  std::string work = "distill_demo";
  std::string write_corpus;  // write the demo models' pretraining corpus here and stop
  std::vector<uint64_t> seeds{1};
  // Distillation modes to compare (train --mode): each trains its own adapter from the same traces; with more than
  // sft, the table has a row per mode.
  std::vector<std::string> modes{"sft"};
  int64_t train_questions = 1200;
  int64_t eval_questions = 200;
  int64_t epochs = 4;
  int64_t batch_size = 4;
  int64_t grad_accum = 1;
  double lr = 2e-3;
  int64_t lora_r = 32;
  double lora_alpha = 32;
  int64_t gen_batch = 64;
  bool fresh = false;  // start over (the default continues a killed run in --work)
  int threads = 0;
  bool quiet = false;
};
struct DemoResult {
  uint64_t seed = 0;
  std::string mode = "sft";
  double before = 0, after = 0, teacher = 0, seconds = 0;
  double train_seconds = 0;  // this mode's training (as measured when it ran, kept beside its adapter)
  int64_t accepted = 0, traces = 0;
};
std::vector<DemoResult> run_demo(const DemoOpts& o, std::ostream& out, std::ostream& err);

}  // namespace distill::gsm8k_app
