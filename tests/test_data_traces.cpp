// Teacher trace records (data/traces.hpp): make() extracts and judges like answers_match, JSON round trip, strict
// reading with the line named, the ids of a record file after a killed writer (torn tail repaired), duplicate ids,
// and the rejection filter: truncated, wrong, answerless traces out; accepted ones end in the gold "#### N".
#include <doctest/doctest.h>

#include <fstream>
#include <string>

#include "distill/data/traces.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::data;

namespace {
std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
const char* kGold =
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72";
}  // namespace

TEST_CASE("TraceRecord::make judges the response; JSON round trip; strict reading") {
  const auto r =
      TraceRecord::make("train-1", "How many clips?", kGold, "She sold 24 in May, so \\boxed{72}.", 41, false);
  CHECK(r.extracted == std::optional<std::string>("72"));
  CHECK(r.correct);
  const auto back = TraceRecord::from_json(r.to_json(), "t.jsonl:1");
  CHECK(back.id == r.id);
  CHECK(back.response == r.response);
  CHECK(back.extracted == r.extracted);
  CHECK(back.correct);
  CHECK(back.tokens == 41);
  const auto none = TraceRecord::make("train-2", "q", kGold, "I am not sure.", 5, true);
  CHECK_FALSE(none.extracted.has_value());
  CHECK(none.to_json().at("extracted").is_null());
  CHECK_FALSE(TraceRecord::from_json(none.to_json(), "x").extracted.has_value());
  auto j = r.to_json();
  j.erase("tokens");
  CHECK(error_of([&] { TraceRecord::from_json(j, "t.jsonl:7"); }) ==
        "t.jsonl:7: field \"tokens\" must be a non-negative integer");
  j = r.to_json();
  j["correct"] = "yes";
  CHECK(error_of([&] { TraceRecord::from_json(j, "t.jsonl:8"); }).find("\"correct\" must be true or false") !=
        std::string::npos);
  j = r.to_json();
  j["id"] = "";
  CHECK(error_of([&] { TraceRecord::from_json(j, "t.jsonl:9"); }).find("\"id\" is empty") != std::string::npos);
}

TEST_CASE("done_trace_ids: a killed writer's torn line is repaired away; duplicates and bad lines are named") {
  test::TempDir dir("traces");
  const std::string path = dir / "traces.jsonl";
  CHECK(done_trace_ids(path).empty());
  {
    JsonlWriter w(path, false);
    for (int i = 0; i < 3; ++i)
      w.write(TraceRecord::make("train-" + std::to_string(i), "q", kGold, "#### 72", 3, false).to_json());
  }
  std::ofstream(path, std::ios::app) << "{\"id\": \"train-3\", \"quest";  // killed mid-write
  CHECK(repair_jsonl_tail(path) == 3);
  const auto ids = done_trace_ids(path);
  CHECK(ids.size() == 3);
  CHECK(ids.count("train-2") == 1);
  CHECK(ids.count("train-3") == 0);
  {
    JsonlWriter w(path, true);
    w.write(TraceRecord::make("train-1", "q", kGold, "#### 72", 3, false).to_json());
  }
  CHECK(error_of([&] { done_trace_ids(path); }).find(":4: id \"train-1\" was already recorded on line 2") !=
        std::string::npos);
  std::ofstream(path, std::ios::trunc) << "{\"id\": \"a\"}\n";
  CHECK(error_of([&] { done_trace_ids(path); }).find("traces.jsonl:1: field \"question\" must be a string") !=
        std::string::npos);
}

TEST_CASE("filter_trace keeps correct, complete traces, ending in the gold #### N") {
  auto judge = [](const std::string& response, bool truncated = false, const std::string& gold = kGold) {
    return filter_trace(TraceRecord::make("id", "q", gold, response, 10, truncated));
  };
  auto v = judge("24 in May, 72 in all.\n\nThe answer is \\boxed{72}.  \n");
  CHECK(v.accepted);
  CHECK(v.text == "24 in May, 72 in all.\n\nThe answer is \\boxed{72}.\n#### 72");
  v = judge("So 72 clips.\n#### 72\n");
  CHECK(v.accepted);
  CHECK(v.text == "So 72 clips.\n#### 72");  // already ends with it: unchanged but trimmed
  v = judge("<think>\n48 / 2 = 24, 48 + 24 = 72\n</think>\n\nShe sold **72** clips in total.", false);
  CHECK(v.accepted);
  CHECK(v.text.size() > 8);
  CHECK(v.text.substr(v.text.size() - 8) == "\n#### 72");
  v = judge("Thinking... 48 + 24 = 72 so the answer is", true);
  CHECK_FALSE(v.accepted);
  CHECK(v.reason.find("truncated") != std::string::npos);
  v = judge("The answer is 70.");
  CHECK_FALSE(v.accepted);
  CHECK(v.reason == "wrong answer: 70 (gold 72)");
  v = judge("I cannot tell.");
  CHECK_FALSE(v.accepted);
  CHECK(v.reason == "no answer found in the response");
  v = judge("The total is 1,000 apples.", false, "1000");  // bare gold number, thousands separator in the text
  CHECK(v.accepted);
  CHECK(v.text.substr(v.text.size() - 9) == "#### 1000");
  CHECK(judge("#### 5", false, "no number here").reason == "the gold answer has no number");
}
