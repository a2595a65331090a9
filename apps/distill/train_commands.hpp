// The `distill` subcommands that make and convert QLoRA models (CPU):
//   train     LoRA / QLoRA supervised fine-tuning on a JSONL of chats; PEFT checkpoints, resumable
//   quantize  a bf16 checkpoint -> a bitsandbytes NF4 (or FP4) checkpoint transformers loads
//   merge     a base checkpoint + a PEFT adapter -> one bf16 checkpoint with the adapters merged
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "model_options.hpp"

namespace distill::app {

struct TrainCmd : ModelOptions {
  std::string data;      // JSONL: {"messages": [...]} or {"question": ..., "answer": ...} per line
  std::string out;       // checkpoints go to out/checkpoint-<step>/, the final adapter to out/adapter/
  bool quantize = true;  // NF4 base (QLoRA); false: LoRA on the dense base
  std::string quant_type = "nf4";
  int64_t lora_r = 16;
  double lora_alpha = 16;
  double lora_dropout = 0;
  bool rslora = false;
  std::vector<std::string> targets;  // empty: q,k,v,o,gate,up,down
  double lr = 2e-4;
  double weight_decay = 0.0;
  std::string schedule = "linear";
  int64_t warmup_steps = 0;
  double max_grad_norm = 1.0;
  int64_t batch_size = 2;
  int64_t grad_accum = 4;
  int64_t epochs = 1;
  int64_t max_steps = 0;
  int64_t max_len = 2048;
  bool packing = false;
  bool grad_checkpoint = false;
  int64_t save_every = 0;
  uint64_t seed = 3407;
  bool no_shuffle = false;
  bool resume = false;
  int64_t limit = 0;  // use only the first N records
  bool quiet = false;
  // Distillation (distill_teacher.hpp): mode sft (labels only), kl, rkl, jsd, uld or feature;
  // loss = ce_weight * CE + kd_weight * D.
  std::string mode = "sft";
  std::string teacher;                      // the teacher's checkpoint directory
  std::vector<std::string> teacher_logits;  // offline top-K logits files (generate --save-logits), kl/rkl/jsd
  std::string teacher_tokenizer;            // offline: the teacher's tokenizer (default: the student's)
  double kd_weight = 0.5, ce_weight = 0.5, temperature = 1.0, beta = 0.5;
  int64_t topk = 64;                 // another tokenizer, kl/rkl/jsd: the teacher's K most probable shared tokens
  std::string layer_map;             // feature: "s:t,..." (empty: proportional)
  std::string feature_loss = "mse";  // feature: mse or cosine
};

struct QuantizeCmd {
  std::string model, out;
  std::string quant_type = "nf4";
  int64_t blocksize = 64;
  bool no_double_quant = false;
};

struct MergeCmd {
  std::string model, adapter, out;
};

// Defined in train_commands.cpp (its own translation unit: the trainer is the heaviest template code in the tool).
void run_train(const TrainCmd& o, std::ostream& log, std::ostream& err);
void run_quantize(const QuantizeCmd& o, std::ostream& err);
void run_merge(const MergeCmd& o, std::ostream& err);

}  // namespace distill::app
