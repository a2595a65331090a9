// tokenizer.json normalizers: NFC, NFD, NFKC, NFKD (utf8proc), Replace (String or Regex pattern, literal
// content), Prepend, Lowercase, Strip and Sequence (flattened into one list of steps). Each step maps the
// whole normalized string to a new string, as Hugging Face `tokenizers` does on a NormalizedString; of its
// alignments only "which leading bytes stand for input offset 0" is tracked (Metaspace's "first" needs it).
// Unicode data: tokenizers normalizes with Unicode 10 tables and lowercases with Rust's (Unicode 16) mapping;
// utf8proc 2.8 is Unicode 15, so code points unknown to the older tables are kept verbatim and the newer case
// pairs come from a table (unicode_delta.hpp); both checked against tokenizers over every code point.
#pragma once
#include <utf8proc.h>

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "distill/text/json_util.hpp"
#include "distill/text/regex.hpp"
#include "distill/text/unicode_delta.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

// Unicode White_Space (Rust char::is_whitespace, Oniguruma and Rust regex \s).
inline bool is_white_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

class Normalizer {
 public:
  enum class Kind { NFC, NFD, NFKC, NFKD, Replace, Prepend, Lowercase, Strip };
  struct Step {
    Kind kind;
    Regex pattern;                     // Replace
    std::string content;               // Replace, Prepend
    bool left = false, right = false;  // Strip
  };

  bool empty() const { return steps_.empty(); }
  const std::vector<Step>& steps() const { return steps_; }

  static Normalizer from_json(const detail::JsonRef& j) {
    Normalizer n;
    if (!j.is_null()) n.add(j);
    return n;
  }

  // Normalizes `in` into `out` (out is overwritten; in must not alias out).
  // origin (optional, in/out): how many leading bytes stand for offset 0 of the original input (0: none), as
  // tokenizers' alignments would say; Metaspace's prepend_scheme "first" depends on it. Each step carries it
  // over: a prefix or replacement aligned with the first character keeps it, removing that character loses it.
  void apply(std::string_view in, std::string& out, uint32_t* origin = nullptr) const {
    out.assign(in.data(), in.size());
    if (steps_.empty()) return;
    std::string tmp;
    for (const Step& s : steps_) {
      if (apply_step(s, out, tmp, origin && *origin ? origin : nullptr)) out.swap(tmp);
    }
  }

 private:
  std::vector<Step> steps_;

  void add(const detail::JsonRef& j, int depth = 0) {
    if (depth > 32) j.fail("normalizer nesting is too deep (more than 32 Sequence levels)");
    const std::string& type = j.type();
    if (type == "Sequence") {
      const auto list = j.at("normalizers").array();
      for (size_t i = 0; i < list.size(); ++i) add(list.at(i), depth + 1);
      return;
    }
    Step s;
    if (type == "NFC") {
      s.kind = Kind::NFC;
    } else if (type == "NFD") {
      s.kind = Kind::NFD;
    } else if (type == "NFKC") {
      s.kind = Kind::NFKC;
    } else if (type == "NFKD") {
      s.kind = Kind::NFKD;
    } else if (type == "Lowercase") {
      s.kind = Kind::Lowercase;
    } else if (type == "Prepend") {
      s.kind = Kind::Prepend;
      s.content = j.at("prepend").str();
    } else if (type == "Strip") {
      s.kind = Kind::Strip;
      s.left = j.at("strip_left").boolean();
      s.right = j.at("strip_right").boolean();
    } else if (type == "Replace") {
      s.kind = Kind::Replace;
      s.pattern = pattern_from_json(j.at("pattern"));
      s.content = j.at("content").str();
    } else {
      j.fail("unsupported normalizer type \"" + type +
             "\" (supported: NFC, NFD, NFKC, NFKD, Replace, Prepend, Lowercase, Strip, Sequence)");
    }
    steps_.push_back(std::move(s));
  }

 public:
  // {"String": s} or {"Regex": r} (Replace, Split).
  static Regex pattern_from_json(const detail::JsonRef& p) {
    if (!p->is_object() || p->size() != 1) p.fail("expected a pattern {\"String\": ...} or {\"Regex\": ...}");
    try {
      if (p.has("String")) return Regex::literal(p.at("String").str());
      if (p.has("Regex")) return Regex::onig(p.at("Regex").str());
    } catch (const Error& e) {
      p.fail(e.what());
    }
    p.fail("expected a pattern {\"String\": ...} or {\"Regex\": ...}");
  }

 private:
  // utf8proc over `in`, except that code points unknown to tokenizers' (older) tables are copied verbatim and
  // the text between them is normalized separately (they are starters without decomposition there).
  static bool unicode_map(std::string_view in, std::string& out, int options) {
    size_t i = 0, run = 0;
    bool opaque = false;
    while (i < in.size()) {
      const size_t at = i;
      if (static_cast<unsigned char>(in[i]) < 0x80) {
        ++i;
        continue;
      }
      if (detail::normalization_opaque(utf8::next(in, i))) {
        if (!opaque) out.clear();
        opaque = true;
        std::string part;
        if (at > run) utf8proc_run(in.substr(run, at - run), part, options), out += part;
        out.append(in.substr(at, i - at));
        run = i;
      }
    }
    if (!opaque) return utf8proc_run(in, out, options);
    if (run < in.size()) {
      std::string part;
      utf8proc_run(in.substr(run), part, options);
      out += part;
    }
    return true;
  }

  static bool utf8proc_run(std::string_view in, std::string& out, int options) {
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t r =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data()), static_cast<utf8proc_ssize_t>(in.size()),
                     &dst, static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
    if (r < 0) {
      std::free(dst);
      throw Error(std::string("Unicode normalization failed: ") + utf8proc_errmsg(r));
    }
    out.assign(reinterpret_cast<const char*>(dst), static_cast<size_t>(r));
    std::free(dst);
    return true;
  }

  // Applies one step to s; returns true when the result is in tmp (then swapped), false when s is unchanged.
  // The normalized form of s[0, o) alone (origin tracking through NFx and Lowercase).
  static uint32_t mapped_prefix(const Step& st, const std::string& s, uint32_t o, const std::string& result) {
    std::string prefix_out;
    std::string tmp;
    if (apply_step(st, s.substr(0, std::min<size_t>(o, s.size())), tmp, nullptr))
      prefix_out = tmp;
    else
      prefix_out = s.substr(0, std::min<size_t>(o, s.size()));
    size_t n = prefix_out.size();
    // a composed first character also stands for offset 0
    if (!result.empty())
      n = std::max<size_t>(n, static_cast<size_t>(utf8::char_len(static_cast<unsigned char>(result[0]))));
    return static_cast<uint32_t>(std::min(n, result.size()));
  }

  static bool apply_step(const Step& st, const std::string& s, std::string& tmp, uint32_t* origin) {
    switch (st.kind) {
      case Kind::NFC: {
        // Code points below U+0300 (lead bytes < 0xCC) are NFC-stable and cannot combine with a later one.
        bool simple = true;
        for (unsigned char c : s)
          if (c >= 0xCC) {
            simple = false;
            break;
          }
        if (simple) return false;
        {
          unicode_map(s, tmp, UTF8PROC_COMPOSE);
          if (origin) *origin = mapped_prefix(st, s, *origin, tmp);
          return true;
        }
      }
      case Kind::NFD:
        if (utf8::is_ascii(s)) return false;
        {
          unicode_map(s, tmp, UTF8PROC_DECOMPOSE);
          if (origin) *origin = mapped_prefix(st, s, *origin, tmp);
          return true;
        }
      case Kind::NFKC:
        if (utf8::is_ascii(s)) return false;
        {
          unicode_map(s, tmp, UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
          if (origin) *origin = mapped_prefix(st, s, *origin, tmp);
          return true;
        }
      case Kind::NFKD:
        if (utf8::is_ascii(s)) return false;
        {
          unicode_map(s, tmp, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
          if (origin) *origin = mapped_prefix(st, s, *origin, tmp);
          return true;
        }
      case Kind::Lowercase: {
        tmp.clear();
        tmp.reserve(s.size());
        size_t i = 0;
        while (i < s.size()) {
          const unsigned char b = static_cast<unsigned char>(s[i]);
          if (b < 0x80) {
            tmp.push_back(static_cast<char>(b >= 'A' && b <= 'Z' ? b + 32 : b));
            ++i;
            continue;
          }
          const char32_t c = utf8::next(s, i);
          if (c == 0x130) {  // Rust's char::to_lowercase: the only unconditional multi-char mapping
            tmp += "i\xCC\x87";
          } else if (const char32_t x = detail::lowercase_extra(c)) {
            utf8::append(tmp, x);
          } else {
            utf8::append(tmp, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
          }
        }
        if (origin) *origin = mapped_prefix(st, s, *origin, tmp);
        return true;
      }
      case Kind::Prepend:
        if (s.empty()) return false;
        tmp = st.content;
        tmp += s;
        if (origin) *origin += static_cast<uint32_t>(st.content.size());
        return true;
      case Kind::Strip: {
        size_t b = 0, e = s.size();
        if (st.left) {
          while (b < e) {
            size_t k = b;
            if (!is_white_space(utf8::next(s, k))) break;
            b = k;
          }
        }
        if (st.right) {
          while (e > b) {
            size_t k = e;
            if (!is_white_space(utf8::prev(s, k))) break;
            e = k;
          }
        }
        if (b == 0 && e == s.size()) return false;
        if (b > 0 && origin) *origin = 0;
        tmp.assign(s, b, e - b);
        return true;
      }
      case Kind::Replace: {
        if (s.empty()) return false;  // tokenizers finds no match in an empty string, not even an empty one
        tmp.clear();
        size_t prev = 0;
        bool any = false;
        // origin: tokenizers aligns replacement text with the last replaced character (an insertion with the
        // character before it, or with offset 0 at the very start)
        const size_t o_in = origin ? *origin : 0;
        size_t o_out = 0;
        bool contiguous = origin != nullptr;
        st.pattern.for_each_match(s, [&](size_t ms, size_t me) {
          if (contiguous) {
            const size_t take = prev < o_in ? std::min(ms, o_in) - prev : 0;
            o_out += take;
            if (prev + take < ms) contiguous = false;
          }
          if (contiguous) {
            const bool at_origin = me > ms ? me <= o_in : ms <= o_in;
            if (at_origin)
              o_out += st.content.size();
            else if (!st.content.empty())
              contiguous = false;
          }
          tmp.append(s, prev, ms - prev);
          tmp += st.content;
          prev = me;
          any = true;
        });
        if (!any) return false;
        if (contiguous && prev < o_in) o_out += o_in - prev;
        if (origin) *origin = static_cast<uint32_t>(o_out);
        tmp.append(s, prev, s.size() - prev);
        return true;
      }
    }
    return false;
  }
};

}  // namespace distill::text
