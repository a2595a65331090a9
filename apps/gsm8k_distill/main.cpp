// gsm8k_distill — distill mathematical reasoning from a teacher into a QLoRA student (see pipeline.hpp).
//   gsm8k_distill generate --data train.jsonl            teacher traces, filtered (resumable, shards under mpirun)
//   gsm8k_distill train --traces traces.jsonl --out run  NF4 + LoRA student, a checkpoint per epoch (resumable)
//   gsm8k_distill eval --data test.jsonl --adapter none --adapter run/adapter   before/after table
//   gsm8k_distill ask --adapter run/adapter "question"   base vs distilled, side by side
//   gsm8k_distill demo                                   all of it on tiny models, on the CPU, in minutes
// Defaults reproduce the reference recipe (Qwen3-4B-Thinking-2507 -> gemma-3-1b-it, NF4 + LoRA r=32/alpha=32 on
// all seven projections, lr 2e-4 linear with warmup, 4 epochs, a checkpoint per epoch). `--config FILE` reads
// options from a TOML/INI file (one [section] per subcommand). Errors: one line on stderr, exit status 1.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "distill_options.hpp"
#include "pipeline.hpp"
#include "runner.hpp"

namespace {

std::string model_help(const char* role, const char* def) {
  return std::string(role) +
         ": a checkpoint directory, or a hub id found in the local Hugging Face cache ($HF_HOME, "
         "~/.cache/huggingface/hub); default " +
         def;
}

constexpr const char* kDeviceHelp =
    "cpu, cuda or cuda:N. On a GPU the model runs in bf16 (--dtype bf16) and the KV cache is sized from free "
    "memory (fewer rows than --batch-size when they do not fit)";
const CLI::Validator kDevice(
    [](std::string& v) -> std::string {
      try {
        distill::gsm8k_app::parse_device(v);
        return {};
      } catch (const std::exception& e) {
        return e.what();
      }
    },
    "DEVICE");

}  // namespace

int main(int argc, char** argv) {
  using namespace distill::gsm8k_app;
  CLI::App app{
      "gsm8k_distill: distill GSM8K reasoning from a teacher (Qwen3-4B-Thinking-2507) into a 4-bit LoRA student "
      "(gemma-3-1b-it). Start with `gsm8k_distill demo`: the whole loop on tiny models, on the CPU, in minutes."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "gsm8k_distill 0.1.0");
  app.set_config("--config", "", "Read options from a TOML/INI file ([generate], [train], [eval], [ask], [demo])");

  GenerateOpts g;
  auto* gen = app.add_subcommand(
      "generate",
      "The teacher answers questions in batches; every record streams to --out (JSONL), the accepted ones (correct, "
      "complete, ending in '#### N') to <out stem>.accepted.jsonl. Resumable; shards across processes under mpirun");
  gen->add_option("--teacher,-m", g.teacher, model_help("Teacher", kTeacher))->capture_default_str();
  gen->add_option("--data,-d", g.data, "JSONL with {\"question\", \"answer\"} per line (GSM8K's train.jsonl)")
      ->required();
  gen->add_option("--out,-o", g.out, "Trace records (JSONL)")->capture_default_str();
  gen->add_option("--limit", g.limit, "Only the first N questions (0: all)");
  gen->add_option("--batch-size,-b", g.batch_size,
                  "Sequences decoded together (continuous batching: a finished one makes room for the next question)")
      ->capture_default_str();
  gen->add_option("--max-new-tokens,-n", g.max_new_tokens, "Longest trace; longer ones are truncated and rejected")
      ->capture_default_str();
  gen->add_option("--save-logits", g.save_logits,
                  "Keep the teacher's top-K log-probs (and the mass left) at every generated position in "
                  "<out stem>.topk.bin, for logit distillation without the teacher in memory (0: off)")
      ->capture_default_str();
  gen->add_flag("--greedy", g.greedy, "Greedy decoding instead of the teacher's generation_config.json sampling");
  gen->add_option("--temperature", g.temperature, "Sample at this temperature");
  gen->add_option("--seed", g.seed, "Sampling seed (a question's seed does not depend on its batch)");
  gen->add_option("--system", g.system, "A system message before each question");
  gen->add_option("--dtype", g.dtype, "Compute dtype: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  gen->add_option("--device,--teacher-device", g.device, kDeviceHelp)->check(kDevice)->capture_default_str();
  gen->add_flag("--strict", g.strict,
                "A malformed input line is fatal (default: reported with its line number, skipped)");
  gen->add_option("--rank", g.rank, "This process's shard (default: from mpirun's environment, else 0)");
  gen->add_option("--world", g.world, "Number of shards (default: from mpirun's environment, else 1)");
  gen->add_option("--threads,-j", g.threads, "CPU threads (0: all cores)");
  gen->add_flag("--quiet,-q", g.quiet, "No progress bar");

  TrainOpts t;
  t.model = kStudent;
  t.lora_r = 32;
  t.lora_alpha = 32;
  t.lr = 2e-4;
  t.warmup_steps = 5;
  t.epochs = 4;
  t.quantize = true;
  auto* tr = app.add_subcommand(
      "train",
      "The student learns the accepted traces in its own chat template (loss on its answer turn): NF4 base + LoRA, a "
      "PEFT checkpoint per epoch under --out, metrics in OUT/train_log.jsonl and a plot in OUT/train_curves.svg");
  tr->add_option("--student,--model,-m", t.model, model_help("Student", kStudent))->capture_default_str();
  tr->add_option("--traces,-d", t.traces,
                 "Trace files from generate (any shards; filtered here) or accepted files (default: traces.jsonl)");
  tr->add_option("--out,-o", t.out, "Output directory")->required();
  tr->add_flag("--resume", t.resume, "Continue from the newest complete checkpoint in --out");
  tr->add_option("--epochs", t.epochs, "Epochs")->capture_default_str();
  tr->add_option("--max-steps", t.max_steps, "Stop after this many optimizer steps (0: epochs decide)");
  tr->add_option("--lr", t.lr, "Peak learning rate")->capture_default_str();
  tr->add_option("--schedule", t.schedule, "linear, cosine or constant (after warmup)")->capture_default_str();
  tr->add_option("--warmup-steps", t.warmup_steps, "Warmup steps")->capture_default_str();
  tr->add_option("--weight-decay", t.weight_decay, "AdamW weight decay")->capture_default_str();
  tr->add_option("--max-grad-norm", t.max_grad_norm, "Clip the gradient norm (<= 0: off)")->capture_default_str();
  tr->add_option("--batch-size,-b", t.batch_size, "Examples per micro-batch")->capture_default_str();
  tr->add_option("--grad-accum", t.grad_accum, "Micro-batches per optimizer step")->capture_default_str();
  tr->add_option("--max-len", t.max_len, "Longest example in tokens (longer ones are cut)")->capture_default_str();
  tr->add_option("--lora-r,-r", t.lora_r, "LoRA rank")->capture_default_str();
  tr->add_option("--lora-alpha", t.lora_alpha, "LoRA alpha")->capture_default_str();
  tr->add_option("--lora-dropout", t.lora_dropout, "LoRA dropout")->capture_default_str();
  tr->add_option("--target", t.targets, "Target modules (default: all seven projections)");
  tr->add_flag("--no-quantize{false}", t.quantize, "LoRA on the dense base instead of NF4 (QLoRA)");
  tr->add_flag("--packing", t.packing, "Pack several examples per row");
  distill::app::add_distillation_options(tr, t);
  tr->add_flag("--grad-checkpoint", t.grad_checkpoint, "Activation checkpointing per block");
  tr->add_option("--save-every", t.save_every, "Also checkpoint every N steps (0: per epoch and at the end)");
  tr->add_option("--seed", t.seed, "Seed (LoRA init, shuffle, dropout)")->capture_default_str();
  tr->add_option("--dtype", t.dtype, "Compute dtype: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  tr->add_flag("--strict", t.strict,
               "A malformed trace line is fatal (default: reported with its line number, skipped)");
  tr->add_option("--threads,-j", t.threads, "CPU threads (0: all cores)");
  tr->add_flag("--quiet,-q", t.quiet, "No progress bar");

  EvalOpts e;
  auto* ev = app.add_subcommand(
      "eval",
      "GSM8K accuracy (lm-eval's strict and flexible match, truncation rate) of the student, with or without "
      "adapters; per-example JSONL and a summary per model under --out; a before/after table when given two");
  ev->add_option("--model,-m", e.model, model_help("Base model", kStudent))->capture_default_str();
  ev->add_option("--adapter,-a", e.adapters, "A PEFT adapter to evaluate; 'none' is the base model; repeat to compare");
  ev->add_option("--label", e.labels, "A name per --adapter for the table and the files (default: from the path)");
  ev->add_option("--data,-d", e.data, "JSONL with {\"question\", \"answer\"} (GSM8K's test.jsonl)")->required();
  ev->add_option("--out,-o", e.out, "Output directory")->capture_default_str();
  ev->add_option("--limit", e.limit, "Only the first N questions (0: all)");
  ev->add_option("--batch-size,-b", e.batch_size, "Sequences decoded together (continuous batching)")
      ->capture_default_str();
  ev->add_option("--max-new-tokens,-n", e.max_new_tokens, "Longest answer")->capture_default_str();
  ev->add_flag("--load-in-4bit", e.load_in_4bit, "Quantize the base to NF4 on load (as the QLoRA student trains)");
  ev->add_option("--system", e.system, "A system message before each question");
  ev->add_option("--dtype", e.dtype, "Compute dtype: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  ev->add_option("--device,--student-device", e.device, kDeviceHelp)->check(kDevice)->capture_default_str();
  ev->add_flag("--strict", e.strict, "A malformed input line is fatal");
  ev->add_option("--threads,-j", e.threads, "CPU threads (0: all cores)");
  ev->add_flag("--quiet,-q", e.quiet, "No progress bar");

  AskOpts a;
  auto* ask =
      app.add_subcommand("ask", "One question answered by the base student and the distilled one, side by side");
  ask->add_option("question", a.question, "The question")->required();
  ask->add_option("--model,-m", a.model, model_help("Base model", kStudent))->capture_default_str();
  ask->add_option("--adapter,-a", a.adapter, "The distilled student's adapter (train's OUT/adapter)")->required();
  ask->add_option("--max-new-tokens,-n", a.max_new_tokens, "Longest answer")->capture_default_str();
  ask->add_flag("--load-in-4bit", a.load_in_4bit, "Quantize the base to NF4 on load");
  ask->add_option("--dtype", a.dtype, "Compute dtype: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  ask->add_option("--device,--student-device", a.device, kDeviceHelp)->check(kDevice)->capture_default_str();
  ask->add_option("--width", a.width, "Table width (default: $COLUMNS or 100)");
  ask->add_option("--threads,-j", a.threads, "CPU threads (0: all cores)");

  DemoOpts d;
  auto* demo = app.add_subcommand(
      "demo",
      "The whole loop on two tiny models, on the CPU, no downloads: a Qwen3 teacher's step-by-step traces on "
      "synthetic word problems -> rejection filter -> NF4 + LoRA distillation of a Gemma3 student (its own "
      "tokenizer) -> accuracy on held-out problems before and after");
  demo->add_option("--seeds", d.seeds, "One run per seed (the distillation and held-out problems, LoRA init)")
      ->capture_default_str();
  demo->add_option("--modes,--mode", d.modes,
                   "Distillation modes to compare, each with its own adapter from the same traces: sft, kl, rkl, jsd, "
                   "uld, feature (train --mode); more than sft prints a row per mode")
      ->check(CLI::IsMember({"sft", "kl", "rkl", "jsd", "uld", "feature"}))
      ->delimiter(',')
      ->capture_default_str();
  demo->add_option("--work,-w", d.work, "Working directory (traces, checkpoints, evaluations)")->capture_default_str();
  demo->add_flag("--fresh", d.fresh, "Start over (default: continue a killed run in --work)");
  demo->add_option("--models", d.models, "Directory with teacher/ and student/ (default: the committed demo models)");
  demo->add_option("--train-questions", d.train_questions, "Questions the teacher answers")->capture_default_str();
  demo->add_option("--eval-questions", d.eval_questions, "Held-out questions")->capture_default_str();
  demo->add_option("--epochs", d.epochs, "Distillation epochs")->capture_default_str();
  demo->add_option("--lr", d.lr, "Peak learning rate")->capture_default_str();
  demo->add_option("--batch-size,-b", d.batch_size, "Examples per step")->capture_default_str();
  demo->add_option("--lora-r,-r", d.lora_r, "LoRA rank")->capture_default_str();
  demo->add_option("--lora-alpha", d.lora_alpha, "LoRA alpha")->capture_default_str();
  demo->add_option("--write-corpus", d.write_corpus,
                   "Write the demo models' pretraining corpus to DIR and stop (tools/demo/make_demo_models.py)");
  demo->add_option("--threads,-j", d.threads, "CPU threads (0: all cores)");
  demo->add_flag("--quiet,-q", d.quiet, "Only the final table");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*gen) {
      const auto s = run_generate(g, std::cerr);
      std::printf("%lld records, %lld accepted (%.1f%%), %.0f tok/s\n", static_cast<long long>(s.records),
                  static_cast<long long>(s.accepted),
                  s.records ? 100.0 * static_cast<double>(s.accepted) / static_cast<double>(s.records) : 0.0,
                  s.tokens_per_second);
    } else if (*tr) {
      run_gsm8k_train(t, std::cout, std::cerr);
    } else if (*ev) {
      run_eval(e, std::cout, std::cerr);
    } else if (*ask) {
      run_ask(a, std::cout);
    } else if (*demo) {
      run_demo(d, std::cout, std::cerr);
    }
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "gsm8k_distill: error: %s\n", ex.what());
    return 1;
  }
  return 0;
}
