// Regular expressions of tokenizer.json files. Hugging Face `tokenizers` compiles them with Oniguruma (Ruby
// syntax, UTF-8, Unicode 16 data); we translate each pattern to PCRE2 (UTF + UCP, JIT) and reproduce the
// Oniguruma details that differ (checked against tokenizers 0.23.3 over every code point, and with probes in
// tests/test_text_tokenizer.cpp):
//   \s      White_Space (PCRE2 also matches U+180E)        \h / \H   hex digit (PCRE2: horizontal space)
//   \w      Alphabetic | M | Nd | Pc | U+00B2 U+00B3 U+00B9 U+00BC-U+00BE   \b / \B built from that \w
//   \p{X}   general categories, corrected for the newer Unicode data (unicode_delta.hpp); scripts and binary
//           properties are rejected (PCRE2's are older, and its \p{Han} means Script_Extensions)
//   \v      U+000B only                                       \uHHHH    a code point (PCRE2 lacks it)
//   \p{^X}  negated property                                  {,n}      {0,n}
//   (?m)    dot matches newline (Ruby); ^ and $ are always line anchors (PCRE2_MULTILINE)
// Constructs with no faithful translation (class intersection &&, nested classes, POSIX brackets, (?s),
// X{n}+ which Oniguruma reads as (X{n})+, \K \R \X ...) are rejected with an error, never approximated.
// Case-insensitive matching follows PCRE2's simple case folding (Oniguruma also folds "ss" to U+00DF).
// Matches are enumerated like rust-onig's find_iter: an empty match right where the previous match ended
// is skipped and the search moves on by one character.
//
// A compiled Regex is immutable and shared; each thread keeps its own PCRE2 match data and JIT stack.
#pragma once
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#if PCRE2_CODE_UNIT_WIDTH != 8
#error \
    "distill needs PCRE2's 8-bit API: define PCRE2_CODE_UNIT_WIDTH 8 (or leave it undefined) before including pcre2.h"
#endif

#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "distill/core/error.hpp"
#include "distill/text/unicode_delta.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

namespace detail {

// Class items (usable inside [...]) of Oniguruma's Unicode \s and \w (plus its delta, see unicode_delta.hpp),
// and of Rust regex's \w (added tokens' single_word).
inline constexpr const char* kOnigSpaceItems =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}";
inline constexpr const char* kOnigWordBase = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
inline constexpr const char* kRustWordItems = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}";

// Oniguruma's general category name for a \p{...} name (case, spaces, '-' and '_' ignored; long aliases), or "".
inline std::string general_category(std::string_view name) {
  std::string k;
  for (char c : name)
    if (c != ' ' && c != '-' && c != '_') k += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  static const std::pair<const char*, const char*> kAliases[] = {{"letter", "L"},
                                                                 {"mark", "M"},
                                                                 {"combiningmark", "M"},
                                                                 {"number", "N"},
                                                                 {"punctuation", "P"},
                                                                 {"punct", "P"},
                                                                 {"symbol", "S"},
                                                                 {"separator", "Z"},
                                                                 {"other", "C"},
                                                                 {"uppercaseletter", "Lu"},
                                                                 {"lowercaseletter", "Ll"},
                                                                 {"titlecaseletter", "Lt"},
                                                                 {"modifierletter", "Lm"},
                                                                 {"otherletter", "Lo"},
                                                                 {"nonspacingmark", "Mn"},
                                                                 {"spacingmark", "Mc"},
                                                                 {"enclosingmark", "Me"},
                                                                 {"decimalnumber", "Nd"},
                                                                 {"digit", "Nd"},
                                                                 {"letternumber", "Nl"},
                                                                 {"othernumber", "No"},
                                                                 {"connectorpunctuation", "Pc"},
                                                                 {"dashpunctuation", "Pd"},
                                                                 {"openpunctuation", "Ps"},
                                                                 {"closepunctuation", "Pe"},
                                                                 {"initialpunctuation", "Pi"},
                                                                 {"finalpunctuation", "Pf"},
                                                                 {"otherpunctuation", "Po"},
                                                                 {"mathsymbol", "Sm"},
                                                                 {"currencysymbol", "Sc"},
                                                                 {"modifiersymbol", "Sk"},
                                                                 {"othersymbol", "So"},
                                                                 {"spaceseparator", "Zs"},
                                                                 {"lineseparator", "Zl"},
                                                                 {"paragraphseparator", "Zp"},
                                                                 {"control", "Cc"},
                                                                 {"cntrl", "Cc"},
                                                                 {"format", "Cf"},
                                                                 {"privateuse", "Co"},
                                                                 {"unassigned", "Cn"}};
  for (const auto& [alias, gc] : kAliases)
    if (k == alias) return gc;
  for (const auto& d : kUnicodeDeltas) {
    if (d.name.size() != k.size() || d.name == "w" || d.name == "d") continue;
    bool eq = true;
    for (size_t i = 0; i < k.size(); ++i) eq = eq && (d.name[i] | 0x20) == k[i];
    if (eq) return std::string(d.name);
  }
  return "";
}

[[noreturn]] inline void regex_unsupported(std::string_view pattern, size_t at, const std::string& what) {
  throw Error("regex '" + std::string(pattern) + "': " + what + " at offset " + std::to_string(at) +
              " is not supported (no exact PCRE2 equivalent of the Oniguruma semantics)");
}

inline bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Oniguruma (Ruby syntax) pattern -> PCRE2 pattern with the same meaning (see the file comment).
inline std::string onig_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() * 2);
  const std::string space = kOnigSpaceItems;
  const std::string word = std::string(kOnigWordBase) + unicode_delta("w")->add;
  const std::string digit = std::string("\\p{Nd}") + unicode_delta("d")->add;
  const std::string W = "[" + word + "]";
  bool in_class = false;
  size_t class_start = 0;  // index in p of the first item of the current class
  size_t i = 0;
  const size_t n = p.size();
  while (i < n) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= n) regex_unsupported(p, i, "a trailing backslash");
      const char e = p[i + 1];
      switch (e) {
        case 's':
          out += in_class ? space : "[" + space + "]";
          break;
        case 'S':
          if (in_class) regex_unsupported(p, i, "\\S inside a character class");
          out += "[^" + space + "]";
          break;
        case 'w':
          out += in_class ? word : W;
          break;
        case 'W':
          if (in_class) regex_unsupported(p, i, "\\W inside a character class");
          out += "[^" + word + "]";
          break;
        case 'h':
          out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
          break;
        case 'H':
          if (in_class) regex_unsupported(p, i, "\\H inside a character class");
          out += "[^0-9a-fA-F]";
          break;
        case 'b':
          if (in_class) {
            out += "\\x{08}";
          } else {
            out += "(?:(?<=" + W + ")(?!" + W + ")|(?<!" + W + ")(?=" + W + "))";
          }
          break;
        case 'B':
          if (in_class) regex_unsupported(p, i, "\\B inside a character class");
          out += "(?:(?<=" + W + ")(?=" + W + ")|(?<!" + W + ")(?!" + W + "))";
          break;
        case 'v':
          out += "\\x{0B}";
          break;
        case 'u': {
          if (i + 6 > n || !is_hex(p[i + 2]) || !is_hex(p[i + 3]) || !is_hex(p[i + 4]) || !is_hex(p[i + 5]))
            regex_unsupported(p, i, "\\u without four hex digits");
          out += "\\x{" + std::string(p.substr(i + 2, 4)) + "}";
          i += 6;
          continue;
        }
        case 'p':
        case 'P': {
          if (i + 2 >= n || p[i + 2] != '{') regex_unsupported(p, i, "\\p without {name}");
          const size_t close = p.find('}', i + 3);
          if (close == std::string_view::npos) regex_unsupported(p, i, "an unterminated \\p{");
          std::string_view name = p.substr(i + 3, close - (i + 3));
          bool neg = e == 'P';
          if (!name.empty() && name[0] == '^') {
            neg = !neg;
            name.remove_prefix(1);
          }
          if (name.empty()) regex_unsupported(p, i, "an empty property name");
          const std::string gc = general_category(name);
          if (gc.empty())  // scripts and binary properties: PCRE2's data is older and \p{Han} uses Script_Extensions
            regex_unsupported(p, i,
                              "the Unicode property \\p{" + std::string(name) + "} (only general categories are)");
          const UnicodeDelta* d = unicode_delta(gc);
          const std::string prop = std::string(neg ? "\\P{" : "\\p{") + gc + "}";
          if (!*d->add && !*d->remove) {
            out += prop;
          } else {
            // Oniguruma's class = PCRE2's + add - remove; its complement = PCRE2's complement + remove - add
            const std::string plus = neg ? d->remove : d->add, minus = neg ? d->add : d->remove;
            if (in_class) {
              if (!minus.empty())
                regex_unsupported(p, i,
                                  "\\" + std::string(1, e) + "{" + std::string(name) +
                                      "} inside a character class (its Unicode data differs from PCRE2's)");
              out += prop + plus;
            } else if (minus.empty()) {
              out += "[" + prop + plus + "]";
            } else {
              out += "(?:(?![" + minus + "])" + (plus.empty() ? prop : "[" + prop + plus + "]") + ")";
            }
          }
          i = close + 1;
          continue;
        }
        case 'A':
        case 'z':
        case 'Z':
        case 'G':
          if (in_class) regex_unsupported(p, i, std::string("\\") + e + " inside a character class");
          out += '\\';
          out += e;
          break;
        case 'd':
          out += in_class ? digit : "[" + digit + "]";
          break;
        case 'D':
          if (in_class) regex_unsupported(p, i, "\\D inside a character class");
          out += "[^" + digit + "]";
          break;
        case 'n':
        case 't':
        case 'r':
        case 'f':
        case 'e':
        case 'a':
        case 'x':
        case 'k':
        case '0':
        case '1':
        case '2':
        case '3':
        case '4':
        case '5':
        case '6':
        case '7':
        case '8':
        case '9':
          out += '\\';
          out += e;
          break;
        default:
          if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || static_cast<unsigned char>(e) >= 0x80)
            regex_unsupported(p, i, std::string("the escape \\") + e);
          out += '\\';  // escaped punctuation: a literal in both dialects
          out += e;
          break;
      }
      i += 2;
      continue;
    }
    if (in_class) {
      if (c == '[') regex_unsupported(p, i, "a nested class or POSIX bracket");
      if (c == '&' && i + 1 < n && p[i + 1] == '&') regex_unsupported(p, i, "class intersection &&");
      if (c == ']' && i != class_start) in_class = false;
      out += c;
      ++i;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += '[';
      ++i;
      if (i < n && p[i] == '^') {
        out += '^';
        ++i;
      }
      class_start = i;
      continue;
    }
    if (c == '(' && i + 1 < n && p[i + 1] == '?') {
      if (i + 2 >= n) regex_unsupported(p, i, "an unterminated group");
      const char g = p[i + 2];
      if (g == ':' || g == '=' || g == '!' || g == '>' || g == '#' || g == '\'' ||
          (g == '<' && i + 3 < n)) {  // (?<=, (?<!, (?<name>
        out += "(?";
        i += 2;
        continue;
      }
      // Option group (?imx-imx) or (?imx-imx:...). Ruby's m is PCRE2's s.
      size_t j = i + 2;
      std::string opts;
      while (j < n && p[j] != ':' && p[j] != ')') {
        const char o = p[j];
        if (o == 'i' || o == 'x' || o == '-')
          opts += o;
        else if (o == 'm')
          opts += 's';
        else
          regex_unsupported(p, i, std::string("the group option '") + o + "'");
        ++j;
      }
      if (j >= n) regex_unsupported(p, i, "an unterminated group");
      out += "(?" + opts;
      i = j;  // ':' or ')' is copied next
      continue;
    }
    if (c == '{') {
      // An interval {n}, {n,}, {n,m} or Ruby's {,m}. Anything else is a literal brace in both dialects.
      size_t j = i + 1;
      while (j < n && ((p[j] >= '0' && p[j] <= '9') || p[j] == ',')) ++j;
      if (j < n && p[j] == '}' && j > i + 1) {
        std::string_view body = p.substr(i + 1, j - i - 1);
        const size_t comma = body.find(',');
        const bool valid =
            body.find(',', comma == std::string_view::npos ? body.size() : comma + 1) == std::string_view::npos &&
            !(comma == 0 && body.size() == 1);
        if (valid) {
          if (j + 1 < n && p[j + 1] == '+')
            regex_unsupported(p, i, "X{n,m}+ (Oniguruma reads it as (X{n,m})+, PCRE2 as possessive)");
          out += '{';
          if (comma == 0) out += '0';
          out += body;
          out += '}';
          i = j + 1;
          continue;
        }
      }
      out += "\\{";
      ++i;
      continue;
    }
    out += c;
    ++i;
  }
  if (in_class) regex_unsupported(p, n, "an unterminated character class");
  return out;
}

// Per-thread PCRE2 state, shared by every pattern: match data for the whole-match offsets and a JIT stack
// large enough for long whitespace runs.
struct PcreThreadState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  PcreThreadState() {
    md = pcre2_match_data_create(1, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    if (mctx && jit_stack) pcre2_jit_stack_assign(mctx, nullptr, jit_stack);
  }
  ~PcreThreadState() {
    if (md) pcre2_match_data_free(md);
    if (mctx) pcre2_match_context_free(mctx);
    if (jit_stack) pcre2_jit_stack_free(jit_stack);
  }
  PcreThreadState(const PcreThreadState&) = delete;
  PcreThreadState& operator=(const PcreThreadState&) = delete;
  static PcreThreadState& get() {
    thread_local PcreThreadState state;
    if (!state.md || !state.mctx) throw Error("PCRE2: out of memory creating match data");
    return state;
  }
};

struct PcreCode {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~PcreCode() {
    if (code) pcre2_code_free(code);
  }
};

}  // namespace detail

// A compiled pattern: either a literal string (searched with memmem-like scanning) or a PCRE2 program.
class Regex {
 public:
  Regex() = default;

  // An Oniguruma pattern from a tokenizer.json {"Regex": ...}.
  static Regex onig(std::string_view pattern) { return pcre2(detail::onig_to_pcre2(pattern), pattern); }

  // A {"String": ...} pattern: Hugging Face escapes it and compiles it as a regex; non-empty literals are
  // searched directly (same matches), the empty one goes through PCRE2 for its empty-match semantics.
  static Regex literal(std::string_view s) {
    if (s.empty()) return pcre2("", s);
    Regex r;
    r.literal_ = std::string(s);
    r.is_literal_ = true;
    r.source_ = std::string(s);
    return r;
  }

  // A pattern already in PCRE2 syntax (internal uses).
  static Regex pcre2(const std::string& pcre_pattern, std::string_view source, uint32_t extra_options = 0) {
    Regex r;
    r.source_ = std::string(source);
    auto code = std::make_shared<detail::PcreCode>();
    int err = 0;
    PCRE2_SIZE erroff = 0;
    pcre2_compile_context* cctx = pcre2_compile_context_create(nullptr);
    if (!cctx) throw Error("PCRE2: out of memory");
    pcre2_set_newline(cctx, PCRE2_NEWLINE_LF);
    code->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre_pattern.data()), pcre_pattern.size(),
                               PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NO_UTF_CHECK | extra_options, &err,
                               &erroff, cctx);
    pcre2_compile_context_free(cctx);
    if (!code->code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof(buf));
      throw Error("regex '" + std::string(source) + "' does not compile: " + reinterpret_cast<const char*>(buf) +
                  " (at offset " + std::to_string(erroff) + " of the translated pattern '" + pcre_pattern + "')");
    }
    code->jit = pcre2_jit_compile(code->code, PCRE2_JIT_COMPLETE) == 0;
    r.code_ = std::move(code);
    return r;
  }

  bool valid() const { return is_literal_ || code_ != nullptr; }
  const std::string& source() const { return source_; }

  // Leftmost match starting at or after `start`: true and [ms, me) when found.
  bool search(std::string_view text, size_t start, size_t& ms, size_t& me) const {
    if (is_literal_) {
      if (start > text.size()) return false;
      const size_t f = text.find(literal_, start);
      if (f == std::string_view::npos) return false;
      ms = f;
      me = f + literal_.size();
      return true;
    }
    DISTILL_CHECK(code_ != nullptr, "regex used before it was compiled");
    auto& st = detail::PcreThreadState::get();
    const auto* subj = reinterpret_cast<PCRE2_SPTR>(text.data() ? text.data() : "");
    int rc;
    if (code_->jit)
      rc = pcre2_jit_match(code_->code, subj, text.size(), start, 0, st.md, st.mctx);
    else
      rc = pcre2_match(code_->code, subj, text.size(), start, PCRE2_NO_UTF_CHECK, st.md, st.mctx);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof(buf));
      throw Error("regex '" + source_ + "' failed on an input of " + std::to_string(text.size()) +
                  " bytes: " + reinterpret_cast<const char*>(buf));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    ms = ov[0];
    me = ov[1];
    return true;
  }

  // Every match in order, as rust-onig's find_iter yields them: f(start, end).
  template <class F>
  void for_each_match(std::string_view text, F&& f) const {
    const size_t n = text.size();
    if (is_literal_) {
      size_t pos = 0;
      while (pos <= n) {
        const size_t s = text.find(literal_, pos);
        if (s == std::string_view::npos) break;
        f(s, s + literal_.size());
        pos = s + literal_.size();
      }
      return;
    }
    size_t pos = 0, last_end = std::string_view::npos;
    while (pos <= n) {
      size_t s, e;
      if (!search(text, pos, s, e)) break;
      if (s == e) {
        const size_t step = e < n ? static_cast<size_t>(utf8::char_len(static_cast<unsigned char>(text[e]))) : 1;
        if (e == last_end) {  // empty match right after the previous match: skipped
          pos = e + step;
          continue;
        }
        f(s, e);
        last_end = e;
        pos = e + step;
      } else {
        f(s, e);
        last_end = e;
        pos = e;
      }
    }
  }

  // Whether the pattern matches at exactly `pos` (anchored), for small single-character class tests.
  bool matches_at(std::string_view text, size_t pos) const {
    size_t s, e;
    return search(text, pos, s, e) && s == pos;
  }

 private:
  std::shared_ptr<detail::PcreCode> code_;
  std::string literal_;
  bool is_literal_ = false;
  std::string source_;
};

}  // namespace distill::text
