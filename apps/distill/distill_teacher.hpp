// The teacher side of `train --mode kl|rkl|jsd|uld|feature` (train/kd.hpp, train/feature_kd.hpp,
// train/align.hpp), shared by distill train and gsm8k_distill train. Its own translation unit: it instantiates
// both model families' forward as teachers.
//
//   --teacher DIR, same tokenizer, kl/rkl/jsd   the teacher reads the student's ids; token-aligned KL/JSD over every
//                                              trained position (padded vocabularies: the tokenizer's real size)
//   --teacher DIR, another tokenizer, kl/rkl/jsd the teacher reads its own rendering of the example (its response
//                                              with the thinking, when the data has it); KL/JSD over the shared
//                                              vocabulary (top-K rows, the rest as tail) at aligned positions
//   --teacher DIR, uld                          Universal Logit Distillation at aligned positions (any tokenizers)
//   --teacher DIR, feature                      projected hidden states at aligned positions, mapped layers
//   --teacher-logits FILE, kl/rkl/jsd           offline top-K logits (generate --save-logits); the teacher is never
//                                              loaded (--teacher-tokenizer DIR names its tokenizer when it is not
//                                              the student's); aligned through the emitted tokens' text
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "distill/data/sft.hpp"
#include "distill/text/chat.hpp"
#include "distill/train/trainer.hpp"
#include "train_commands.hpp"

namespace distill::app {

// What the teacher needs to know about one training example beyond its ids.
struct ExampleText {
  std::string id;                      // the record's "id" (offline logits are looked up by it)
  std::vector<text::Message> student;  // the conversation the student trains on (empty: pre-tokenized)
  std::vector<text::Message> teacher;  // the teacher's own version (its response with thinking), else = student
};

struct StudentInfo {
  std::string dir;
  int64_t vocab = 0, hidden = 0, layers = 0;
};

// The trainer's distillation settings for o.mode (not "sft"); notes on what was chosen go to err.
train::DistillConfig make_distillation(const TrainCmd& o, const StudentInfo& student,
                                       const std::vector<data::SftExample>& examples,
                                       const std::vector<ExampleText>& texts, std::ostream& err);

}  // namespace distill::app
