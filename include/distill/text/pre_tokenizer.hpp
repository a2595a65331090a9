// tokenizer.json pre-tokenizers: Split (String or Regex pattern, every SplitDelimiterBehavior, invert),
// ByteLevel (add_prefix_space, use_regex with the GPT-2 pattern), Metaspace (replacement, prepend_scheme,
// split) and Sequence (flattened). A pre-tokenizer turns one normalized segment into "words" for the model.
//
// Words are byte ranges of an arena string (some steps rewrite content: prefix spaces, Metaspace). The
// ByteLevel byte->char mapping of a final ByteLevel step is not materialized: the model runs on raw bytes
// and maps each byte itself (BpeModel byte units), which gives the same ids without rewriting every word.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "distill/text/json_util.hpp"
#include "distill/text/normalizer.hpp"
#include "distill/text/regex.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

// GPT-2 byte <-> unicode map (bytes_to_unicode): printable bytes map to themselves, the 68 others to U+0100...
struct ByteLevelAlphabet {
  char32_t byte_to_char[256];
  std::string byte_to_utf8[256];
  int16_t char_to_byte_[256 + 68];  // inverse map over U+0000..U+0143
  ByteLevelAlphabet() {
    int n = 0;
    for (int c = 0; c < 256 + 68; ++c) char_to_byte_[c] = -1;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_char[b] = keep ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      byte_to_utf8[b] = utf8::encode(byte_to_char[b]);
      char_to_byte_[byte_to_char[b]] = static_cast<int16_t>(b);
    }
  }
  // The byte a char stands for, or -1.
  int char_to_byte(char32_t c) const { return c < 256 + 68 ? char_to_byte_[c] : -1; }
  static const ByteLevelAlphabet& get() {
    static const ByteLevelAlphabet a;
    return a;
  }
};

inline constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// One word: bytes [off, off + len) of the arena. origin: how many leading bytes stand for offset 0 of the
// original input (0 when the piece does not start there); only Metaspace's prepend_scheme "first" uses it.
struct Piece {
  uint32_t off;
  uint32_t len;
  uint32_t origin = 0;
};

struct PreTokenizeScratch {
  std::string arena;
  std::vector<Piece> a, b;
  struct Seg {
    uint32_t s, e;
    bool m;
  };
  std::vector<Seg> segs, merged;
};

class PreTokenizer {
 public:
  enum class Kind { Split, ByteLevel, Metaspace };
  enum class Prepend { Always, Never, First };
  struct Step {
    Kind kind;
    Regex pattern;  // Split; ByteLevel with use_regex (GPT-2)
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel
    bool use_regex = false;         // ByteLevel
    bool map_bytes = false;         // ByteLevel not last: materialize the byte->char mapping
    std::string replacement;        // Metaspace
    Prepend prepend = Prepend::Always;
    bool split = true;
  };

  // Metaspace prepend_scheme (default "always"); the legacy add_prefix_space:false requires "never".
  static Prepend parse_prepend_scheme(const detail::JsonRef& j) {
    Prepend p = Prepend::Always;
    const auto ps = j.opt("prepend_scheme");
    if (!ps.is_null()) {
      const std::string& v = ps.str();
      if (v == "always")
        p = Prepend::Always;
      else if (v == "never")
        p = Prepend::Never;
      else if (v == "first")
        p = Prepend::First;
      else
        ps.fail("unknown prepend_scheme \"" + v + "\"");
    }
    const auto aps = j.opt("add_prefix_space");
    if (!aps.is_null() && !aps.boolean() && p != Prepend::Never)
      aps.fail("add_prefix_space does not match the declared prepend_scheme");
    return p;
  }

  static PreTokenizer from_json(const detail::JsonRef& j) {
    PreTokenizer p;
    if (!j.is_null()) p.add(j);
    for (size_t i = 0; i + 1 < p.steps_.size(); ++i)
      if (p.steps_[i].kind == Kind::ByteLevel) p.steps_[i].map_bytes = true;
    p.byte_units_ = !p.steps_.empty() && p.steps_.back().kind == Kind::ByteLevel;
    return p;
  }

  // Whether the model must map raw bytes to ByteLevel chars itself (a final ByteLevel step).
  bool byte_units() const { return byte_units_; }
  bool empty() const { return steps_.empty(); }
  const std::vector<Step>& steps() const { return steps_; }

  // Splits arena[seg] into words appended to `out` (offsets into sc.arena, which may grow).
  void run(Piece seg, PreTokenizeScratch& sc, std::vector<Piece>& out) const {
    if (seg.len == 0) return;
    if (steps_.empty()) {
      out.push_back(seg);
      return;
    }
    std::vector<Piece>* cur = &sc.a;
    std::vector<Piece>* nxt = &sc.b;
    cur->clear();
    cur->push_back(seg);
    for (size_t si = 0; si < steps_.size(); ++si) {
      const Step& st = steps_[si];
      const bool last = si + 1 == steps_.size();
      std::vector<Piece>& dst = last ? out : *nxt;
      if (!last) dst.clear();
      for (const Piece& p : *cur) apply(st, p, sc, dst);
      if (!last) std::swap(cur, nxt);
    }
  }

 private:
  std::vector<Step> steps_;
  bool byte_units_ = false;

  void add(const detail::JsonRef& j, int depth = 0) {
    if (depth > 32) j.fail("pre_tokenizer nesting is too deep (more than 32 Sequence levels)");
    const std::string& type = j.type();
    if (type == "Sequence") {
      const auto list = j.at("pretokenizers").array();
      for (size_t i = 0; i < list.size(); ++i) add(list.at(i), depth + 1);
      return;
    }
    Step s;
    if (type == "Split") {
      s.kind = Kind::Split;
      s.pattern = Normalizer::pattern_from_json(j.at("pattern"));
      const auto b = j.at("behavior");
      const std::string& bs = b.str();
      if (bs == "Removed")
        s.behavior = SplitBehavior::Removed;
      else if (bs == "Isolated")
        s.behavior = SplitBehavior::Isolated;
      else if (bs == "MergedWithPrevious")
        s.behavior = SplitBehavior::MergedWithPrevious;
      else if (bs == "MergedWithNext")
        s.behavior = SplitBehavior::MergedWithNext;
      else if (bs == "Contiguous")
        s.behavior = SplitBehavior::Contiguous;
      else
        b.fail("unknown split behavior \"" + bs + "\"");
      s.invert = j.at("invert").boolean();
    } else if (type == "ByteLevel") {
      s.kind = Kind::ByteLevel;
      s.add_prefix_space = j.at("add_prefix_space").boolean();
      j.at("trim_offsets").boolean();  // offsets only, but required like in tokenizers
      s.use_regex = j.opt_bool("use_regex", true);
      if (s.use_regex) s.pattern = Regex::onig(kGpt2Pattern);
    } else if (type == "Metaspace") {
      s.kind = Kind::Metaspace;
      const auto r = j.at("replacement");
      const std::string& rep = r.str();
      size_t k = 0;
      if (rep.empty() || !utf8::is_valid(rep) || (utf8::next(rep, k), k != rep.size()))
        r.fail("expected a single character");
      s.replacement = rep;
      s.prepend = parse_prepend_scheme(j);
      s.split = j.opt_bool("split", true);
      s.pattern = Regex::literal(s.replacement);
    } else {
      j.fail("unsupported pre_tokenizer type \"" + type + "\" (supported: Split, ByteLevel, Metaspace, Sequence)");
    }
    steps_.push_back(std::move(s));
  }

  static Piece append_to_arena(PreTokenizeScratch& sc, std::string_view a, std::string_view b) {
    const size_t off = sc.arena.size();
    DISTILL_CHECK(off + a.size() + b.size() < UINT32_MAX, "input too large for the tokenizer (4 GiB)");
    sc.arena.append(a);
    sc.arena.append(b);
    return {static_cast<uint32_t>(off), static_cast<uint32_t>(a.size() + b.size()), 0};
  }

  // A copy of piece p with `prefix` in front (p stays valid: the arena is grown before copying).
  static Piece prefixed(PreTokenizeScratch& sc, std::string_view prefix, Piece p) {
    const size_t off = sc.arena.size();
    DISTILL_CHECK(off + prefix.size() + p.len < UINT32_MAX, "input too large for the tokenizer (4 GiB)");
    sc.arena.reserve(off + prefix.size() + p.len);
    sc.arena.append(prefix);
    sc.arena.append(sc.arena.data() + p.off, p.len);
    return {static_cast<uint32_t>(off), static_cast<uint32_t>(prefix.size() + p.len),
            p.origin ? static_cast<uint32_t>(prefix.size()) + p.origin : 0};
  }

  // Splits piece p of the arena with `re` and `behavior` (Hugging Face NormalizedString::split).
  static void split(const Regex& re, SplitBehavior behavior, bool invert, Piece p, PreTokenizeScratch& sc,
                    std::vector<Piece>& dst) {
    auto& segs = sc.segs;
    segs.clear();
    {
      const std::string_view text(sc.arena.data() + p.off, p.len);
      uint32_t prev = 0;
      re.for_each_match(text, [&](size_t ms, size_t me) {
        if (prev != ms) segs.push_back({prev, static_cast<uint32_t>(ms), false});
        segs.push_back({static_cast<uint32_t>(ms), static_cast<uint32_t>(me), true});
        prev = static_cast<uint32_t>(me);
      });
      if (prev != p.len) segs.push_back({prev, p.len, false});
    }
    if (invert)
      for (auto& s : segs) s.m = !s.m;
    auto emit = [&](uint32_t s, uint32_t e) {
      if (e > s) dst.push_back({p.off + s, e - s, s < p.origin ? p.origin - s : 0});
    };
    switch (behavior) {
      case SplitBehavior::Isolated:
        for (const auto& s : segs) emit(s.s, s.e);
        break;
      case SplitBehavior::Removed:
        for (const auto& s : segs)
          if (!s.m) emit(s.s, s.e);
        break;
      case SplitBehavior::Contiguous:
      case SplitBehavior::MergedWithPrevious: {
        auto& acc = sc.merged;
        acc.clear();
        bool prev_match = false;
        for (const auto& s : segs) {
          const bool join = behavior == SplitBehavior::Contiguous ? s.m == prev_match : (s.m && !prev_match);
          if (join && !acc.empty())
            acc.back().e = s.e;
          else
            acc.push_back({s.s, s.e, false});
          prev_match = s.m;
        }
        for (const auto& s : acc) emit(s.s, s.e);
        break;
      }
      case SplitBehavior::MergedWithNext: {
        auto& acc = sc.merged;
        acc.clear();
        bool prev_match = false;
        for (size_t k = segs.size(); k-- > 0;) {
          const auto& s = segs[k];
          if (s.m && !prev_match && !acc.empty())
            acc.back().s = s.s;
          else
            acc.push_back({s.s, s.e, false});
          prev_match = s.m;
        }
        for (size_t k = acc.size(); k-- > 0;) emit(acc[k].s, acc[k].e);
        break;
      }
    }
  }

  static void apply(const Step& st, Piece p, PreTokenizeScratch& sc, std::vector<Piece>& dst) {
    switch (st.kind) {
      case Kind::Split:
        split(st.pattern, st.behavior, st.invert, p, sc, dst);
        return;
      case Kind::ByteLevel: {
        if (st.add_prefix_space && sc.arena[p.off] != ' ') p = prefixed(sc, " ", p);
        const size_t first = dst.size();
        if (st.use_regex)
          split(st.pattern, SplitBehavior::Isolated, false, p, sc, dst);
        else
          dst.push_back(p);
        if (!st.map_bytes) return;
        const auto& alpha = ByteLevelAlphabet::get();
        std::string mapped;
        for (size_t k = first; k < dst.size(); ++k) {
          mapped.clear();
          uint32_t origin = 0;
          const uint32_t o = std::min(dst[k].origin, dst[k].len);
          for (uint32_t i = 0; i < dst[k].len; ++i) {
            mapped += alpha.byte_to_utf8[static_cast<unsigned char>(sc.arena[dst[k].off + i])];
            if (i + 1 == o) origin = static_cast<uint32_t>(mapped.size());
          }
          dst[k] = append_to_arena(sc, mapped, {});
          dst[k].origin = origin;
        }
        return;
      }
      case Kind::Metaspace: {
        std::string s;
        uint32_t origin = 0;
        {
          const std::string_view text(sc.arena.data() + p.off, p.len);
          s.reserve(text.size() + 8);
          const uint32_t o = std::min(p.origin, p.len);
          for (uint32_t i = 0; i < text.size(); ++i) {
            if (text[i] == ' ')
              s += st.replacement;
            else
              s += text[i];
            if (i + 1 == o) origin = static_cast<uint32_t>(s.size());
          }
        }
        const bool starts = s.compare(0, st.replacement.size(), st.replacement) == 0;
        const bool prepend =
            !starts && (st.prepend == Prepend::Always || (st.prepend == Prepend::First && p.origin > 0));
        Piece q = append_to_arena(sc, prepend ? std::string_view(st.replacement) : std::string_view(), s);
        q.origin = origin ? origin + (prepend ? static_cast<uint32_t>(st.replacement.size()) : 0) : 0;
        if (st.split)
          split(st.pattern, SplitBehavior::MergedWithNext, false, q, sc, dst);
        else
          dst.push_back(q);
        return;
      }
    }
  }
};

}  // namespace distill::text
