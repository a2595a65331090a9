// Teacher traces (issue 8's `generate`): the record each answered question becomes, the file of records a resumable
// run appends to, and the rejection filter that keeps only correct, complete traces for the student.
//
// A record is one JSONL line {id, question, gold, response, extracted, correct, tokens, truncated} ("extracted" is
// our answer extraction of the response, gsm8k.hpp; null when there is none). A run resumes by repairing the file's
// tail (jsonl.hpp: a killed writer leaves at most one partial line) and skipping the ids already there:
// done_trace_ids() reads them, and a duplicate id or a malformed record is an error naming its line.
// filter_trace() accepts a record when it is not truncated and its answer equals the gold one (answers_match), and
// normalizes the text the student will learn: trailing space trimmed, and a final "#### N" line with the gold
// number, GSM8K's own convention, added when the response does not already end with it.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "distill/core/error.hpp"
#include "distill/data/gsm8k.hpp"
#include "distill/data/jsonl.hpp"

namespace distill::data {

struct TraceRecord {
  std::string id;                        // stable across runs: e.g. "train-00042" (split and line of the question)
  std::string question;                  // as given to the teacher
  std::string gold;                      // the dataset's answer text (or the bare gold number)
  std::string response;                  // the teacher's generated text
  std::optional<std::string> extracted;  // extract_model_answer(response)
  bool correct = false;                  // answers_match(response, gold)
  int64_t tokens = 0;                    // generated tokens
  bool truncated = false;                // stopped by the token limit, not by an end-of-turn token

  // A record of a fresh response: extracted and correct computed here.
  static TraceRecord make(std::string id, std::string question, std::string gold, std::string response, int64_t tokens,
                          bool truncated) {
    TraceRecord r{std::move(id), std::move(question), std::move(gold), std::move(response), std::nullopt, false, tokens,
                  truncated};
    r.extracted = extract_model_answer(r.response);
    const auto g = gold_answer(r.gold);
    r.correct = r.extracted && g && *r.extracted == *g;  // answers_match, without extracting twice
    return r;
  }

  nlohmann::json to_json() const {
    return nlohmann::json{{"id", id},
                          {"question", question},
                          {"gold", gold},
                          {"response", response},
                          {"extracted", extracted ? nlohmann::json(*extracted) : nlohmann::json(nullptr)},
                          {"correct", correct},
                          {"tokens", tokens},
                          {"truncated", truncated}};
  }

  // From one line of a record file; `where` names it in errors ("traces.jsonl:12").
  static TraceRecord from_json(const nlohmann::json& j, const std::string& where) {
    auto fail = [&](const std::string& what) -> void { throw Error(where + ": " + what); };
    if (!j.is_object()) fail("a trace record must be a JSON object");
    auto str = [&](const char* k) {
      const auto it = j.find(k);
      if (it == j.end() || !it->is_string()) fail(std::string("field \"") + k + "\" must be a string");
      return it->get<std::string>();
    };
    auto boolean = [&](const char* k) {
      const auto it = j.find(k);
      if (it == j.end() || !it->is_boolean()) fail(std::string("field \"") + k + "\" must be true or false");
      return it->get<bool>();
    };
    TraceRecord r;
    r.id = str("id");
    if (r.id.empty()) fail("field \"id\" is empty");
    r.question = str("question");
    r.gold = str("gold");
    r.response = str("response");
    if (const auto it = j.find("extracted"); it != j.end() && !it->is_null()) {
      if (!it->is_string()) fail("field \"extracted\" must be a string or null");
      r.extracted = it->get<std::string>();
    }
    r.correct = boolean("correct");
    r.truncated = boolean("truncated");
    const auto t = j.find("tokens");
    if (t == j.end() || !t->is_number_integer() || (t->is_number_unsigned() && t->get<uint64_t>() > INT64_MAX) ||
        t->get<int64_t>() < 0)
      fail("field \"tokens\" must be a non-negative integer");
    r.tokens = t->get<int64_t>();
    return r;
  }
};

// The ids recorded in `path` (empty when the file does not exist). Call repair_jsonl_tail(path) first after a crash;
// a torn last line is then gone. A malformed record or an id recorded twice is an error naming the line(s).
inline std::unordered_set<std::string> done_trace_ids(const std::string& path) {
  std::unordered_set<std::string> ids;
  if (!std::filesystem::exists(path)) return ids;
  std::unordered_map<std::string, int64_t> first_line;
  JsonlReader r(path);
  nlohmann::json j;
  while (r.next(j)) {
    const std::string where = path + ":" + std::to_string(r.line_number());
    const TraceRecord rec = TraceRecord::from_json(j, where);
    const auto [it, fresh] = first_line.emplace(rec.id, r.line_number());
    if (!fresh)
      throw Error(where + ": id \"" + rec.id + "\" was already recorded on line " + std::to_string(it->second) +
                  " (two runs appended to one file?)");
    ids.insert(rec.id);
  }
  return ids;
}

struct TraceVerdict {
  bool accepted = false;
  std::string reason;  // why not, when rejected
  std::string text;    // the response the student learns from, ending in "#### N" (accepted only)
};

// The rejection filter: correct and complete traces only, normalized to end in the gold "#### N".
inline TraceVerdict filter_trace(const TraceRecord& r) {
  TraceVerdict v;
  if (r.truncated) {
    v.reason = "truncated (stopped by the token limit)";
    return v;
  }
  const auto gold = gold_answer(r.gold);
  if (!gold || !detail::canonical_number(*gold)) {
    v.reason = "the gold answer has no number";
    return v;
  }
  const std::string& g = *gold;
  const auto pred = extract_model_answer(r.response);
  if (!pred) {
    v.reason = "no answer found in the response";
    return v;
  }
  if (*pred != g) {
    v.reason = "wrong answer: " + *pred + " (gold " + g + ")";
    return v;
  }
  std::string t = r.response;
  while (!t.empty() && (t.back() == ' ' || t.back() == '\n' || t.back() == '\t' || t.back() == '\r')) t.pop_back();
  const size_t nl = t.rfind('\n');
  const std::string last = t.substr(nl == std::string::npos ? 0 : nl + 1);
  const bool ends_with_hash = last.rfind("#### ", 0) == 0 && normalize_answer(last.substr(5)) == g;
  if (!ends_with_hash) t += "\n#### " + g;
  v.accepted = true;
  v.text = std::move(t);
  return v;
}

}  // namespace distill::data
