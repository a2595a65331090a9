// tokenizer.json decoders: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence
// (flattened), with the decode_chain semantics of Hugging Face `tokenizers`: each step maps the list of
// token strings to a new list, the final strings are concatenated. Without a decoder, tokens are joined
// with single spaces.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "distill/text/json_util.hpp"
#include "distill/text/normalizer.hpp"
#include "distill/text/pre_tokenizer.hpp"
#include "distill/text/regex.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

class Decoder {
 public:
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace };
  struct Step {
    Kind kind;
    Regex pattern;               // Replace
    std::string content;         // Replace content, Strip / Metaspace character
    size_t start = 0, stop = 0;  // Strip
    bool prepend = true;         // Metaspace: prepend_scheme != never
  };

  static Decoder from_json(const detail::JsonRef& j) {
    Decoder d;
    if (!j.is_null()) {
      d.present_ = true;
      d.add(j);
    }
    return d;
  }

  bool present() const { return present_; }
  // A lone ByteLevel decoder (the tokenizer then decodes from per-id byte strings directly).
  bool is_byte_level_only() const { return steps_.size() == 1 && steps_[0].kind == Kind::ByteLevel; }

  std::string decode(std::vector<std::string> tokens) const {
    if (!present_) {
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i) out += ' ';
        out += tokens[i];
      }
      return out;
    }
    for (const Step& s : steps_) tokens = apply(s, std::move(tokens));
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

  // The ByteLevel mapping of one token: its bytes when every character is in the GPT-2 alphabet, else
  // the token's own UTF-8.
  static void byte_level_bytes(std::string_view t, std::string& out) {
    const auto& alpha = ByteLevelAlphabet::get();
    const size_t start = out.size();
    size_t i = 0;
    while (i < t.size()) {
      const int b = alpha.char_to_byte(utf8::next(t, i));
      if (b < 0) {
        out.resize(start);
        out.append(t);
        return;
      }
      out.push_back(static_cast<char>(b));
    }
  }

 private:
  std::vector<Step> steps_;
  bool present_ = false;

  static std::string single_char(const detail::JsonRef& r) {
    const std::string& s = r.str();
    size_t k = 0;
    if (s.empty() || !utf8::is_valid(s) || (utf8::next(s, k), k != s.size())) r.fail("expected a single character");
    return s;
  }

  void add(const detail::JsonRef& j, int depth = 0) {
    if (depth > 32) j.fail("decoder nesting is too deep (more than 32 Sequence levels)");
    const std::string& type = j.type();
    if (type == "Sequence") {
      const auto list = j.at("decoders").array();
      for (size_t i = 0; i < list.size(); ++i) add(list.at(i), depth + 1);
      return;
    }
    Step s;
    if (type == "ByteLevel") {
      s.kind = Kind::ByteLevel;
      j.at("add_prefix_space").boolean();  // unused when decoding, but required like in tokenizers
      j.at("trim_offsets").boolean();
    } else if (type == "Replace") {
      s.kind = Kind::Replace;
      s.pattern = Normalizer::pattern_from_json(j.at("pattern"));
      s.content = j.at("content").str();
    } else if (type == "ByteFallback") {
      s.kind = Kind::ByteFallback;
    } else if (type == "Fuse") {
      s.kind = Kind::Fuse;
    } else if (type == "Strip") {
      s.kind = Kind::Strip;
      s.content = single_char(j.at("content"));
      s.start = static_cast<size_t>(j.at("start").uint());
      s.stop = static_cast<size_t>(j.at("stop").uint());
    } else if (type == "Metaspace") {
      s.kind = Kind::Metaspace;
      s.content = single_char(j.at("replacement"));
      s.prepend = PreTokenizer::parse_prepend_scheme(j) != PreTokenizer::Prepend::Never;
      j.opt_bool("split", true);
    } else {
      j.fail("unsupported decoder type \"" + type +
             "\" (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)");
    }
    steps_.push_back(std::move(s));
  }

  static bool hex_digit(char c, int& v) {
    if (c >= '0' && c <= '9') return v = c - '0', true;
    if (c >= 'a' && c <= 'f') return v = c - 'a' + 10, true;
    if (c >= 'A' && c <= 'F') return v = c - 'A' + 10, true;
    return false;
  }
  // Rust's u8::from_str_radix(&token[3..5], 16) for a 6-byte token "<0x..>" (accepts a leading '+').
  static int byte_token(std::string_view t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int hi, lo;
    if (t[3] == '+') return hex_digit(t[4], lo) ? lo : -1;
    if (!hex_digit(t[3], hi) || !hex_digit(t[4], lo)) return -1;
    return hi * 16 + lo;
  }

  static std::vector<std::string> apply(const Step& s, std::vector<std::string> tokens) {
    switch (s.kind) {
      case Kind::ByteLevel: {
        std::string bytes;
        for (const auto& t : tokens) byte_level_bytes(t, bytes);
        std::vector<std::string> out;
        out.push_back(utf8::repair(bytes));
        return out;
      }
      case Kind::Replace: {
        for (auto& t : tokens) {
          if (t.empty()) continue;  // no match in an empty token, not even an empty one
          std::string r;
          size_t prev = 0;
          s.pattern.for_each_match(t, [&](size_t ms, size_t me) {
            r.append(t, prev, ms - prev);
            r += s.content;
            prev = me;
          });
          r.append(t, prev, t.size() - prev);
          t.swap(r);
        }
        return tokens;
      }
      case Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string bytes;
        auto flush = [&]() {
          if (bytes.empty()) return;
          if (utf8::is_valid(bytes)) {
            out.push_back(bytes);
          } else {
            for (size_t k = 0; k < bytes.size(); ++k) out.push_back("\xEF\xBF\xBD");
          }
          bytes.clear();
        };
        for (auto& t : tokens) {
          const int b = byte_token(t);
          if (b >= 0) {
            bytes.push_back(static_cast<char>(b));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        return out;
      }
      case Kind::Fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        std::vector<std::string> out;
        out.push_back(std::move(all));
        return out;
      }
      case Kind::Strip: {
        for (auto& t : tokens) {
          // work on characters, as strip.rs does
          std::vector<std::pair<size_t, size_t>> chars;  // byte ranges
          size_t i = 0;
          while (i < t.size()) {
            const size_t b = i;
            utf8::next(t, i);
            chars.push_back({b, i});
          }
          auto is_content = [&](size_t k) {
            return t.compare(chars[k].first, chars[k].second - chars[k].first, s.content) == 0;
          };
          size_t start_cut = 0;
          for (size_t k = 0; k < chars.size() && k < s.start; ++k) {
            if (!is_content(k)) break;
            start_cut = k + 1;
          }
          size_t stop_cut = chars.size();
          for (size_t k = 0; k < s.stop; ++k) {
            if (k >= chars.size())  // tokenizers 0.23 indexes out of bounds here and panics
              throw Error("Strip decoder: token \"" + t + "\" has fewer than stop=" + std::to_string(s.stop) +
                          " characters and all of them are \"" + s.content + "\"");
            const size_t idx = chars.size() - k - 1;
            if (!is_content(idx)) break;
            stop_cut = idx;
          }
          if (stop_cut < start_cut)  // tokenizers 0.23 panics on this slice
            throw Error("Strip decoder: token \"" + t + "\" is stripped from both sides past its middle (start " +
                        std::to_string(s.start) + ", stop " + std::to_string(s.stop) + ")");
          const size_t b = start_cut < chars.size() ? chars[start_cut].first : t.size();
          const size_t e = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
          t = t.substr(b, e - b);
        }
        return tokens;
      }
      case Kind::Metaspace: {
        for (size_t k = 0; k < tokens.size(); ++k) {
          std::string& t = tokens[k];
          if (t.find(s.content) == std::string::npos) continue;
          std::string r;
          size_t i = 0;
          while (i < t.size()) {
            if (t.compare(i, s.content.size(), s.content) == 0) {
              if (!(k == 0 && s.prepend)) r += ' ';
              i += s.content.size();
            } else {
              r += t[i++];
            }
          }
          t.swap(r);
        }
        return tokens;
      }
    }
    return tokens;
  }
};

}  // namespace distill::text
