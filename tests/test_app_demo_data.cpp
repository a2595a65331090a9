// The demo's data and models (apps/gsm8k_distill/demo_data.hpp, demo/models/): the held-out pool never meets a
// training stream; the teacher's worked answers verify; the student's text drops the thinking tags; each step
// becomes a bare calculation; and the two committed tokenizers encode exactly as Hugging Face `tokenizers` does
// (tests/golden/demo/tokenizers.json, written by tools/demo/make_demo_models.py from the same files).
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "../apps/gsm8k_distill/demo_data.hpp"
#include "distill/data/gsm8k.hpp"
#include "distill/data/traces.hpp"
#include "distill/text/tokenizer.hpp"
#include "shared_data.hpp"

using namespace distill;
using namespace distill::gsm8k_app;

TEST_CASE("demo pools: held-out problems never appear in a training stream") {
  const auto held = demo_problems(eval_stream_seed(1), 300, true);
  std::unordered_set<std::string> h;
  for (const auto& p : held) {
    CHECK(is_held_out(p.question));
    CHECK_FALSE(data::check_solution(p.answer));
    h.insert(p.question);
  }
  CHECK(h.size() == 300);
  for (const uint64_t s : {kTeacherCorpusSeed, kStudentCorpusSeed, distill_stream_seed(1), distill_stream_seed(2)})
    for (const auto& p : demo_problems(s, 2000, false)) CHECK_FALSE(h.count(p.question));
  // Different seeds give different problem sets.
  CHECK(demo_problems(distill_stream_seed(1), 5, false)[0].question !=
        demo_problems(distill_stream_seed(2), 5, false)[0].question);
}

TEST_CASE("demo corpus: the teacher thinks, the student's text drops the tags, steps become calculations") {
  const auto p = demo_problems(kTeacherCorpusSeed, 1, false)[0];
  const std::string c = teacher_completion(p);
  CHECK(c.ends_with("\n</think>\n\n#### " + std::to_string(p.value) + "<|im_end|>"));
  // What generate records (the text after the prompt's "<think>\n", special tokens dropped) and what the student
  // then learns: the steps, then "#### N" — GSM8K's own answer format, accepted by the rejection filter.
  const std::string response = c.substr(0, c.size() - std::string("<|im_end|>").size());
  const std::string student = strip_thinking(response);
  CHECK(student == p.answer);
  auto rec = data::TraceRecord::make("x-1", p.question, p.answer, student, 40, false);
  const auto v = data::filter_trace(rec);
  CHECK(v.accepted);
  CHECK(v.text == p.answer);
  CHECK(strip_thinking("<think>\nabc\n</think>\n\n#### 3") == "abc\n#### 3");
  CHECK(strip_thinking("no tags\n#### 3") == "no tags\n#### 3");
  CHECK(strip_thinking("</think>\n\n#### 3") == "#### 3");

  const auto calcs = calculations("Mia has 3 * 4 = <<3*4=12>>12 apples.\nShe has 12 - 5 = <<12-5=7>>7 left.\n#### 7");
  REQUIRE(calcs.size() == 2);
  CHECK(calcs[0].question == "What is 3 * 4?");
  CHECK(calcs[0].answer == "3 * 4 = <<3*4=12>>12\n#### 12");
  CHECK(calcs[1].question == "What is 12 - 5?");
  CHECK_FALSE(data::check_solution(calcs[1].answer));

  // The student's corpus: one in kStudentDirectEvery a multi-step problem answered directly, the others one step.
  const auto s = student_corpus(2 * kStudentDirectEvery);
  REQUIRE(s.size() == static_cast<size_t>(2 * kStudentDirectEvery));
  for (size_t i = 0; i < s.size(); ++i) {
    CAPTURE(s[i].completion);
    CHECK(s[i].prompt.starts_with("<bos><start_of_turn>user\n"));
    CHECK(s[i].completion.ends_with("<end_of_turn>\n"));
    const bool direct = i % kStudentDirectEvery == 0;
    CHECK(s[i].completion.starts_with("#### ") == direct);
    if (!direct) CHECK_FALSE(data::check_solution(s[i].completion.substr(0, s[i].completion.size() - 14)));
  }
}

TEST_CASE("demo tokenizers: the committed tokenizer.json files encode as Hugging Face tokenizers does") {
  std::ifstream f(test::golden_path("demo/tokenizers.json"));
  REQUIRE(f);
  const auto g = nlohmann::json::parse(f);
  const std::string models = std::string(DISTILL_SOURCE_DIR) + "/apps/gsm8k_distill/demo/models/";
  for (const char* who : {"teacher", "student"}) {
    const auto tok = text::Tokenizer::from_file(models + who);
    REQUIRE(g.contains(who));
    for (const auto& c : g[who]) {
      const std::string t = c["text"].get<std::string>();
      const auto ids = tok.encode(t, /*add_special_tokens=*/false);
      CHECK_MESSAGE(ids == c["ids"].get<std::vector<int32_t>>(), who, ": ", t);
    }
  }
}
