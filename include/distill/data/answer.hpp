// Final answers in GSM8K text: the reference rules, reproduced exactly (our own extraction rules for filtering
// teacher traces and the scorer are in gsm8k.hpp).
//
// Reference rules (each returns what the Python reference returns, "[invalid]" included):
//  - strip_calculator_annotations: `re.sub(r"<<.*?>>", "", s)` (the OpenAI README says "remove any string that
//    starts with << and ends with >>" and gives no code; this is the usual reading: shortest span, not across
//    a newline; an unterminated "<<" stays).
//  - gsm8k_gold_answer: grade_school_math/dataset.py extract_answer: first `#### (\-?[0-9\.\,]+)`, group
//    stripped, commas removed; "[invalid]" when absent.
//  - RegexFilter: lm_eval.filters.extraction.RegexFilter.apply (findall, group_select, tuple → first
//    non-empty group, strip, fallback). ExactMatch: lm_eval.api.metrics.exact_match_hf_evaluate for one
//    prediction/reference pair, including NumPy's quirks (trailing NULs dropped after every step; lower()
//    is str.lower() cut to the original length).
//  - lm_eval_gsm8k(task): the strict-match / flexible-extract filters and the exact_match settings of
//    lm-eval 0.4.13's gsm8k.yaml, gsm8k-cot.yaml and gsm8k-cot-zeroshot.yaml.
// Regexes run on PCRE2 in UTF + UCP mode with LF newlines, which gives Python `re` semantics for these
// patterns: `.` stops at "\n", `$` also matches before a final "\n", empty matches are handled as in
// re.finditer / re.sub (Python >= 3.7). Text that is not valid UTF-8 is first decoded the way Python's
// bytes.decode("utf-8", "replace") does (each maximal ill-formed subpart becomes U+FFFD).
#pragma once
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#if PCRE2_CODE_UNIT_WIDTH != 8
#error \
    "distill needs PCRE2's 8-bit API: define PCRE2_CODE_UNIT_WIDTH 8 (or leave it undefined) before including pcre2.h"
#endif
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/text/utf8.hpp"

namespace distill::data {

inline constexpr std::string_view kInvalidAnswer = "[invalid]";

namespace detail {

// The code points of s; each maximal ill-formed subpart becomes U+FFFD (Python's decode with errors="replace").
inline std::vector<char32_t> utf8_decode(std::string_view s) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const int l = text::utf8::sequence_length(p + i, s.size() - i);
    if (l > 0) {
      cps.push_back(text::utf8::next(s, i));
    } else {
      cps.push_back(text::utf8::kReplacement);
      i += static_cast<size_t>(-l);
    }
  }
  return cps;
}

inline std::string utf8_encode(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) text::utf8::append(out, c);
  return out;
}

// Unicode Cased / Case_Ignorable, as Python's Final_Sigma rule uses them (approximated from utf8proc's
// categories and case mappings plus the Word_Break MidLetter/MidNumLet/Single_Quote characters).
inline bool is_cased(char32_t c) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT ||
         utf8proc_tolower(static_cast<utf8proc_int32_t>(c)) != static_cast<utf8proc_int32_t>(c) ||
         utf8proc_toupper(static_cast<utf8proc_int32_t>(c)) != static_cast<utf8proc_int32_t>(c);
}
inline bool is_case_ignorable(char32_t c) {
  switch (c) {
    case 0x27:
    case 0x2E:
    case 0x3A:
    case 0xB7:
    case 0x387:
    case 0x55F:
    case 0x5F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A:
      return true;
    default:
      break;
  }
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
         cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK;
}

// numpy.char.lower on a one-element str array: Python's str.lower() (full mapping: U+0130 → "i\u0307", final
// sigma), then cut to the array's width, i.e. the input's length in code points.
inline std::string numpy_lower(std::string_view s) {
  const std::vector<char32_t> in = utf8_decode(s);
  std::vector<char32_t> out;
  out.reserve(in.size() + 1);
  for (size_t i = 0; i < in.size(); ++i) {
    const char32_t c = in[i];
    if (c == 0x130) {
      out.push_back('i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {
      size_t j = i;
      while (j > 0 && is_case_ignorable(in[j - 1])) --j;
      bool final_sigma = j > 0 && is_cased(in[j - 1]);
      if (final_sigma) {
        size_t k = i + 1;
        while (k < in.size() && is_case_ignorable(in[k])) ++k;
        final_sigma = k == in.size() || !is_cased(in[k]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    }
  }
  if (out.size() > in.size()) out.resize(in.size());
  return utf8_encode(out);
}

inline void drop_trailing_nuls(std::string& s) {
  while (!s.empty() && s.back() == '\0') s.pop_back();
}

// A Python `re` pattern rewritten where PCRE2 (UTF + UCP) reads it differently: `\s` also matches U+001C..U+001F
// and U+0085 in Python (str.isspace), `\Z` is the very end (PCRE2's `\z`), and `\uXXXX` / `\UXXXXXXXX` are code
// points. (`\S` inside a character class keeps PCRE2's meaning.)
inline std::string python_pattern_to_pcre2(std::string_view p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[++i];
      const size_t hex = n == 'u' ? 4 : n == 'U' ? 8 : 0;
      if (n == 's') {
        out += in_class ? "\\s\\x1c-\\x1f\\x85" : "[\\s\\x1c-\\x1f\\x85]";
      } else if (n == 'S' && !in_class) {
        out += "[^\\s\\x1c-\\x1f\\x85]";
      } else if (n == 'Z' && !in_class) {
        out += "\\z";
      } else if (hex > 0 && i + hex < p.size() &&
                 std::all_of(p.begin() + static_cast<std::ptrdiff_t>(i + 1),
                             p.begin() + static_cast<std::ptrdiff_t>(i + 1 + hex),
                             [](char h) { return std::isxdigit(static_cast<unsigned char>(h)) != 0; })) {
        out += "\\x{" + std::string(p.substr(i + 1, hex)) + "}";
        i += hex;
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    out += c;
    if (!in_class && c == '[') {
      in_class = true;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading "]" is literal
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

// A compiled regex with Python `re` semantics (see the file comment); subjects must be valid UTF-8.
class PyRegex {
 public:
  explicit PyRegex(std::string_view python_pattern) : pattern_(python_pattern) {
    const std::string pattern = python_pattern_to_pcre2(python_pattern);
    std::unique_ptr<pcre2_compile_context, decltype(&pcre2_compile_context_free)> ctx(
        pcre2_compile_context_create(nullptr), &pcre2_compile_context_free);
    if (!ctx) throw Error("regex: out of memory");
    pcre2_set_newline(ctx.get(), PCRE2_NEWLINE_LF);
    int err = 0;
    PCRE2_SIZE off = 0;
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                              &off, ctx.get()));
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error("regex /" + pattern_ + "/ does not compile at offset " + std::to_string(off) + ": " +
                  reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is missing
    pcre2_pattern_info(code_.get(), PCRE2_INFO_CAPTURECOUNT, &groups_);
  }

  uint32_t groups() const { return groups_; }
  const std::string& pattern() const { return pattern_; }

  // re.finditer: fn(ovector) for each match in order (ovector[2g], ovector[2g+1]: span of group g, PCRE2_UNSET
  // when it did not take part); fn returns false to stop.
  template <class Fn>
  void finditer(std::string_view s, Fn&& fn) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), &pcre2_match_data_free);
    if (!md) throw Error("regex: out of memory");
    const auto subject = reinterpret_cast<PCRE2_SPTR>(s.empty() ? "" : s.data());
    size_t start = 0;
    uint32_t opts = 0;
    while (start <= s.size()) {
      const int rc = pcre2_match(code_.get(), subject, s.size(), start, opts | PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error("regex /" + pattern_ + "/: matching failed: " + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      if (!fn(ov)) return;
      // After an empty match Python searches on from the same place but refuses another empty match there.
      opts = ov[0] == ov[1] ? PCRE2_NOTEMPTY_ATSTART : 0;
      start = ov[1];
    }
  }

  // Span of group g of the first match (re.search), or nullopt.
  std::optional<std::string_view> search(std::string_view s, uint32_t g = 0) const {
    std::optional<std::string_view> out;
    finditer(s, [&](const PCRE2_SIZE* ov) {
      out = ov[2 * g] == PCRE2_UNSET ? std::string_view() : s.substr(ov[2 * g], ov[2 * g + 1] - ov[2 * g]);
      return false;
    });
    return out;
  }

  // re.sub(pattern, repl, s) with a literal replacement.
  std::string sub(std::string_view s, std::string_view repl) const {
    std::string out;
    size_t last = 0;
    finditer(s, [&](const PCRE2_SIZE* ov) {
      out.append(s.substr(last, ov[0] - last));
      out.append(repl);
      last = ov[1];
      return true;
    });
    out.append(s.substr(last));
    return out;
  }

 private:
  std::string pattern_;
  std::unique_ptr<pcre2_code, decltype(&pcre2_code_free)> code_{nullptr, &pcre2_code_free};
  uint32_t groups_ = 0;
};

}  // namespace detail

// Calculator annotations removed: re.sub(r"<<.*?>>", "", text), written out so that it stays linear on text
// with many "<<" and no ">>" on the same line (the regex would rescan the line from every "<<").
inline std::string strip_calculator_annotations(std::string_view text) {
  const std::string s = text::utf8::repair(text);
  std::string out;
  size_t last = 0;
  for (size_t p = s.find("<<"); p != std::string::npos;) {
    const size_t close = s.find(">>", p + 2);
    const size_t nl = s.find('\n', p + 2);
    if (close != std::string::npos && close < nl) {  // the shortest "<<...>>" from p, not across a newline
      out.append(s, last, p - last);
      last = close + 2;
      p = s.find("<<", last);
    } else if (nl != std::string::npos) {  // no match starts before this newline
      p = s.find("<<", nl + 1);
    } else {
      break;
    }
  }
  out.append(s, last);
  return out;
}

// The OpenAI reference gold answer (extract_answer): "1,234" → "1234"; "[invalid]" without "#### N".
inline std::string gsm8k_gold_answer(std::string_view answer) {
  static const detail::PyRegex re(R"(#### (\-?[0-9\.\,]+))");
  const std::string s = text::utf8::repair(answer);
  const auto m = re.search(s, 1);
  if (!m) return std::string(kInvalidAnswer);
  std::string out;
  for (char c : text::utf8::py_strip(*m))
    if (c != ',') out.push_back(c);
  return out;
}

// lm_eval.filters.extraction.RegexFilter for one response. group_select indexes the findall list like
// Python (negative from the end); an index past the matches is an error (Python raises IndexError).
class RegexFilter {
 public:
  explicit RegexFilter(std::string_view pattern = R"(#### (\-?[0-9\.\,]+))", int group_select = 0,
                       std::string fallback = std::string(kInvalidAnswer))
      : re_(pattern), group_select_(group_select), fallback_(std::move(fallback)) {}

  std::string apply(std::string_view response) const {
    const std::string s = text::utf8::repair(response);
    // Keep only the match group_select picks: the k-th from the front, or the last |k| seen.
    const size_t keep = group_select_ >= 0 ? 1 : static_cast<size_t>(-static_cast<int64_t>(group_select_));
    std::vector<std::vector<PCRE2_SIZE>> kept;
    int64_t count = 0;
    const uint32_t ng = re_.groups();
    re_.finditer(s, [&](const PCRE2_SIZE* ov) {
      if (group_select_ < 0 || count == group_select_) {
        if (kept.size() == keep) kept.erase(kept.begin());
        kept.emplace_back(ov, ov + 2 * (ng + 1));
      }
      ++count;
      return group_select_ < 0 || count <= group_select_;
    });
    if (count == 0) return fallback_;
    if ((group_select_ >= 0 && count <= group_select_) || (group_select_ < 0 && kept.size() < keep))
      throw Error("RegexFilter /" + re_.pattern() + "/: group_select " + std::to_string(group_select_) +
                  " is out of range for " + std::to_string(count) + " matches");
    const auto& ov = kept.front();
    auto group = [&](uint32_t g) {
      return ov[2 * g] == PCRE2_UNSET ? std::string_view()
                                      : std::string_view(s).substr(ov[2 * g], ov[2 * g + 1] - ov[2 * g]);
    };
    std::string_view m;
    if (ng == 0) {
      m = group(0);
    } else if (ng == 1) {
      m = group(1);
    } else {  // findall gives a tuple: its first non-empty group, else the fallback
      m = fallback_;
      for (uint32_t g = 1; g <= ng; ++g)
        if (!group(g).empty()) {
          m = group(g);
          break;
        }
    }
    return std::string(text::utf8::py_strip(m));
  }

  const std::string& pattern() const { return re_.pattern(); }
  int group_select() const { return group_select_; }
  const std::string& fallback() const { return fallback_; }

 private:
  detail::PyRegex re_;
  int group_select_;
  std::string fallback_;
};

// lm_eval.api.metrics.exact_match_hf_evaluate for one prediction/reference pair.
class ExactMatch {
 public:
  ExactMatch(const std::vector<std::string>& regexes_to_ignore, bool ignore_case, bool ignore_punctuation = false,
             bool ignore_numbers = false)
      : ignore_case_(ignore_case), ignore_punctuation_(ignore_punctuation), ignore_numbers_(ignore_numbers) {
    for (const auto& r : regexes_to_ignore) regexes_.push_back(std::make_unique<detail::PyRegex>(r));
  }

  // The string that gets compared.
  std::string normalize(std::string_view text) const {
    std::string s = text::utf8::repair(text);
    for (const auto& re : regexes_) {
      s = re->sub(s, "");
      detail::drop_trailing_nuls(s);  // np.array(...) of str drops trailing NULs
    }
    detail::drop_trailing_nuls(s);
    if (ignore_case_) s = detail::numpy_lower(s);
    if (ignore_punctuation_ || ignore_numbers_) {
      static constexpr std::string_view kPunct = R"(!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~)";
      std::string t;
      for (char c : s) {
        const bool punct = ignore_punctuation_ && kPunct.find(c) != std::string_view::npos;
        const bool digit = ignore_numbers_ && c >= '0' && c <= '9';
        if (!punct && !digit) t.push_back(c);
      }
      s = std::move(t);
    }
    return s;
  }

  bool operator()(std::string_view prediction, std::string_view reference) const {
    return normalize(prediction) == normalize(reference);
  }

  std::vector<std::string> regexes_to_ignore() const {
    std::vector<std::string> out;
    for (const auto& re : regexes_) out.push_back(re->pattern());
    return out;
  }
  bool ignore_case() const { return ignore_case_; }

 private:
  std::vector<std::unique_ptr<detail::PyRegex>> regexes_;
  bool ignore_case_, ignore_punctuation_, ignore_numbers_;
};

// The lm-eval GSM8K generative tasks (lm-eval 0.4.13 task YAMLs).
enum class Gsm8kTask {
  kGsm8k,            // gsm8k: "Question: ...\nAnswer:", 5-shot; strict "#### N"
  kGsm8kCot,         // gsm8k_cot: 8-shot chain of thought; strict "The answer is N."; target after the last "####"
  kGsm8kCotZeroshot  // gsm8k_cot_zeroshot: "Let's think step by step."; strict "The answer is N."
};

struct LmEvalGsm8k {
  RegexFilter strict;             // filter "strict-match" (regex, take_first)
  RegexFilter flexible;           // filter "flexible-extract" (regex with group_select -1, take_first)
  ExactMatch exact_match;         // metric exact_match with the task's regexes_to_ignore, ignore_case
  bool target_after_last_hashes;  // doc_to_target: answer.split('####')[-1].strip() instead of the answer
};

inline const std::vector<std::string>& lm_eval_gsm8k_regexes_to_ignore() {
  static const std::vector<std::string> r = {",", R"(\$)", "(?s).*#### ", R"(\.$)"};
  return r;
}

inline const LmEvalGsm8k& lm_eval_gsm8k(Gsm8kTask task = Gsm8kTask::kGsm8k) {
  static const auto make = [](std::string_view strict, bool after_hashes) {
    return LmEvalGsm8k{RegexFilter(strict, 0), RegexFilter(R"((-?[$0-9.,]{2,})|(-?[0-9]+))", -1),
                       ExactMatch(lm_eval_gsm8k_regexes_to_ignore(), /*ignore_case=*/true), after_hashes};
  };
  static const LmEvalGsm8k gsm8k = make(R"(#### (\-?[0-9\.\,]+))", false);
  static const LmEvalGsm8k cot = make(R"(The answer is (\-?[0-9\.\,]+).)", true);
  static const LmEvalGsm8k cot_zeroshot = make(R"(The answer is (\-?[0-9\.\,]+).)", false);
  switch (task) {
    case Gsm8kTask::kGsm8kCot:
      return cot;
    case Gsm8kTask::kGsm8kCotZeroshot:
      return cot_zeroshot;
    default:
      return gsm8k;
  }
}

// The task's reference string for a GSM8K answer (doc_to_target).
inline std::string lm_eval_gsm8k_target(std::string_view answer, Gsm8kTask task = Gsm8kTask::kGsm8k) {
  const std::string s = text::utf8::repair(answer);
  if (!lm_eval_gsm8k(task).target_after_last_hashes) return s;
  const size_t p = s.rfind("####");
  return std::string(
      text::utf8::py_strip(p == std::string::npos ? std::string_view(s) : std::string_view(s).substr(p + 4)));
}

}  // namespace distill::data
