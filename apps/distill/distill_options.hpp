// The distillation flags of `train` (distill_teacher.hpp), shared by distill train and gsm8k_distill train.
#pragma once
#include <CLI/CLI.hpp>

#include "train_commands.hpp"

namespace distill::app {

inline void add_distillation_options(CLI::App* train, TrainCmd& tr) {
  train
      ->add_option(
          "--mode", tr.mode,
          "sft: the labels only; kl, rkl, jsd: also the teacher's next-token distribution (forward KL, reverse KL, "
          "JSD(beta)) at the trained positions (same tokenizer: token by token; another tokenizer: over the "
          "shared vocabulary at aligned positions); uld: Universal Logit Distillation (any tokenizers); "
          "feature: projected hidden states of mapped layers. Needs --teacher (or --teacher-logits for "
          "kl/rkl/jsd)")
      ->check(CLI::IsMember({"sft", "kl", "rkl", "jsd", "uld", "feature"}))
      ->capture_default_str();
  train->add_option("--teacher", tr.teacher, "Teacher checkpoint (any tokenizer; see --mode)");
  train->add_option("--teacher-logits", tr.teacher_logits,
                    "Offline teacher: top-K logits files from generate --save-logits (kl/rkl/jsd; the teacher is not "
                    "loaded)");
  train->add_option("--teacher-tokenizer", tr.teacher_tokenizer,
                    "With --teacher-logits: the teacher's tokenizer (a model directory; default: the student's)");
  train
      ->add_option("--topk", tr.topk,
                   "Another tokenizer, kl/rkl/jsd: compare the teacher's K most probable shared "
                   "tokens (the rest as one tail bucket)")
      ->capture_default_str();
  train->add_option("--layer-map", tr.layer_map,
                    "feature: student:teacher layer pairs, e.g. 0:1,1:3 (default: "
                    "proportional, every student layer)");
  train->add_option("--feature-loss", tr.feature_loss, "feature: mse or cosine")
      ->check(CLI::IsMember({"mse", "cosine"}))
      ->capture_default_str();
  train->add_option("--kd-weight", tr.kd_weight, "Weight of the distillation loss")->capture_default_str();
  train->add_option("--ce-weight", tr.ce_weight, "Weight of the cross-entropy on the labels")->capture_default_str();
  train->add_option("--temperature", tr.temperature, "Distillation temperature T (the loss is scaled by T^2)")
      ->capture_default_str();
  train->add_option("--beta", tr.beta, "JSD's teacher weight in the mixture, in (0, 1)")->capture_default_str();
}

}  // namespace distill::app
