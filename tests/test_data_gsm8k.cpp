// GSM8K: loader, gold extraction, annotation stripping, lm-eval filters/exact_match and the scorer against the
// fixtures that tools/golden/export_gsm8k_fixtures.py exported from lm_eval 0.4.13 and the OpenAI reference
// (every GSM8K record when ../shared is present), plus our own answer rules (answers_match) on written cases.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "distill/data/gsm8k.hpp"
#include "shared_data.hpp"

using distill::Error;
using namespace distill::data;

namespace {

const nlohmann::json& fixture() {
  static const nlohmann::json j = [] {
    const std::string p = distill::test::golden_path("gsm8k/extraction.json");
    std::ifstream in(p, std::ios::binary);
    if (!in) throw Error("missing fixture " + p + " (tools/golden/export_gsm8k_fixtures.py writes it)");
    return nlohmann::json::parse(in);
  }();
  return j;
}

std::string case_text(const nlohmann::json& c) {
  if (c.contains("text")) return c["text"].get<std::string>();
  const std::string hex = c["text_hex"].get<std::string>();
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string fnv1a64(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

const std::vector<std::pair<std::string, Gsm8kTask>> kTasks = {{"gsm8k", Gsm8kTask::kGsm8k},
                                                               {"gsm8k_cot", Gsm8kTask::kGsm8kCot},
                                                               {"gsm8k_cot_zeroshot", Gsm8kTask::kGsm8kCotZeroshot}};

std::string show(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

}  // namespace

TEST_CASE("gsm8k: task settings equal the installed lm-eval YAMLs") {
  for (const auto& name_task : kTasks) {
    const std::string& name = name_task.first;
    const Gsm8kTask task = name_task.second;
    CAPTURE(name);
    const auto& fx = fixture()["tasks"][name];
    const LmEvalGsm8k& t = lm_eval_gsm8k(task);
    const auto& strict = fx["filters"]["strict-match"];
    const auto& flex = fx["filters"]["flexible-extract"];
    CHECK(strict[0]["function"] == "regex");
    CHECK(strict[1]["function"] == "take_first");
    CHECK(t.strict.pattern() == strict[0]["regex_pattern"].get<std::string>());
    CHECK(t.strict.group_select() == strict[0].value("group_select", 0));
    CHECK(t.flexible.pattern() == flex[0]["regex_pattern"].get<std::string>());
    CHECK(t.flexible.group_select() == flex[0].value("group_select", 0));
    CHECK(t.exact_match.regexes_to_ignore() ==
          fx["metric_kwargs"]["regexes_to_ignore"].get<std::vector<std::string>>());
    CHECK(t.exact_match.ignore_case() == fx["metric_kwargs"]["ignore_case"].get<bool>());
    CHECK_FALSE(fx["metric_kwargs"]["ignore_punctuation"].get<bool>());
    const auto& golds = fixture()["golds"];
    for (size_t g = 0; g < golds.size(); ++g)
      CHECK(lm_eval_gsm8k_target(golds[g].get<std::string>(), task) == fx["targets"][g].get<std::string>());
  }
}

TEST_CASE("gsm8k: filters, exact_match, gold extraction and annotation stripping vs the references") {
  const auto& golds = fixture()["golds"];
  int64_t checked = 0;
  for (const auto& c : fixture()["cases"]) {
    const std::string text = case_text(c);
    CAPTURE(show(text));
    CHECK(gsm8k_gold_answer(text) == c["openai"].get<std::string>());
    CHECK(strip_calculator_annotations(text) == c["strip"].get<std::string>());
    CHECK(lm_eval_gsm8k().exact_match.normalize(text) == c["em_norm"].get<std::string>());
    for (const auto& name_task : kTasks) {
      const std::string& name = name_task.first;
      const Gsm8kTask task = name_task.second;
      CAPTURE(name);
      const auto& fx = c[name];
      const LmEvalGsm8k& t = lm_eval_gsm8k(task);
      CHECK(t.strict.apply(text) == fx["strict"].get<std::string>());
      CHECK(t.flexible.apply(text) == fx["flexible"].get<std::string>());
      std::string strict_em, flexible_em;
      for (const auto& g : golds) {
        const Gsm8kItemScore s = score_gsm8k(text, g.get<std::string>(), task);
        strict_em += s.strict_correct ? '1' : '0';
        flexible_em += s.flexible_correct ? '1' : '0';
      }
      CHECK(strict_em == fx["strict_em"].get<std::string>());
      CHECK(flexible_em == fx["flexible_em"].get<std::string>());
    }
    ++checked;
  }
  CHECK(checked >= 180);
}

TEST_CASE("gsm8k: generic RegexFilter and exact_match vs lm-eval") {
  for (const auto& c : fixture()["regex_filter"]) {
    const std::string pattern = c["pattern"], text = c["text"], fallback = c["fallback"];
    const int gs = c["group_select"];
    CAPTURE(pattern);
    CAPTURE(gs);
    CAPTURE(show(text));
    const RegexFilter f(pattern, gs, fallback);
    if (c.contains("error"))
      CHECK_THROWS_AS(f.apply(text), Error);
    else
      CHECK(f.apply(text) == c["out"].get<std::string>());
  }
  for (const auto& c : fixture()["exact_match"]) {
    const auto& s = c["settings"];
    const std::vector<std::string> regexes = s["regexes_to_ignore"].is_null()
                                                 ? std::vector<std::string>{}
                                                 : s["regexes_to_ignore"].get<std::vector<std::string>>();
    const ExactMatch em(regexes, s.value("ignore_case", false), s.value("ignore_punctuation", false),
                        s.value("ignore_numbers", false));
    const std::string pred = c["pred"], ref = c["ref"];
    CAPTURE(s.dump());
    CAPTURE(show(pred));
    CAPTURE(show(ref));
    CHECK(em(pred, ref) == (c["result"].get<double>() == 1.0));
    CHECK(em.normalize(pred) == c["pred_norm"].get<std::string>());
  }
}

TEST_CASE("gsm8k: scorer totals") {
  // Every fixture output scored against gold 0 ("#### 72") and gold 4 ("#### 5"): totals from the bitstrings.
  for (const auto& name_task : kTasks) {
    const std::string& name = name_task.first;
    const Gsm8kTask task = name_task.second;
    for (size_t g : {size_t{0}, size_t{4}}) {
      Gsm8kScore score, part1, part2;
      int64_t n = 0, strict = 0, flex = 0, inv_s = 0, inv_f = 0;
      for (const auto& c : fixture()["cases"]) {
        const std::string text = case_text(c);
        const bool truncated = n % 7 == 0;
        score.add(text, fixture()["golds"][g].get<std::string>(), truncated, task);
        (n % 2 ? part1 : part2).add(text, fixture()["golds"][g].get<std::string>(), truncated, task);
        const auto& fx = c[name];
        strict += fx["strict_em"].get<std::string>()[g] == '1';
        flex += fx["flexible_em"].get<std::string>()[g] == '1';
        inv_s += fx["strict"] == "[invalid]";
        inv_f += fx["flexible"] == "[invalid]";
        ++n;
      }
      CHECK(score.n == n);
      CHECK(score.strict_correct == strict);
      CHECK(score.flexible_correct == flex);
      CHECK(score.invalid_strict == inv_s);
      CHECK(score.invalid_flexible == inv_f);
      CHECK(score.truncated == (n + 6) / 7);
      CHECK(score.strict_accuracy() == doctest::Approx(static_cast<double>(strict) / n));
      CHECK(score.flexible_accuracy() == doctest::Approx(static_cast<double>(flex) / n));
      part1.merge(part2);
      CHECK(part1.strict_correct == score.strict_correct);
      CHECK(part1.n == score.n);
    }
  }
  CHECK(Gsm8kScore{}.strict_accuracy() == 0.0);
}

// Every record of the real GSM8K files: loader (count, content hashes), gold, lm-eval filters on answers and
// questions, and annotation stripping.
static void check_split(const std::string& path, const std::string& fixture_name, size_t expected) {
  const auto examples = load_gsm8k(path);
  REQUIRE(examples.size() == expected);
  std::ifstream in(distill::test::golden_path("gsm8k/" + fixture_name));
  REQUIRE(in);
  std::string row;
  size_t k = 0, mismatches = 0;
  const LmEvalGsm8k& t = lm_eval_gsm8k();
  while (std::getline(in, row)) {
    if (row.empty() || row[0] == '#') continue;
    std::vector<std::string> col;
    std::stringstream ss(row);
    for (std::string f; std::getline(ss, f, '\t');) col.push_back(f);
    REQUIRE(col.size() == 7);
    REQUIRE(k < examples.size());
    const Gsm8kExample& ex = examples[k++];
    const std::string strict = col[2] == "=" ? col[1] : col[2];
    const std::string flex = col[3] == "=" ? strict : col[3];
    const bool ok = std::to_string(ex.line) == col[0] && gsm8k_gold_answer(ex.answer) == col[1] &&
                    t.strict.apply(ex.answer) == strict && t.flexible.apply(ex.answer) == flex &&
                    t.flexible.apply(ex.question) == col[4] && fnv1a64(ex.question + '\0' + ex.answer) == col[5] &&
                    fnv1a64(strip_calculator_annotations(ex.answer)) == col[6];
    if (!ok && ++mismatches <= 5) {
      CAPTURE(row);
      CAPTURE(ex.line);
      CHECK(ok);
    }
    // Our rule agrees with the gold on the reference solutions themselves.
    if (!answers_match(ex.answer, ex.answer) && ++mismatches <= 5)
      FAIL_CHECK("answers_match(answer, answer) at " << ex.line);
  }
  CHECK(k == expected);
  CHECK(mismatches == 0);
}

TEST_CASE("gsm8k: every train record vs the reference") {
  DISTILL_REQUIRE_SHARED(train, "data/gsm8k/train.jsonl");
  check_split(train, "gold_train.tsv", 7473);
}

TEST_CASE("gsm8k: every test record vs the reference") {
  DISTILL_REQUIRE_SHARED(test, "data/gsm8k/test.jsonl");
  check_split(test, "gold_test.tsv", 1319);
}

TEST_CASE("gsm8k: loader errors name file and line") {
  const std::string dir = std::filesystem::temp_directory_path().string();
  auto write = [&](const std::string& name, const std::string& text) {
    const std::string p = dir + "/distill_gsm8k_" + std::to_string(::getpid()) + "_" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  };
  const std::string good = "{\"question\": \"q\", \"answer\": \"a\\n#### 5\", \"extra\": 1}\n";
  const std::string p1 = write("ok.jsonl", good + "\r\n" + good);
  const auto ex = load_gsm8k(p1);
  REQUIRE(ex.size() == 2);
  CHECK(ex[1].line == 3);
  CHECK(ex[1].question == "q");
  CHECK(gsm8k_gold_answer(ex[1].answer) == "5");
  const std::string p2 = write("missing.jsonl", good + "{\"question\": \"q\"}\n");
  CHECK_THROWS_WITH_AS(load_gsm8k(p2), (p2 + ":2: missing field \"answer\"").c_str(), Error);
  const std::string p3 = write("type.jsonl", good + good + "{\"question\": 3, \"answer\": \"a\"}\n");
  CHECK_THROWS_WITH_AS(load_gsm8k(p3), (p3 + ":3: field \"question\" must be a string, got an integer").c_str(), Error);
  const std::string p4 = write("array.jsonl", "[\"q\", \"a\"]\n");
  CHECK_THROWS_WITH_AS(load_gsm8k(p4), (p4 + ":1: expected a JSON object, got an array").c_str(), Error);
  for (const auto& p : {p1, p2, p3, p4}) std::filesystem::remove(p);
}

TEST_CASE("gsm8k: reference rules on written cases") {
  // OpenAI extract_answer and the annotation rule (values worked out from the Python source by hand).
  CHECK(gsm8k_gold_answer("x\n#### 1,234") == "1234");
  CHECK(gsm8k_gold_answer("#### -3.5, ") == "-3.5");
  CHECK(gsm8k_gold_answer("no answer") == "[invalid]");
  CHECK(gsm8k_gold_answer("####5") == "[invalid]");
  CHECK(strip_calculator_annotations("$<<50*3=150>>150 and <<a\nb>>") == "$150 and <<a\nb>>");
  CHECK(strip_calculator_annotations("<<<1>>> <<x") == "> <<x");
  // The cot strict regex ends in ".", any character but a newline: "The answer is 10" at the very end
  // gives "1".
  CHECK(lm_eval_gsm8k(Gsm8kTask::kGsm8kCot).strict.apply("The answer is 10") == "1");
  CHECK(lm_eval_gsm8k(Gsm8kTask::kGsm8kCot).strict.apply("The answer is 1") == "[invalid]");
  CHECK(lm_eval_gsm8k().flexible.apply("a 1,000.00 b 7") == "7");
  CHECK(lm_eval_gsm8k().exact_match("$1,000.", "x\n#### 1,000"));
  CHECK_FALSE(lm_eval_gsm8k().exact_match("1000", "x\n#### 1,000\n"));  // the reference keeps its final "\n"
}

TEST_CASE("gsm8k: our answer extraction and answers_match") {
  // \boxed: the last complete one, braces balanced, escaped braces ignored.
  CHECK(extract_boxed(R"(a \boxed{1} b \boxed{\frac{1}{2}} c)") == std::optional<std::string>(R"(\frac{1}{2})"));
  CHECK(extract_boxed(R"(\boxed{3} then \boxed{4)") == std::optional<std::string>("3"));
  CHECK(extract_boxed(R"(\boxed{\{5\}})") == std::optional<std::string>(R"(\{5\})"));
  CHECK(extract_boxed(R"(\boxed {9})") == std::optional<std::string>("9"));
  CHECK(extract_boxed("\\boxed 9") == std::nullopt);
  CHECK(extract_boxed("no box") == std::nullopt);
  CHECK(extract_boxed("\\boxed") == std::nullopt);
  // Phrases.
  CHECK(extract_answer_phrase("The answer is 5. Then the final answer is $1,234.50.") ==
        std::optional<std::string>("1,234.50"));
  CHECK(extract_answer_phrase("THE FINAL ANSWER IS: **-7**") == std::optional<std::string>("-7"));
  CHECK(extract_answer_phrase("the answer is seven") == std::nullopt);
  CHECK(extract_hash_answer("#### 1,234.\n#### 9") == std::optional<std::string>("1,234."));
  CHECK(extract_last_number("a 3 b 4,000") == std::optional<std::string>("4,000"));
  CHECK(extract_last_number("none") == std::nullopt);
  // Normalization.
  CHECK(normalize_answer("1,000.50") == "1000.5");
  CHECK(normalize_answer(" $18.00. ") == "18");
  CHECK(normalize_answer("\\$1,000") == "1000");
  CHECK(normalize_answer("\\frac{1}{2}") == "0.5");
  CHECK(normalize_answer("\\dfrac{-3}{8}") == "-0.375");
  CHECK(normalize_answer("2/3") == "2/3");
  CHECK(normalize_answer("6/3") == "2");
  CHECK(normalize_answer("18 \\text{ dollars}") == "18");
  CHECK(normalize_answer("\\text{18}") == "18");
  CHECK(normalize_answer("x = 5") == "5");
  CHECK(normalize_answer("2x + 3") == "2x + 3");
  CHECK(normalize_answer("\u22125") == "-5");
  CHECK(normalize_answer("-0.0") == "0");
  CHECK(normalize_answer("+007") == "7");
  CHECK(normalize_answer(".5") == "0.5");
  CHECK(normalize_answer("50\\%") == "50");
  CHECK(normalize_answer("90^\\circ") == "90");
  CHECK(normalize_answer("") == "");
  // The chain: \boxed, then ####, then the phrase, then the last number.
  CHECK(extract_model_answer("#### 5\n\\boxed{6}") == std::optional<std::string>("6"));
  CHECK(extract_model_answer("The answer is 7.\n#### 8") == std::optional<std::string>("8"));
  CHECK(extract_model_answer("3 apples. The answer is 7. Then 9 more") == std::optional<std::string>("7"));
  CHECK(extract_model_answer("3 apples and 9 more") == std::optional<std::string>("9"));
  CHECK(extract_model_answer("\\boxed{} 5") == std::nullopt);
  CHECK(extract_model_answer("nothing") == std::nullopt);
  CHECK(extract_model_answer("It is \u22124") == std::optional<std::string>("-4"));

  CHECK(answers_match("so \\boxed{1,000}", "x\n#### 1000"));
  CHECK(answers_match("so \\boxed{\\$1,000.00}", "1,000"));
  CHECK(answers_match("The final answer is 18.", "#### 18"));
  CHECK(answers_match("<think>2+2=4</think> The answer is $4.", "4"));
  CHECK(answers_match("\\boxed{\\frac{1}{2}}", "0.5"));
  CHECK_FALSE(answers_match("\\boxed{19}", "#### 18"));
  CHECK_FALSE(answers_match("\\boxed{18} wait, 19", "#### 19"));  // boxed wins
  CHECK_FALSE(answers_match("no numbers", "#### 18"));
  CHECK_FALSE(answers_match("18", "no gold here ####"));
  CHECK_FALSE(answers_match("18", ""));
  CHECK(answers_match("x\xff 18", "18"));  // ill-formed UTF-8 reads as U+FFFD
}
