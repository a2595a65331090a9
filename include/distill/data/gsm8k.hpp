// GSM8K: loading the JSONL files, our answer extraction for filtering teacher traces, and the lm-eval scorer.
//
// Files (openai/grade-school-math): one object per line with string fields "question" and "answer"; the answer
// ends with "#### N" (see answer.hpp for the reference rules: gold extraction, annotation stripping, lm-eval
// filters and exact_match). Extra fields are ignored; a missing or non-string field is an error with
// file:line.
//
// Our rule for accepting a teacher trace (answers_match), which is not lm-eval's:
//   1. in the model output, U+2212 (minus sign) reads as "-";
//   2. the answer is the first of: the last complete \boxed{...}; the first "#### N"; the last "The final
//      answer is N" / "The answer is N" (any case, optional ":", "**", "$" before N); the last number as
//      lm-eval's flexible-extract finds it;
//   3. both it and the gold number are normalized (normalize_answer) and compared as strings.
// extract_* functions return std::nullopt when they find nothing (not "[invalid]").
#pragma once
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <initializer_list>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/data/answer.hpp"
#include "distill/data/jsonl.hpp"

namespace distill::data {

struct Gsm8kExample {
  std::string question, answer;
  int64_t line = 0;  // 1-based line in the file
};

// Calls fn(Gsm8kExample&&) for every record, streaming.
template <class F>
void for_each_gsm8k(const std::string& path, F&& fn) {
  JsonlReader reader(path);
  nlohmann::json obj;
  while (reader.next(obj)) {
    reader.string_field(obj, "question");  // validates presence and type
    reader.string_field(obj, "answer");
    Gsm8kExample ex;
    ex.question = std::move(obj["question"].get_ref<std::string&>());
    ex.answer = std::move(obj["answer"].get_ref<std::string&>());
    ex.line = reader.line_number();
    fn(std::move(ex));
  }
}

inline std::vector<Gsm8kExample> load_gsm8k(const std::string& path) {
  std::vector<Gsm8kExample> out;
  for_each_gsm8k(path, [&](Gsm8kExample&& ex) { out.push_back(std::move(ex)); });
  return out;
}

namespace detail {

inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  size_t last = 0;
  for (size_t p = s.find(from); p != std::string_view::npos; p = s.find(from, last)) {
    out.append(s.substr(last, p - last));
    out.append(to);
    last = p + from.size();
  }
  out.append(s.substr(last));
  return out;
}

// Every "{" of `s` with the index of its matching "}" (npos if none), in order of position; "\{" and "\}" are
// not braces. One pass, so that scanning text with many unclosed braces stays linear.
inline std::vector<std::pair<size_t, size_t>> brace_pairs(std::string_view s) {
  std::vector<std::pair<size_t, size_t>> out;
  std::vector<size_t> open;  // indexes into out
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '{') {
      open.push_back(out.size());
      out.emplace_back(i, std::string_view::npos);
    } else if (s[i] == '}' && !open.empty()) {
      out[open.back()].second = i;
      open.pop_back();
    }
  }
  return out;
}

inline size_t closing_brace(const std::vector<std::pair<size_t, size_t>>& pairs, size_t open) {
  const auto it = std::lower_bound(pairs.begin(), pairs.end(), std::make_pair(open, size_t{0}));
  return it != pairs.end() && it->first == open ? it->second : std::string_view::npos;
}

// `\cmd{X}` → `X` for each listed command (exact names: "\text" does not touch "\textbf").
inline std::string unwrap_commands(std::string_view s, std::initializer_list<std::string_view> cmds) {
  const auto pairs = brace_pairs(s);
  std::vector<bool> drop(s.size(), false);
  for (std::string_view cmd : cmds) {
    for (size_t p = s.find(cmd); p != std::string_view::npos; p = s.find(cmd, p + 1)) {
      size_t q = p + cmd.size();
      if (q < s.size() && std::isalpha(static_cast<unsigned char>(s[q]))) continue;
      while (q < s.size() && s[q] == ' ') ++q;
      const size_t close = q < s.size() && s[q] == '{' ? closing_brace(pairs, q) : std::string_view::npos;
      if (close == std::string_view::npos) continue;
      for (size_t k = p; k <= q; ++k) drop[k] = true;
      drop[close] = true;
    }
  }
  std::string out;
  for (size_t i = 0; i < s.size(); ++i)
    if (!drop[i]) out.push_back(s[i]);
  return out;
}

// Python str.strip() and then any trailing "." (and whitespace around them) removed.
inline std::string_view trim_answer(std::string_view s) {
  s = text::utf8::py_strip(s);
  while (!s.empty()) {
    if (s.back() == '.') {
      s.remove_suffix(1);
      continue;
    }
    const std::string_view t = text::utf8::py_strip(s);
    if (t.size() == s.size()) break;
    s = t;
  }
  return s;
}

// "-0012.500" → "-12.5", "+.50" → "0.5", "-0.0" → "0"; nullopt if `s` is not a plain decimal number.
inline std::optional<std::string> canonical_number(std::string_view s) {
  static const PyRegex re(R"(^([+-]?)([0-9]*)(?:\.([0-9]*))?\z)");
  std::optional<std::string> out;
  re.finditer(s, [&](const PCRE2_SIZE* ov) {
    auto g = [&](int k) {
      return ov[2 * k] == PCRE2_UNSET ? std::string_view() : s.substr(ov[2 * k], ov[2 * k + 1] - ov[2 * k]);
    };
    std::string_view ip = g(2), fp = g(3);
    if (ip.empty() && fp.empty()) return false;
    while (ip.size() > 1 && ip.front() == '0') ip.remove_prefix(1);
    while (!fp.empty() && fp.back() == '0') fp.remove_suffix(1);
    const bool zero = (ip.empty() || ip == "0") && fp.empty();
    std::string num = g(1) == "-" && !zero ? "-" : "";
    num.append(ip.empty() ? std::string_view("0") : ip);
    if (!fp.empty()) {
      num.push_back('.');
      num.append(fp);
    }
    out = std::move(num);
    return false;
  });
  return out;
}

// "a/b" or "\frac{a}{b}" with integers → the exact decimal when it terminates ("3/8" → "0.375"), else nullopt.
inline std::optional<std::string> fraction_to_decimal(std::string_view s) {
  static const PyRegex re(
      R"(^(-?)(?:\\frac\{\s*(-?[0-9]{1,18})\s*\}\{\s*([0-9]{1,18})\s*\}|(-?[0-9]{1,18})/([0-9]{1,18}))\z)");
  std::optional<std::string> out;
  re.finditer(s, [&](const PCRE2_SIZE* ov) {
    auto g = [&](int k) {
      return ov[2 * k] == PCRE2_UNSET ? std::string() : std::string(s.substr(ov[2 * k], ov[2 * k + 1] - ov[2 * k]));
    };
    const bool frac = ov[4] != PCRE2_UNSET;
    int64_t a = std::stoll(frac ? g(2) : g(4)), b = std::stoll(frac ? g(3) : g(5));
    if (b == 0) return false;
    bool neg = (g(1) == "-") != (a < 0);
    if (a < 0) a = -a;
    const int64_t d = std::gcd(a, b);
    a /= d;
    b /= d;
    int64_t rest = b;
    while (rest % 2 == 0) rest /= 2;
    while (rest % 5 == 0) rest /= 5;
    if (rest != 1) return false;
    std::string num = std::to_string(a / b);
    __int128 r = a % b;
    if (r != 0) num += '.';
    while (r != 0) {
      r *= 10;
      num += static_cast<char>('0' + static_cast<int>(r / b));
      r %= b;
    }
    if (a == 0) neg = false;
    out = neg ? num.insert(0, 1, '-') : num;
    return false;
  });
  return out;
}

}  // namespace detail

// Our normalization of an extracted answer: LaTeX wrappers (\text, \textbf, \mathrm, \mathbf, \mbox, \boxed)
// unwrapped; \dfrac/\tfrac read as \frac; "$", "\$", "%", "\%", ",", "\,", "\!", "\;", "\ ", "~", "\left",
// "\right", "^\circ" removed; U+2212 read as "-"; surrounding whitespace and trailing "." removed; then a plain
// number is written canonically (no "+", no leading zeros, no trailing fractional zeros: "1,000.50" → "1000.5",
// "18.00" → "18"), an integer fraction that terminates becomes its decimal ("\frac{1}{2}" → "0.5"), and text
// holding exactly one number becomes that number ("18 dollars" → "18"); anything else stays as text.
inline std::string normalize_answer(std::string_view answer) {
  std::string s = detail::replace_all(text::utf8::repair(answer), "\u2212", "-");
  s = detail::unwrap_commands(s, {"\\textbf", "\\text", "\\mathrm", "\\mathbf", "\\mbox", "\\boxed"});
  s = detail::replace_all(s, "\\dfrac", "\\frac");
  s = detail::replace_all(s, "\\tfrac", "\\frac");
  for (std::string_view tok :
       {"\\$", "\\%", "\\,", "\\!", "\\;", "\\ ", "\\left", "\\right", "^{\\circ}", "^\\circ", "$", "%", ",", "~"})
    s = detail::replace_all(s, tok, "");
  s = std::string(detail::trim_answer(s));
  if (auto n = detail::canonical_number(s)) return *n;
  if (auto f = detail::fraction_to_decimal(s)) return *f;
  static const detail::PyRegex number(R"(-?[0-9]+(?:\.[0-9]+)?)");
  std::vector<std::string> nums;
  number.finditer(s, [&](const PCRE2_SIZE* ov) {
    nums.emplace_back(s.substr(ov[0], ov[1] - ov[0]));
    return nums.size() < 2;
  });
  if (nums.size() == 1) return *detail::canonical_number(nums[0]);
  return s;
}

// The content of the last complete \boxed{...} (braces balanced; "\{", "\}" do not count), unnormalized.
inline std::optional<std::string> extract_boxed(std::string_view text) {
  const std::string s = text::utf8::repair(text);
  const auto pairs = detail::brace_pairs(s);
  for (size_t p = s.rfind("\\boxed"); p != std::string::npos;
       p = p == 0 ? std::string::npos : s.rfind("\\boxed", p - 1)) {
    size_t q = p + 6;
    while (q < s.size() && s[q] == ' ') ++q;
    if (q >= s.size() || s[q] != '{') continue;
    const size_t close = detail::closing_brace(pairs, q);
    if (close != std::string::npos) return s.substr(q + 1, close - q - 1);
  }
  return std::nullopt;
}

// The number after the first "#### " (the OpenAI / lm-eval strict regex), unnormalized.
inline std::optional<std::string> extract_hash_answer(std::string_view text) {
  static const detail::PyRegex re(R"(#### (\-?[0-9\.\,]+))");
  const std::string s = text::utf8::repair(text);
  const auto m = re.search(s, 1);
  return m ? std::optional<std::string>(std::string(*m)) : std::nullopt;
}

// The number in the last "The final answer is N" / "The answer is N", unnormalized.
inline std::optional<std::string> extract_answer_phrase(std::string_view text) {
  static const detail::PyRegex re(
      R"((?i)\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*(?:\*\*)?\s*\\?\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?))");
  const std::string s = text::utf8::repair(text);
  std::optional<std::string> out;
  re.finditer(s, [&](const PCRE2_SIZE* ov) {
    out = s.substr(ov[2], ov[3] - ov[2]);
    return true;
  });
  return out;
}

// The last number as lm-eval's flexible-extract finds it, or nullopt where it gives "[invalid]".
inline std::optional<std::string> extract_last_number(std::string_view text) {
  std::string r = lm_eval_gsm8k().flexible.apply(text);
  if (r == kInvalidAnswer) return std::nullopt;
  return r;
}

// Our answer for a model output (rule in the file comment), normalized; nullopt when there is none (an empty
// \boxed{} counts as the answer and gives nullopt).
inline std::optional<std::string> extract_model_answer(std::string_view output) {
  const std::string s = detail::replace_all(text::utf8::repair(output), "\u2212", "-");
  std::optional<std::string> raw = extract_boxed(s);
  if (!raw) raw = extract_hash_answer(s);
  if (!raw) raw = extract_answer_phrase(s);
  if (!raw) raw = extract_last_number(s);
  if (!raw) return std::nullopt;
  std::string n = normalize_answer(*raw);
  if (n.empty()) return std::nullopt;
  return n;
}

// The gold answer, normalized: `gold` is either a whole GSM8K answer (it contains "####"; the gold number is taken
// as gsm8k_gold_answer does) or the bare gold number. nullopt when it has none.
inline std::optional<std::string> gold_answer(std::string_view gold) {
  const std::string g = gold.find("####") != std::string_view::npos ? gsm8k_gold_answer(gold) : std::string(gold);
  if (g == kInvalidAnswer) return std::nullopt;
  std::string gn = normalize_answer(g);
  if (gn.empty()) return std::nullopt;
  return gn;
}

// True when the model output's answer equals the gold one (gold as gold_answer takes it).
inline bool answers_match(std::string_view model_output, std::string_view gold) {
  const auto pred = extract_model_answer(model_output);
  if (!pred) return false;
  const auto g = gold_answer(gold);
  return g && *pred == *g;
}

// lm-eval's per-document outcome: both filters' outputs and whether exact_match accepts them.
struct Gsm8kItemScore {
  std::string strict, flexible;
  bool strict_correct = false, flexible_correct = false;
};

// Scores one model output against a GSM8K answer (the dataset's "answer" text) the way lm-eval does.
inline Gsm8kItemScore score_gsm8k(std::string_view model_output, std::string_view gold_answer,
                                  Gsm8kTask task = Gsm8kTask::kGsm8k) {
  const LmEvalGsm8k& t = lm_eval_gsm8k(task);
  const std::string ref = t.exact_match.normalize(lm_eval_gsm8k_target(gold_answer, task));
  Gsm8kItemScore r;
  r.strict = t.strict.apply(model_output);
  r.flexible = t.flexible.apply(model_output);
  r.strict_correct = t.exact_match.normalize(r.strict) == ref;
  r.flexible_correct = t.exact_match.normalize(r.flexible) == ref;
  return r;
}

// Running totals over a test set (merge() combines the parts of a data-parallel run).
struct Gsm8kScore {
  int64_t n = 0, strict_correct = 0, flexible_correct = 0, invalid_strict = 0, invalid_flexible = 0, truncated = 0;

  double strict_accuracy() const { return n > 0 ? static_cast<double>(strict_correct) / static_cast<double>(n) : 0.0; }
  double flexible_accuracy() const {
    return n > 0 ? static_cast<double>(flexible_correct) / static_cast<double>(n) : 0.0;
  }

  // `truncated`: generation stopped at the token limit (counted; scored like any other output).
  void add(const Gsm8kItemScore& item, bool truncated_output = false) {
    ++n;
    strict_correct += item.strict_correct;
    flexible_correct += item.flexible_correct;
    invalid_strict += item.strict == kInvalidAnswer;
    invalid_flexible += item.flexible == kInvalidAnswer;
    truncated += truncated_output;
  }
  Gsm8kItemScore add(std::string_view model_output, std::string_view gold_answer, bool truncated_output = false,
                     Gsm8kTask task = Gsm8kTask::kGsm8k) {
    Gsm8kItemScore item = score_gsm8k(model_output, gold_answer, task);
    add(item, truncated_output);
    return item;
  }
  void merge(const Gsm8kScore& o) {
    n += o.n;
    strict_correct += o.strict_correct;
    flexible_correct += o.flexible_correct;
    invalid_strict += o.invalid_strict;
    invalid_flexible += o.invalid_flexible;
    truncated += o.truncated;
  }
};

}  // namespace distill::data
