// The added vocabulary of tokenizer.json (`added_tokens`, special or not), as Hugging Face `tokenizers`
// (tokenizer/added_vocabulary.rs) matches it before the model runs:
//  - two pattern sets: tokens with normalized:false are matched on the raw input, tokens with normalized:true
//    (their content passed through the normalizer) on each normalized remaining segment;
//  - within a set, special tokens first then the others, in file order; matching is Aho-Corasick
//    leftmost-longest, non-overlapping (a byte trie walked from each candidate start);
//  - per token: single_word drops a match touching a word character (Rust regex \w) on either side,
//    lstrip widens it left over White_Space (never before the previous split's end), rstrip widens it right.
// Ids are checked against what `tokenizers` would assign (the model's id for a content already in the
// vocabulary, else the next free id); a file whose ids disagree is rejected instead of silently renumbered.
#pragma once
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "distill/text/bpe.hpp"
#include "distill/text/json_util.hpp"
#include "distill/text/normalizer.hpp"
#include "distill/text/regex.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

struct AddedToken {
  std::string content;
  std::string decode_form;  // content, or its normalized form for normalized tokens (what decoding sees)
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// One split of a matched text: [start, end) and the added token's id, or -1 for text between matches.
struct AddedSplit {
  size_t start, end;
  int32_t id;
};

namespace detail {

// Byte trie over a set of patterns; the value of a node is the pattern index ending there (first wins).
class PatternTrie {
 public:
  // Adds pattern p; returns the value already stored for p (then unchanged), or -1.
  int32_t add(std::string_view p, int32_t value) {
    if (nodes_.empty()) nodes_.push_back({});
    int32_t n = 0;
    for (unsigned char c : p) {
      int32_t next = -1;
      for (const auto& [b, child] : nodes_[n].children)
        if (b == c) next = child;
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[n].children.push_back({c, next});
        nodes_.push_back({});
      }
      n = next;
    }
    if (nodes_[n].value >= 0) return nodes_[n].value;
    nodes_[n].value = value;
    return -1;
  }
  void finish() {
    std::fill(std::begin(root_), std::end(root_), -1);
    if (nodes_.empty()) return;
    for (const auto& [b, child] : nodes_[0].children) root_[b] = child;
  }
  bool empty() const { return nodes_.size() <= 1; }

  // Leftmost-longest match starting at or after pos: true with [ms, me) and the pattern value.
  bool find(std::string_view t, size_t pos, size_t& ms, size_t& me, int32_t& value) const {
    const auto* s = reinterpret_cast<const unsigned char*>(t.data());
    const size_t n = t.size();
    for (; pos < n; ++pos) {
      int32_t node = root_[s[pos]];
      if (node < 0) continue;
      int32_t best = -1;
      size_t best_end = 0;
      size_t j = pos + 1;
      while (true) {
        if (nodes_[node].value >= 0) {
          best = nodes_[node].value;
          best_end = j;
        }
        if (j >= n) break;
        int32_t next = -1;
        for (const auto& [b, child] : nodes_[node].children)
          if (b == s[j]) {
            next = child;
            break;
          }
        if (next < 0) break;
        node = next;
        ++j;
      }
      if (best >= 0) {
        ms = pos;
        me = best_end;
        value = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t value = -1;
  };
  std::vector<Node> nodes_;
  int32_t root_[256];
};

}  // namespace detail

class AddedVocab {
 public:
  static AddedVocab from_json(const detail::JsonRef& list, const BpeModel& model, const Normalizer& normalizer) {
    AddedVocab av;
    if (list.is_null()) return av;
    if (!list->is_array()) list.wrong_type("an array of added tokens");
    // ids as tokenizers 0.23 assigns them (AddedVocabulary::add_tokens): the model's id for a content already in
    // the vocabulary, else the next id counting from the model's vocabulary size
    int64_t next_id = static_cast<int64_t>(model.vocab_count());
    for (size_t i = 0; i < list.size(); ++i) {
      const auto e = list.at(i);
      AddedToken t;
      t.id = e.at("id").id();
      t.content = e.at("content").str();
      t.single_word = e.at("single_word").boolean();
      t.lstrip = e.at("lstrip").boolean();
      t.rstrip = e.at("rstrip").boolean();
      t.normalized = e.at("normalized").boolean();
      t.special = e.at("special").boolean();
      if (t.content.empty()) e.fail("an added token has empty content");
      if (!utf8::is_valid(t.content)) e.fail("added token content is not valid UTF-8");
      if (av.by_content_.find(t.content)) e.fail("added token \"" + t.content + "\" appears twice");
      int64_t expected;
      if (auto mid = model.token_to_id(t.content)) {
        expected = *mid;
      } else {
        expected = next_id++;
        if (expected <= INT32_MAX && model.id_to_token(static_cast<int32_t>(expected)))
          e.fail("added token \"" + t.content + "\" would get id " + std::to_string(expected) +
                 ", which the model vocabulary already uses");
      }
      if (expected != t.id)
        e.fail("added token \"" + t.content + "\" has id " + std::to_string(t.id) +
               " but Hugging Face tokenizers would give it id " + std::to_string(expected) +
               " (ids must follow the model vocabulary)");
      if (av.by_id_.count(t.id)) e.fail("id " + std::to_string(t.id) + " is used by two added tokens");
      // decoding uses the normalized form of a normalized token (tokenizers' normalized_cache)
      t.decode_form = t.content;
      if (t.normalized && !normalizer.empty()) normalizer.apply(t.content, t.decode_form);
      av.by_content_.set(t.content, static_cast<int32_t>(av.tokens_.size()));
      av.by_id_.emplace(t.id, static_cast<int32_t>(av.tokens_.size()));
      if (t.special) av.special_contents_.set(t.content, t.id);
      av.tokens_.push_back(std::move(t));
    }
    // pattern order: special tokens, then the others, each in file order
    std::vector<int32_t> order;
    for (int32_t k = 0; k < static_cast<int32_t>(av.tokens_.size()); ++k)
      if (av.tokens_[k].special) order.push_back(k);
    for (int32_t k = 0; k < static_cast<int32_t>(av.tokens_.size()); ++k)
      if (!av.tokens_[k].special) order.push_back(k);
    for (int32_t k : order) {
      const AddedToken& t = av.tokens_[k];
      if (t.normalized) {
        if (t.decode_form.empty()) list.fail("added token \"" + t.content + "\" is empty once normalized");
        if (const int32_t other = av.norm_trie_.add(t.decode_form, k); other >= 0)
          list.fail("added tokens \"" + av.tokens_[static_cast<size_t>(other)].content + "\" and \"" + t.content +
                    "\" are the same text once normalized; tokenizers would pick one of them at random");
        av.has_normalized_ = true;
      } else {
        av.raw_trie_.add(t.content, k);
        av.has_raw_ = true;
      }
    }
    av.raw_trie_.finish();
    av.norm_trie_.finish();
    return av;
  }

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool has_raw() const { return has_raw_; }
  bool has_normalized() const { return has_normalized_; }
  int32_t max_id() const {
    int32_t m = -1;
    for (const auto& t : tokens_) m = std::max(m, t.id);
    return m;
  }
  const AddedToken* by_id(int32_t id) const {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &tokens_[static_cast<size_t>(it->second)];
  }
  // Whether decoding with skip_special_tokens drops this token string (tokenizers compares strings).
  bool is_special_content(std::string_view s) const { return special_contents_.find(s) != nullptr; }

  std::optional<int32_t> token_to_id(std::string_view content) const {
    const int32_t* k = by_content_.find(content);
    if (!k) return std::nullopt;
    return tokens_[static_cast<size_t>(*k)].id;
  }

  // Hugging Face find_matches: splits covering `text`, added tokens with their ids (normalized: the set of
  // normalized:true tokens, else the raw set).
  void split(std::string_view text, bool normalized, std::vector<AddedSplit>& out) const {
    out.clear();
    if (text.empty()) return;
    const detail::PatternTrie& trie = normalized ? norm_trie_ : raw_trie_;
    if (trie.empty()) {
      out.push_back({0, text.size(), -1});
      return;
    }
    size_t start_offset = 0, pos = 0, ms, me;
    int32_t k;
    while (trie.find(text, pos, ms, me, k)) {
      pos = me;  // the next search starts after this match, whatever happens to it below
      const AddedToken& t = tokens_[static_cast<size_t>(k)];
      size_t start = ms, stop = me;
      if (t.single_word) {
        const bool start_space = start == 0 || !ends_with_word(text, start);
        const bool stop_space = stop == text.size() || !starts_with_word(text, stop);
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        size_t b = start;
        while (b > 0) {
          size_t q = b;
          if (!is_white_space(utf8::prev(text, q))) break;
          b = q;
        }
        start = std::max(b, start_offset);
      }
      if (t.rstrip) {
        while (stop < text.size()) {
          size_t q = stop;
          if (!is_white_space(utf8::next(text, q))) break;
          stop = q;
        }
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, t.id});
      start_offset = stop;
    }
    if (start_offset != text.size()) out.push_back({start_offset, text.size(), -1});
  }

 private:
  std::vector<AddedToken> tokens_;
  detail::StringTable by_content_, special_contents_;
  std::unordered_map<int32_t, int32_t> by_id_;
  detail::PatternTrie raw_trie_, norm_trie_;
  bool has_raw_ = false, has_normalized_ = false;

  static const Regex& rust_word() {
    static const Regex re = Regex::pcre2(std::string("[") + detail::kRustWordItems + "]", "\\w", PCRE2_ANCHORED);
    return re;
  }
  // Rust regex \w$ on text[..pos]
  static bool ends_with_word(std::string_view text, size_t pos) {
    size_t q = pos;
    utf8::prev(text, q);
    return rust_word().matches_at(text.substr(0, pos), q);
  }
  // Rust regex ^\w on text[pos..]
  static bool starts_with_word(std::string_view text, size_t pos) { return rust_word().matches_at(text, pos); }
};

}  // namespace distill::text
