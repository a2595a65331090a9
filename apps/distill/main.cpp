// distill — a command-line tool for the Hugging Face files Distill reads and writes.
//   distill tokenize --tokenizer DIR [--decode] < lines
//   distill chat --tokenizer DIR [--generation-prompt] < messages.json
//   distill inspect PATH
//   distill diff A B [--atol X --rtol Y]
//   distill generate --model DIR [--prompt TEXT] [sampling flags]
//   distill logits --model DIR < ids.json
//   distill train --model DIR --data FILE.jsonl --out DIR
//   distill quantize --model DIR --out DIR
//   distill merge --model DIR --adapter DIR --out DIR
// Errors are one line on stderr ("distill: error: ...") and exit status 1; usage errors exit 2.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "commands.hpp"
#include "distill/io/hf_hub.hpp"
#include "distill_options.hpp"
#include "model_commands.hpp"
#include "train_commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "distill: Hugging Face tokenizers, chat templates, safetensors checkpoints and Qwen3/Gemma3 models, as "
      "Distill reads and runs them"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "distill 0.1.0");

  distill::app::TokenizeOptions tk;
  auto* tokenize = app.add_subcommand(
      "tokenize", "Text lines on stdin -> one JSON array of token ids per line (--decode: id arrays -> text lines)");
  tokenize->add_option("--tokenizer,-t", tk.tokenizer, "tokenizer.json or a directory holding one")->required();
  tokenize->add_flag("--decode,-d", tk.decode, "Read JSON arrays of ids, write decoded text");
  tokenize->add_flag("--json", tk.json_text,
                     "The text side is one JSON string per line (input when encoding, output when decoding), so "
                     "text with newlines survives");
  tokenize->add_flag("--add-special-tokens,!--no-add-special-tokens", tk.add_special_tokens,
                     "Apply the post-processor, e.g. Gemma3's <bos> (default: on, like `tokenizers`)");
  tokenize->add_flag("--skip-special-tokens,!--keep-special-tokens", tk.skip_special_tokens,
                     "On --decode, drop special tokens (default: on, like `tokenizers`)");
  tokenize->add_option("--threads,-j", tk.threads, "Encoding threads (0 = all cores)")->default_val(0);

  distill::app::ChatOptions ch;
  auto* chat = app.add_subcommand(
      "chat", "A JSON list of messages on stdin -> the prompt rendered with the model's chat template");
  chat->add_option("--tokenizer,-t", ch.tokenizer, "Tokenizer directory (tokenizer_config.json, tokenizer.json)");
  chat->add_option("--format,-f", ch.format, "Chat format instead of detecting it: qwen3-thinking or gemma3")
      ->check(CLI::IsMember({"qwen3-thinking", "gemma3"}));
  chat->add_flag("--generation-prompt,-g", ch.generation_prompt,
                 "Append the assistant header (Qwen3-Thinking also opens <think>)");
  chat->add_flag("--ids", ch.ids, "Print {\"ids\", \"loss_mask\"} (needs --tokenizer)");
  chat->add_flag("--spans", ch.spans, "Print {\"text\", \"assistant_spans\"} as JSON")->excludes("--ids");

  distill::app::InspectOptions in;
  auto* inspect = app.add_subcommand(
      "inspect", "A safetensors file or checkpoint directory -> tensor names, dtypes, shapes, sizes and totals");
  inspect->add_option("path", in.path, "model.safetensors, a shard, an index.json, or a checkpoint directory")
      ->required();
  inspect->add_flag("--json", in.json, "Print JSON instead of a table");
  inspect->add_option("--filter", in.filter, "Only tensors whose name contains this text");

  distill::app::DiffOptions df;
  auto* diff = app.add_subcommand(
      "diff",
      "Two safetensors files or checkpoints, tensor by tensor: the largest difference (exit 1 beyond tolerance)");
  diff->add_option("a", df.a, "A safetensors file or checkpoint directory")->required();
  diff->add_option("b", df.b, "The other one")->required();
  diff->add_option("--atol", df.atol, "Absolute tolerance")->capture_default_str();
  diff->add_option("--rtol", df.rtol, "Tolerance relative to the tensor's largest |value| in a")->capture_default_str();

  distill::app::GenerateCmd gen;
  auto* generate = app.add_subcommand(
      "generate",
      "Generate from a Qwen3/Gemma3 checkpoint: the prompt is rendered with the model's chat template, the "
      "answer streams to stdout, a tokens/s line goes to stderr");
  generate
      ->add_option("--model,-m", gen.model,
                   "Checkpoint directory, or a hub id in the local Hugging Face cache (config.json, safetensors, "
                   "tokenizer files)")
      ->required();
  generate->add_option("--prompt,-p", gen.prompt, "The user message (default: read stdin)");
  generate->add_option("--system", gen.system, "A system message");
  generate->add_option("--prompt-ids", gen.prompt_ids,
                       "Comma-separated token ids instead of text (no tokenizer needed; prints ids)");
  generate->add_flag("--raw", gen.raw, "Encode the prompt as is, without the chat template");
  generate->add_option("--max-new-tokens,-n", gen.max_new_tokens,
                       "Tokens to generate at most (default: generation_config.json's, else 512)");
  generate->add_flag("--greedy", gen.greedy, "Greedy decoding (overrides generation_config.json's sampling)");
  generate->add_option("--temperature", gen.temperature, "Sampling temperature (> 0)");
  generate->add_option("--top-k", gen.top_k, "Keep the k most likely tokens (0: off)");
  generate->add_option("--top-p", gen.top_p, "Nucleus sampling mass in (0, 1]");
  generate->add_option("--min-p", gen.min_p, "Drop tokens below min_p times the top probability");
  generate->add_option("--seed", gen.seed, "Sampling seed")->default_val(0);
  generate->add_flag("--ignore-eos", gen.ignore_eos, "Do not stop at the stop ids (benchmarks)");
  generate->add_option("--dtype", gen.dtype, "Weights and activations in memory: f32 or bf16")
      ->default_val("f32")
      ->check(CLI::IsMember({"f32", "bf16"}));
  generate->add_option("--threads,-j", gen.threads, "CPU threads (0: all cores)")->default_val(0);
  generate->add_option("--adapter,-a", gen.adapter, "A PEFT LoRA adapter directory to apply");

  distill::app::LogitsCmd lg;
  auto* logits = app.add_subcommand(
      "logits", "Token ids as JSON on stdin ([ids] or [[ids], ...]) -> the logits of every position as JSON");
  logits->add_option("--model,-m", lg.model, "Checkpoint directory, or a hub id in the local Hugging Face cache")
      ->required();
  logits->add_flag("--last", lg.last, "Only the last position of each sequence");
  logits->add_option("--dtype", lg.dtype, "f32 or bf16")->default_val("f32")->check(CLI::IsMember({"f32", "bf16"}));
  logits->add_option("--threads,-j", lg.threads, "CPU threads (0: all cores)")->default_val(0);
  logits->add_option("--adapter,-a", lg.adapter, "A PEFT LoRA adapter directory to apply");

  distill::app::TrainCmd tr;
  auto* train = app.add_subcommand(
      "train",
      "LoRA/QLoRA fine-tuning on chats (loss on assistant tokens only): NF4 base, PEFT adapter checkpoints, "
      "resumable; a progress bar on stderr, one JSON line per step on stdout and in OUT/train_log.jsonl");
  train
      ->add_option("--model,-m", tr.model,
                   "Base checkpoint directory, or a hub id in the local Hugging Face cache (config.json, safetensors, "
                   "tokenizer)")
      ->required();
  train
      ->add_option(
          "--data,-d", tr.data,
          "JSONL: {\"messages\": [...]}, {\"question\", \"answer\"} or pre-tokenized {\"ids\", \"labels\"} per line")
      ->required();
  train->add_option("--out,-o", tr.out, "Output directory (checkpoint-<step>/, adapter/, train_log.jsonl)")->required();
  train->add_option("--adapter,-a", tr.adapter, "Start from this PEFT adapter instead of a fresh one");
  train->add_flag("!--no-quantize", tr.quantize, "Train LoRA on the dense base instead of an NF4 one");
  train->add_option("--quant-type", tr.quant_type, "4-bit format of the base")
      ->default_val("nf4")
      ->check(CLI::IsMember({"nf4", "fp4"}));
  train->add_option("--lora-r,-r", tr.lora_r, "LoRA rank")->default_val(16);
  train->add_option("--lora-alpha", tr.lora_alpha, "LoRA alpha (scaling = alpha / r)")->default_val(16);
  train->add_option("--lora-dropout", tr.lora_dropout, "Dropout on the adapter input")->default_val(0.0);
  train->add_flag("--rslora", tr.rslora, "scaling = alpha / sqrt(r)");
  train->add_option("--target-modules", tr.targets, "Projections to adapt (default: q,k,v,o,gate,up,down)")
      ->delimiter(',');
  train->add_option("--lr", tr.lr, "Peak learning rate")->default_val(2e-4);
  train->add_option("--weight-decay", tr.weight_decay, "AdamW weight decay")->default_val(0.0);
  train->add_option("--schedule", tr.schedule, "LR schedule")
      ->default_val("linear")
      ->check(CLI::IsMember({"linear", "cosine", "constant", "constant_with_warmup"}));
  train->add_option("--warmup-steps", tr.warmup_steps, "Linear warmup steps")->default_val(0);
  train->add_option("--max-grad-norm", tr.max_grad_norm, "Global-norm clipping (0: off)")->default_val(1.0);
  train->add_option("--batch-size,-b", tr.batch_size, "Examples (rows when packing) per micro-batch")->default_val(2);
  train->add_option("--grad-accum", tr.grad_accum, "Micro-batches per optimizer step")->default_val(4);
  train->add_option("--epochs", tr.epochs, "Passes over the data")->default_val(1);
  train->add_option("--max-steps", tr.max_steps, "Stop after this many steps (overrides --epochs)")->default_val(0);
  train->add_option("--max-len", tr.max_len, "Tokens per example (truncated) / per packed row")->default_val(2048);
  train->add_flag("--packing", tr.packing, "Pack several examples per row (no attention across them)");
  distill::app::add_distillation_options(train, tr);
  train->add_flag("--grad-checkpoint", tr.grad_checkpoint, "Recompute each block in backward (less memory)");
  train->add_option("--save-every", tr.save_every, "Checkpoint every N steps (also at each epoch end)")->default_val(0);
  train->add_option("--seed", tr.seed, "Seed of data order, adapter init and dropout")->default_val(3407);
  train->add_flag("--no-shuffle", tr.no_shuffle, "Visit the examples in file order");
  train->add_flag("--resume", tr.resume, "Continue from the newest complete checkpoint in --out");
  train->add_option("--limit", tr.limit, "Use only the first N records")->default_val(0);
  train->add_flag("--quiet,-q", tr.quiet, "No progress bar");
  train->add_option("--dtype", tr.dtype, "Activations in memory: f32 or bf16")
      ->default_val("f32")
      ->check(CLI::IsMember({"f32", "bf16"}));
  train->add_option("--threads,-j", tr.threads, "CPU threads (0: all cores)")->default_val(0);

  distill::app::QuantizeCmd qz;
  auto* quantize = app.add_subcommand(
      "quantize", "A bf16 checkpoint -> a bitsandbytes 4-bit checkpoint (NF4, double quant) that transformers loads");
  quantize
      ->add_option("--model,-m", qz.model, "Source checkpoint directory, or a hub id in the local Hugging Face cache")
      ->required();
  quantize->add_option("--out,-o", qz.out, "Output directory")->required();
  quantize->add_option("--quant-type", qz.quant_type, "nf4 or fp4")
      ->default_val("nf4")
      ->check(CLI::IsMember({"nf4", "fp4"}));
  quantize->add_option("--blocksize", qz.blocksize, "Elements per absmax block")->default_val(64);
  quantize->add_flag("--no-double-quant", qz.no_double_quant, "Keep the absmax in f32");

  distill::app::MergeCmd mg;
  auto* merge = app.add_subcommand(
      "merge", "A base checkpoint (bf16 or 4-bit) + a PEFT LoRA adapter -> a merged bf16 checkpoint");
  merge->add_option("--model,-m", mg.model, "Base checkpoint directory, or a hub id in the local Hugging Face cache")
      ->required();
  merge->add_option("--adapter,-a", mg.adapter, "PEFT adapter directory")->required();
  merge->add_option("--out,-o", mg.out, "Output directory")->required();

  std::string topk_file;
  auto* topk_info = app.add_subcommand(
      "topk-info",
      "An offline teacher-logits file (gsm8k_distill generate --save-logits) -> {k, vocab, records, positions}");
  topk_info->add_option("file", topk_file, "<traces stem>.topk.bin")->required();

  distill::app::RandomModelCmd rm;
  auto* random_model = app.add_subcommand(
      "random-model",
      "A checkpoint with a real model's shapes and random bf16 weights (benchmarks without the real weights)");
  auto* preset_opt = random_model
                         ->add_option("--preset,-p", rm.preset,
                                      "Built-in config.json: qwen3-4b-thinking-2507 (the teacher) or gemma-3-1b-it "
                                      "(the student)")
                         ->check(CLI::IsMember({"qwen3-4b-thinking-2507", "gemma-3-1b-it"}));
  random_model->add_option("--config,-c", rm.config, "Any Qwen3/Gemma3 text config.json instead of a preset")
      ->excludes(preset_opt);
  random_model->add_option("--out,-o", rm.out, "Output directory")->required();
  random_model->add_option("--tokenizer,-t", rm.tokenizer,
                           "Directory whose tokenizer/generation files are copied beside the weights");
  random_model->add_option("--seed", rm.seed, "Random seed")->default_val(0);
  random_model->add_option("--std", rm.std, "Standard deviation of the projections and embeddings")->default_val(0.02);
  random_model->add_option("--layers", rm.layers, "Fewer layers than the config (0: all)")->default_val(0);
  random_model->add_option("--vocab", rm.vocab, "A smaller vocabulary than the config (0: the config's)")
      ->default_val(0);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints the help, the version, or the usage error
    return rc == 0 ? 0 : 2;
  }
  std::ios::sync_with_stdio(false);
  try {
    // --model takes a directory or a hub id already in the local Hugging Face cache (io/hf_hub.hpp).
    for (std::string* m : {&gen.model, &lg.model, &tr.model, &qz.model, &mg.model})
      if (!m->empty()) *m = distill::io::resolve_model_dir(*m);
    if (*tokenize) distill::app::run_tokenize(tk, std::cin, std::cout);
    if (*chat) distill::app::run_chat(ch, std::cin, std::cout);
    if (*inspect) distill::app::run_inspect(in, std::cout);
    if (*diff && !distill::app::run_diff(df, std::cout)) return 1;
    if (*generate) distill::app::run_generate(gen, std::cin, std::cout, std::cerr);
    if (*logits) distill::app::run_logits(lg, std::cin, std::cout);
    if (*train) distill::app::run_train(tr, std::cout, std::cerr);
    if (*quantize) distill::app::run_quantize(qz, std::cerr);
    if (*merge) distill::app::run_merge(mg, std::cerr);
    if (*topk_info) distill::app::run_topk_info(topk_file, std::cout);
    if (*random_model) {
      if (rm.preset.empty() && rm.config.empty()) throw distill::Error("random-model needs --preset or --config");
      distill::app::run_random_model(rm, std::cerr);
    }
    std::cout.flush();
    if (!std::cout) throw distill::Error("cannot write to stdout");
  } catch (const std::exception& e) {
    std::cout.flush();
    std::fprintf(stderr, "distill: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
