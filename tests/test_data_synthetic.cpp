// Synthetic GSM8K-style problems (data/synthetic.hpp): determinism, every worked solution recomputed by
// check_solution (an independent parser of the <<a op b=c>> annotations), the answers read back by the GSM8K
// extraction and lm-eval's strict scorer exactly as real GSM8K answers are, variety and disjoint held-out draws, and
// check_solution's verdicts on broken solutions; each step as a one-step problem.
#include <doctest/doctest.h>

#include <map>
#include <set>
#include <string>
#include <unordered_set>

#include "distill/data/gsm8k.hpp"
#include "distill/data/synthetic.hpp"

using namespace distill;
using namespace distill::data;

TEST_CASE("synthetic problems are a pure function of (seed, index)") {
  const auto a = synthetic_problem(7, 3), b = synthetic_problem(7, 3), c = synthetic_problem(8, 3);
  CHECK(a.question == b.question);
  CHECK(a.answer == b.answer);
  CHECK(a.question != c.question);
  CHECK(synthetic_problems(11, 50).back().question == synthetic_problems(11, 50).back().question);
}

TEST_CASE("every synthetic solution is arithmetically right and scores like a GSM8K answer") {
  const auto ps = synthetic_problems(1234, 2000);
  REQUIRE(ps.size() == 2000);
  std::map<std::string, int> families;
  std::set<int> steps;
  std::set<std::string> questions;
  for (const auto& p : ps) {
    CAPTURE(p.question);
    CAPTURE(p.answer);
    CHECK_FALSE(check_solution(p.answer).has_value());
    CHECK(p.value >= 0);
    CHECK(gsm8k_gold_answer(p.answer) == std::to_string(p.value));
    CHECK(answers_match(p.answer, p.answer));
    CHECK(answers_match("The answer is " + std::to_string(p.value) + ".", p.answer));
    CHECK(score_gsm8k(p.answer, p.answer).strict_correct);
    CHECK(p.question.find("?") != std::string::npos);
    ++families[p.family];
    steps.insert(p.steps);
    questions.insert(p.question);
  }
  CHECK(families.size() == 5);
  for (const auto& [f, n] : families) CHECK_MESSAGE(n >= 100, f, " appears only ", n, " times");
  CHECK(steps == std::set<int>{2, 3});
  CHECK(questions.size() == ps.size());
}

TEST_CASE("each step as a one-step problem: its answer is that line of the worked solution") {
  for (const auto& p : synthetic_problems(99, 500)) {
    CAPTURE(p.answer);
    REQUIRE(static_cast<int>(p.one_steps.size()) == p.steps);
    std::string lines;
    for (const auto& s : p.one_steps) {
      CAPTURE(s.question);
      CHECK(s.question.ends_with("?"));
      CHECK_FALSE(check_solution(s.answer).has_value());  // one calculation, "#### " its result
      const size_t h = s.answer.rfind("\n#### ");
      REQUIRE(h != std::string::npos);
      lines += s.answer.substr(0, h) + "\n";
    }
    CHECK(lines + "#### " + std::to_string(p.value) == p.answer);
  }
  // A known problem: the numbers of the first step's question are the first line's operands.
  const auto p = synthetic_problem(1001, 0, SyntheticOptions{8, 2, 3});
  CHECK(p.one_steps[0].answer.substr(0, p.one_steps[0].answer.find('\n')) == p.answer.substr(0, p.answer.find('\n')));
}

TEST_CASE("options: step range, operand range, held-out problems disjoint from training") {
  SyntheticOptions o;
  o.min_steps = o.max_steps = 3;
  for (const auto& p : synthetic_problems(5, 200, o)) CHECK(p.steps == 3);
  o = {};
  o.max_operand = 5;
  for (const auto& p : synthetic_problems(5, 200, o)) CHECK_FALSE(check_solution(p.answer).has_value());
  const auto train = synthetic_problems(1, 500);
  std::unordered_set<std::string> seen;
  for (const auto& p : train) seen.insert(p.question);
  for (const auto& p : synthetic_problems(1, 300, {}, &seen)) CHECK(seen.count(p.question) == 0);
  SyntheticOptions bad;
  bad.max_steps = 4;
  CHECK_THROWS_WITH_AS(synthetic_problem(1, 0, bad), doctest::Contains("max_steps <= 3"), Error);
  bad = {};
  bad.max_operand = 2;
  CHECK_THROWS_WITH_AS(synthetic_problem(1, 0, bad), doctest::Contains("max_operand"), Error);
  CHECK_THROWS_WITH_AS(synthetic_problems(1, -1), doctest::Contains("negative"), Error);
}

TEST_CASE("check_solution finds what is wrong with a worked solution") {
  CHECK_FALSE(check_solution("So 3 * 4 = <<3*4=12>>12.\nThen 12 - 5 = <<12-5=7>>7.\n#### 7").has_value());
  CHECK(check_solution("So 3 * 4 = <<3*4=13>>13.\n#### 13").value().find("wrong result") != std::string::npos);
  CHECK(check_solution("So 3 * 4 = <<3*4=12>>12.\n#### 11").value().find("not the last result") != std::string::npos);
  CHECK(check_solution("So 7 / 2 = <<7/2=3>>3.\n#### 3").value().find("inexact division") != std::string::npos);
  CHECK(check_solution("So <<3^4=81>>81.\n#### 81").value().find("unknown operator") != std::string::npos);
  CHECK(check_solution("So <<3*=3>>3.\n#### 3").value().find("malformed") != std::string::npos);
  CHECK(check_solution("So <<3*4=12 and more").value().find("unterminated") != std::string::npos);
  CHECK(check_solution("So 3 * 4 = <<3*4=12>>12.").value().find("no ####") != std::string::npos);
  CHECK(check_solution("It is 12.\n#### 12").value().find("no <<") != std::string::npos);
  CHECK(check_solution("<<99999999999999999999*2=1>>\n#### 1").value().find("malformed") != std::string::npos);
}
