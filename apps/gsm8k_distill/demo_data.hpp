// The demo's data (issue 8): synthetic GSM8K-style problems split into disjoint pools, and the texts the two tiny
// demo models were pretrained on (written by `gsm8k_distill demo --write-corpus DIR`; the models themselves are
// made from that corpus by tools/demo/make_demo_models.py and committed under apps/gsm8k_distill/demo/models/).
//
// The pools: a problem is held out (evaluation only) when a hash of its question text falls in one bucket of 8,
// so no training corpus can ever contain a held-out question, whatever stream or size drew it. Each stream has
// its own seed: the teacher's and the student's pretraining, the distillation questions and the held-out set.
//
// The teacher (tiny Qwen3, Qwen3-Thinking chat format) learnt to think step by step: its answer is GSM8K's worked
// solution inside <think> ... </think>, then "#### N". The student (tiny Gemma3, Gemma3 chat format, its own
// tokenizer) learnt to answer directly: "#### N" for the word problems, and one annotated calculation for bare
// arithmetic questions ("What is 12 - 5?" -> "12 - 5 = <<12-5=7>>7\n#### 7") — so it can do each step but was
// never shown how to chain them, and its direct answers to multi-step problems are mostly wrong.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "distill/data/jsonl.hpp"
#include "distill/data/synthetic.hpp"
#include "distill/io/file.hpp"
#include "distill/text/chat.hpp"

namespace distill::gsm8k_app {

// Every demo stream draws from these options (operands 2..8: two-digit intermediate values, a few three-digit).
inline data::SyntheticOptions demo_problem_options() {
  data::SyntheticOptions o;
  o.max_operand = 8;
  return o;
}

inline uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}
inline bool is_held_out(std::string_view question) { return fnv1a(question) % 8 == 0; }

// Stream seeds. The pretraining streams are fixed (the committed models were made from them); the distillation and
// evaluation streams move with the demo's --seed.
inline constexpr uint64_t kTeacherCorpusSeed = 1001, kStudentCorpusSeed = 2002;
inline uint64_t distill_stream_seed(uint64_t seed) { return 3003 + 7919 * seed; }
inline uint64_t eval_stream_seed(uint64_t seed) { return 4004 + 7919 * seed; }

// n problems of a stream from the training pool (held_out == false) or the held-out pool (held_out == true).
inline std::vector<data::SyntheticProblem> demo_problems(uint64_t stream, int64_t n, bool held_out) {
  const data::SyntheticOptions opt = demo_problem_options();
  std::vector<data::SyntheticProblem> out;
  std::unordered_set<std::string> seen;
  const uint64_t limit = static_cast<uint64_t>(n) * 400 + 1000;
  for (uint64_t i = 0; static_cast<int64_t>(out.size()) < n; ++i) {
    DISTILL_CHECK(i < limit, "demo problems: only ", out.size(), " of ", n, " after ", limit, " draws");
    data::SyntheticProblem p = data::synthetic_problem(stream, i, opt);
    if (is_held_out(p.question) != held_out || !seen.insert(p.question).second) continue;
    out.push_back(std::move(p));
  }
  return out;
}

// The worked steps of a GSM8K-style answer: everything before its "#### N" line.
inline std::string worked_steps(std::string_view answer) {
  const size_t h = answer.rfind("\n#### ");
  return std::string(answer.substr(0, h == std::string_view::npos ? answer.size() : h));
}

// What the teacher says after the generation prompt (which already opened <think>).
inline std::string teacher_completion(const data::SyntheticProblem& p) {
  return worked_steps(p.answer) + "\n</think>\n\n#### " + std::to_string(p.value) + "<|im_end|>";
}

// The student's text for a teacher response: the reasoning and the final answer without the thinking tags (the
// student's chat format has none), e.g. "<steps>\n</think>\n\n#### 7" -> "<steps>\n#### 7".
inline std::string strip_thinking(std::string_view response) {
  std::string_view r = response;
  if (r.substr(0, 8) == "<think>\n") r.remove_prefix(8);
  const size_t close = r.find("</think>");
  if (close == std::string_view::npos) return std::string(r);
  std::string_view before = r.substr(0, close), after = r.substr(close + 8);
  while (!before.empty() && (before.back() == '\n' || before.back() == ' ')) before.remove_suffix(1);
  while (!after.empty() && (after.front() == '\n' || after.front() == ' ')) after.remove_prefix(1);
  if (before.empty()) return std::string(after);
  if (after.empty()) return std::string(before);
  return std::string(before) + "\n" + std::string(after);
}

// The calculations "<<a op b=c>>" of a worked answer, as bare arithmetic questions with one-step answers.
struct Calc {
  std::string question, answer;
};
inline std::vector<Calc> calculations(std::string_view answer) {
  std::vector<Calc> out;
  for (size_t pos = answer.find("<<"); pos != std::string_view::npos; pos = answer.find("<<", pos + 2)) {
    const size_t end = answer.find(">>", pos);
    if (end == std::string_view::npos) break;
    const std::string e(answer.substr(pos + 2, end - pos - 2));  // a op b=c
    const size_t op = e.find_first_of("+-*/", 1), eq = e.find('=');
    if (op == std::string::npos || eq == std::string::npos || eq < op) continue;
    const std::string a = e.substr(0, op), b = e.substr(op + 1, eq - op - 1), c = e.substr(eq + 1);
    const std::string shown = a + " " + e[op] + " " + b;
    out.push_back({"What is " + shown + "?", shown + " = <<" + e + ">>" + c + "\n#### " + c});
  }
  return out;
}

// One pretraining example: the generation prompt as the chat template renders it, and what the model learnt to say
// after it (loss only there).
struct PromptCompletion {
  std::string prompt, completion;
};

inline std::string user_prompt(text::ChatFormat f, const std::string& question) {
  const std::vector<text::Message> m{text::Message{"user", question}};
  return text::render_chat(f, m, /*add_generation_prompt=*/true).text;
}

// The teacher's corpus: n problems with their worked answers.
inline std::vector<PromptCompletion> teacher_corpus(int64_t n) {
  std::vector<PromptCompletion> out;
  for (const auto& p : demo_problems(kTeacherCorpusSeed, n, false))
    out.push_back({user_prompt(text::ChatFormat::Qwen3Thinking, p.question), teacher_completion(p)});
  return out;
}

// The student's corpus: n examples; one in `direct_every` is a multi-step problem answered directly ("#### N"),
// the others are single steps of other problems as one-step word problems, each answered by its worked line — so
// the student can do every step, in the teacher's own words, but was never shown how to chain them.
inline constexpr int64_t kStudentDirectEvery = 6;
inline std::vector<PromptCompletion> student_corpus(int64_t n, int64_t direct_every = kStudentDirectEvery) {
  std::vector<PromptCompletion> out;
  const auto f = text::ChatFormat::Gemma3;
  const auto probs = demo_problems(kStudentCorpusSeed, n, false);
  for (int64_t i = 0; i < n; ++i) {
    const auto& p = probs[static_cast<size_t>(i)];
    if (i % direct_every == 0) {
      out.push_back({user_prompt(f, p.question), "#### " + std::to_string(p.value) + "<end_of_turn>\n"});
    } else {
      const auto& st = p.one_steps[static_cast<size_t>(i / direct_every) % p.one_steps.size()];
      out.push_back({user_prompt(f, st.question), st.answer + "<end_of_turn>\n"});
    }
  }
  return out;
}

// Writes the pretraining corpus of the demo models to dir: teacher.jsonl and student.jsonl ({"prompt",
// "completion"}), and held-out problems for checking them (eval.jsonl: {"question", "value", "teacher_prompt",
// "student_prompt"}). tools/demo/make_demo_models.py reads these.
inline void write_demo_corpus(const std::string& dir, int64_t n_teacher, int64_t n_student, int64_t n_eval,
                              int64_t direct_every = kStudentDirectEvery) {
  std::filesystem::create_directories(dir);
  auto dump = [&](const std::string& name, const std::vector<PromptCompletion>& v) {
    std::string s;
    for (const auto& e : v) s += nlohmann::json{{"prompt", e.prompt}, {"completion", e.completion}}.dump() + "\n";
    io::atomic_write((std::filesystem::path(dir) / name).string(), s);
  };
  dump("teacher.jsonl", teacher_corpus(n_teacher));
  dump("student.jsonl", student_corpus(n_student, direct_every));
  std::string s;
  for (const auto& p : demo_problems(eval_stream_seed(0), n_eval, true))
    s += nlohmann::json{{"question", p.question},
                        {"value", p.value},
                        {"teacher_prompt", user_prompt(text::ChatFormat::Qwen3Thinking, p.question)},
                        {"student_prompt", user_prompt(text::ChatFormat::Gemma3, p.question)}}
             .dump() +
         "\n";
  io::atomic_write((std::filesystem::path(dir) / "eval.jsonl").string(), s);
}

}  // namespace distill::gsm8k_app
