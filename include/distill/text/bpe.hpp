// The BPE model of tokenizer.json, as Hugging Face `tokenizers` (models/bpe/{model.rs,word.rs}) runs it:
//  - a word's initial symbols are its characters (with continuing_subword_prefix on all but the first and
//    end_of_word_suffix on the last); an unknown character becomes its <0xHH> byte tokens (byte_fallback,
//    when every byte has one), else unk_token (fused runs with fuse_unk), else it is dropped;
//  - merges are applied with a priority queue ordered by (rank, position): pop the best entry, skip it when
//    stale (left symbol consumed, or the pair now there no longer maps to the entry's new id), merge, push the
//    pairs formed with the neighbours. Same queue discipline as word.rs, so the same result even in the rare
//    cases where two different pairs produce the same token;
//  - ignore_merges: a word that is itself in the vocabulary is emitted directly.
// With byte units (a final ByteLevel pre-tokenizer) the word holds raw bytes and each byte stands for its
// GPT-2 character; tables map bytes straight to ids. Speed: words under 256 bytes go through a per-thread
// cache, pair lookups through a per-thread memo of recent pairs, and SentencePiece-style words (a whole
// "a▁b▁c" segment) are cut where no merge can cross (see split_char_) so that their pieces hit the cache.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "distill/text/hash_tables.hpp"
#include "distill/text/json_util.hpp"
#include "distill/text/pre_tokenizer.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

struct BpeScratch {
  struct Symbol {
    int32_t c;
    int32_t prev, next;
    uint32_t len;
  };
  struct Merge {
    uint32_t rank;
    uint32_t pos;
    int32_t id;
    int32_t left, right;  // the pair when pushed: a popped entry whose pair is unchanged needs no lookup
  };
  // Recently looked-up pairs (direct-mapped, negative answers too): the merge table is large (16 MB for
  // Gemma3) and a few thousand pairs make up most lookups.
  struct PairMemo {
    uint64_t key = ~0ull;
    uint32_t rank = 0;
    int32_t id = -1;  // -1: no merge for this pair
  };
  static constexpr size_t kMemo = size_t{1} << 16;
  std::vector<PairMemo> memo;
  std::vector<Symbol> symbols;
  std::vector<Merge> heap;
  std::string unit;
  detail::WordCache cache;
};

class BpeModel {
 public:
  static BpeModel from_json(const detail::JsonRef& m) {
    BpeModel b;
    if (m.has("type")) {
      const std::string& t = m.type();
      if (t != "BPE")
        m.fail("unsupported model type \"" + t +
               "\" (only BPE is supported; WordPiece, Unigram and WordLevel are not)");
    } else if (!m.has("merges")) {
      m.fail("model has no \"type\" and no \"merges\"; only BPE models are supported");
    }
    const auto dropout = m.opt("dropout");
    if (!dropout.is_null() && dropout.number() != 0.0)
      dropout.fail("BPE dropout is not supported (it makes encoding random); it must be null");
    const auto unk = m.opt("unk_token");
    if (!unk.is_null()) b.unk_token_ = unk.str(), b.has_unk_ = true;
    const auto pre = m.opt("continuing_subword_prefix");
    if (!pre.is_null()) b.prefix_ = pre.str();
    const auto suf = m.opt("end_of_word_suffix");
    if (!suf.is_null()) b.suffix_ = suf.str();
    b.fuse_unk_ = m.opt_bool("fuse_unk", false);
    b.byte_fallback_ = m.opt_bool("byte_fallback", false);
    b.ignore_merges_ = m.opt_bool("ignore_merges", false);

    // vocab: token -> id; ids must be unique.
    const auto vocab = m.at("vocab");
    if (!vocab->is_object()) vocab.wrong_type("an object {token: id}");
    b.vocab_.reserve(vocab->size());
    int32_t max_id = -1;
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      const detail::JsonRef idref{&it.value(), vocab.file, vocab.path + "[\"" + it.key() + "\"]"};
      const int32_t id = idref.id();
      if (!utf8::is_valid(it.key())) idref.fail("token is not valid UTF-8");
      DISTILL_CHECK(b.vocab_.size() < (size_t{1} << 31), "vocabulary too large");
      b.vocab_.set(it.key(), id);
      max_id = std::max(max_id, id);
    }
    if (static_cast<size_t>(static_cast<int64_t>(max_id) + 1) > 2 * b.vocab_.size() + 65536)
      vocab.fail("ids are too sparse: largest id " + std::to_string(max_id) + " for " +
                 std::to_string(b.vocab_.size()) + " tokens");
    b.id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
    b.has_id_.assign(static_cast<size_t>(max_id + 1), false);
    for (size_t e = 0; e < b.vocab_.size(); ++e) {
      const int32_t id = b.vocab_.value(e);
      const std::string_view tok = b.vocab_.key(e);
      if (b.has_id_[static_cast<size_t>(id)])
        vocab.fail("id " + std::to_string(id) + " is used by two tokens (\"" + b.id_to_token_[static_cast<size_t>(id)] +
                   "\" and \"" + std::string(tok) + "\")");
      b.has_id_[static_cast<size_t>(id)] = true;
      b.id_to_token_[static_cast<size_t>(id)] = std::string(tok);
    }

    // merges: "a b" strings or ["a", "b"] pairs; rank = position.
    const auto merges = m.at("merges");
    if (!merges->is_array()) merges.wrong_type("an array of merges");
    std::vector<std::pair<uint64_t, std::pair<uint32_t, int32_t>>> entries;
    entries.reserve(merges->size());
    std::string merged;
    for (size_t r = 0; r < merges->size(); ++r) {
      const detail::Json& ev = (*merges)[r];
      std::string_view a, bb;
      if (ev.is_string()) {
        const std::string& s = ev.get_ref<const std::string&>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          merges.at(r).fail("a merge string must be two tokens separated by one space, found \"" + s + "\"");
        a = std::string_view(s).substr(0, sp);
        bb = std::string_view(s).substr(sp + 1);
      } else if (ev.is_array() && ev.size() == 2 && ev[0].is_string() && ev[1].is_string()) {
        a = ev[0].get_ref<const std::string&>();
        bb = ev[1].get_ref<const std::string&>();
      } else {
        merges.at(r).fail("expected a string \"a b\" or a pair of strings [\"a\", \"b\"]");
      }
      const int32_t* ia = b.vocab_.find(a);
      const int32_t* ib = b.vocab_.find(bb);
      if (!ia) merges.at(r).fail("merge token \"" + std::string(a) + "\" is not in the vocabulary");
      if (!ib) merges.at(r).fail("merge token \"" + std::string(bb) + "\" is not in the vocabulary");
      if (bb.size() < b.prefix_.size() || (bb.size() > b.prefix_.size() && (bb[b.prefix_.size()] & 0xC0) == 0x80))
        merges.at(r).fail("merge token \"" + std::string(bb) + "\" is shorter than the continuing_subword_prefix");
      merged.assign(a);
      merged.append(bb.substr(b.prefix_.size()));
      const int32_t* im = b.vocab_.find(merged);
      if (!im) merges.at(r).fail("merged token \"" + merged + "\" is not in the vocabulary");
      entries.push_back({detail::MergeTable::key(*ia, *ib), {static_cast<uint32_t>(r), *im}});
    }
    b.merges_.build(entries);

    if (b.has_unk_) {
      const int32_t* u = b.vocab_.find(b.unk_token_);
      b.unk_id_ = u ? *u : -1;
    }
    for (int v = 0; v < 256; ++v) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", v);
      const int32_t* u = b.vocab_.find(std::string_view(name));
      b.byte_ids_[v] = u ? *u : -1;
    }
    return b;
  }

  // Builds the unit tables for the pre-tokenizer's mode (called once after loading).
  void prepare(bool byte_units) {
    byte_units_ = byte_units;
    plain_units_ = prefix_.empty() && suffix_.empty();
    std::fill(std::begin(unit_byte_ids_), std::end(unit_byte_ids_), -1);
    bmp_ids_.assign(0x10000, -1);
    astral_ids_.clear();
    const auto& alpha = ByteLevelAlphabet::get();
    for (int v = 0; v < 256; ++v)
      if (const int32_t* u = vocab_.find(std::string_view(alpha.byte_to_utf8[v]))) unit_byte_ids_[v] = *u;
    for (size_t e = 0; e < vocab_.size(); ++e) {
      const std::string_view tok = vocab_.key(e);
      size_t k = 0;
      if (tok.empty()) continue;
      const char32_t c = utf8::next(tok, k);
      if (k != tok.size()) continue;
      if (c < 0x10000)
        bmp_ids_[c] = vocab_.value(e);
      else
        astral_ids_.emplace(c, vocab_.value(e));
    }
    split_char_ = 0;
    split_blockers_.clear();
    if (!byte_units_ && plain_units_ && char_id(0x2581) >= 0) {
      split_char_ = 0x2581;
      for (size_t e = 0; e < vocab_.size(); ++e) {
        const std::string_view tok = vocab_.key(e);
        size_t k = 0;
        char32_t prev = 0;
        bool has_prev = false;
        while (k < tok.size()) {
          const char32_t c = utf8::next(tok, k);
          if (c == split_char_ && has_prev && prev != split_char_) split_blockers_.push_back(prev);
          prev = c;
          has_prev = true;
        }
      }
      std::sort(split_blockers_.begin(), split_blockers_.end());
      split_blockers_.erase(std::unique(split_blockers_.begin(), split_blockers_.end()), split_blockers_.end());
    }
    raw_vocab_ = detail::StringTable();
    if (ignore_merges_ && byte_units_) {
      // vocab keyed by the raw bytes its ByteLevel characters stand for
      std::string raw;
      for (size_t e = 0; e < vocab_.size(); ++e) {
        const std::string_view tok = vocab_.key(e);
        raw.clear();
        size_t k = 0;
        bool ok = true;
        while (k < tok.size()) {
          const int bt = alpha.char_to_byte(utf8::next(tok, k));
          if (bt < 0) {
            ok = false;
            break;
          }
          raw.push_back(static_cast<char>(bt));
        }
        if (ok) raw_vocab_.set(raw, vocab_.value(e));
      }
    }
  }

  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }
  size_t vocab_count() const { return vocab_.size(); }
  std::optional<int32_t> token_to_id(std::string_view t) const {
    if (const int32_t* v = vocab_.find(t)) return *v;
    return std::nullopt;
  }
  // The token of id, or nullptr when no token has this id.
  const std::string* id_to_token(int32_t id) const {
    if (id < 0 || id >= size() || !has_id_[static_cast<size_t>(id)]) return nullptr;
    return &id_to_token_[static_cast<size_t>(id)];
  }

  // Appends the ids of one word (raw bytes with byte units, else normalized UTF-8).
  void encode_word(std::string_view w, BpeScratch& sc, std::vector<int32_t>& out) const {
    if (w.empty()) return;
    if (ignore_merges_) {
      if (const int32_t* v = byte_units_ ? raw_vocab_.find(w) : vocab_.find(w)) {
        out.push_back(*v);
        return;
      }
    }
    if (split_char_) {
      // cut before each word-boundary mark that no token can span (see prepare)
      size_t start = 0, i = 0;
      char32_t prev = 0;
      bool prev_known = false;
      while (i < w.size()) {
        const size_t at = i;
        const char32_t c = utf8::next(w, i);
        if (c == split_char_ && at > start && prev != split_char_ && prev_known && !split_blocker(prev)) {
          encode_piece(w.substr(start, at - start), sc, out);
          start = at;
        }
        prev = c;
        prev_known = char_id(c) >= 0;
      }
      encode_piece(w.substr(start), sc, out);
      return;
    }
    encode_piece(w, sc, out);
  }

 private:
  // BPE of one word or independent piece of a word, through this thread's cache.
  void encode_piece(std::string_view w, BpeScratch& sc, std::vector<int32_t>& out) const {
    const bool cacheable = w.size() < detail::WordCache::kMaxWord;
    uint64_t h = 0;
    if (cacheable) {
      h = detail::hash_bytes(w.data(), w.size());
      uint32_t n = 0;
      if (const int32_t* ids = sc.cache.find(w, h, n)) {
        out.insert(out.end(), ids, ids + n);
        return;
      }
    }
    const size_t first = out.size();
    initial_symbols(w, sc);
    merge_all(sc);
    for (const auto& s : sc.symbols)
      if (s.len != 0) out.push_back(s.c);
    if (cacheable) sc.cache.insert(w, h, out.data() + first, static_cast<uint32_t>(out.size() - first));
  }

  bool split_blocker(char32_t c) const { return std::binary_search(split_blockers_.begin(), split_blockers_.end(), c); }

  detail::StringTable vocab_, raw_vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  detail::MergeTable merges_;
  std::string unk_token_, prefix_, suffix_;
  bool has_unk_ = false, fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t unk_id_ = -1;
  int32_t byte_ids_[256];         // <0xHH> tokens (byte fallback)
  int32_t unit_byte_ids_[256];    // ByteLevel character of each byte
  std::vector<int32_t> bmp_ids_;  // single-character tokens below U+10000
  std::unordered_map<char32_t, int32_t> astral_ids_;
  bool byte_units_ = false, plain_units_ = true;
  // SentencePiece-style words ("a▁b▁c" as one word) are cut before each U+2581 that follows a known character
  // c that no token has right before a U+2581 (split_blockers_ lists those that some token has): no merge can
  // span such a cut, so the pieces encode independently (and fit the word cache) with the same result.
  char32_t split_char_ = 0;
  std::vector<char32_t> split_blockers_;

  static void push_symbol(BpeScratch& sc, int32_t id, uint32_t len) {
    const int32_t n = static_cast<int32_t>(sc.symbols.size());
    if (n > 0) sc.symbols.back().next = n;
    sc.symbols.push_back({id, n - 1, -1, len});
  }

  int32_t char_id(char32_t c) const {
    if (c < 0x10000) return bmp_ids_[c];
    const auto it = astral_ids_.find(c);
    return it == astral_ids_.end() ? -1 : it->second;
  }

  void initial_symbols(std::string_view w, BpeScratch& sc) const {
    sc.symbols.clear();
    if (byte_units_ && plain_units_) {
      // fast path: every byte has its ByteLevel character in the vocabulary
      bool all = true;
      for (unsigned char c : w)
        if (unit_byte_ids_[c] < 0) {
          all = false;
          break;
        }
      if (all) {
        for (unsigned char c : w) push_symbol(sc, unit_byte_ids_[c], 1);
        return;
      }
    }
    const auto& alpha = ByteLevelAlphabet::get();
    int32_t unk = -1;
    uint32_t unk_len = 0;
    size_t i = 0;
    std::string& s = sc.unit;
    while (i < w.size()) {
      std::string_view unit;
      char32_t c;
      const size_t start = i;
      if (byte_units_) {
        const unsigned char b = static_cast<unsigned char>(w[i++]);
        unit = alpha.byte_to_utf8[b];
        c = alpha.byte_to_char[b];
      } else {
        c = utf8::next(w, i);
        unit = w.substr(start, i - start);
      }
      const bool first = start == 0, last = i == w.size();
      const uint32_t len = static_cast<uint32_t>(unit.size());
      // the string model.rs looks up: prefix + unit + suffix
      int32_t id;
      if (plain_units_) {
        id = char_id(c);
      } else {
        s.clear();
        if (!first) s += prefix_;
        s.append(unit);
        if (last) s += suffix_;
        const int32_t* v = vocab_.find(s);
        id = v ? *v : -1;
      }
      if (id >= 0) {
        if (unk >= 0) {
          push_symbol(sc, unk, unk_len);
          unk = -1;
        }
        push_symbol(sc, id, len);
        continue;
      }
      if (plain_units_) s.assign(unit);
      if (byte_fallback_) {
        bool all = true;
        for (unsigned char bt : s)
          if (byte_ids_[bt] < 0) {
            all = false;
            break;
          }
        if (all) {
          for (unsigned char bt : s) push_symbol(sc, byte_ids_[bt], 1);
          continue;  // a pending unk stays pending, as in model.rs
        }
      }
      if (has_unk_) {
        if (unk_id_ < 0)
          throw Error("BPE model: unk_token \"" + unk_token_ +
                      "\" is not in the vocabulary (needed for an unknown character)");
        if (unk >= 0 && fuse_unk_) {
          unk_len += len;
        } else {
          if (unk >= 0) push_symbol(sc, unk, unk_len);
          unk = unk_id_;
          unk_len = len;
        }
      }
    }
    if (unk >= 0) push_symbol(sc, unk, unk_len);
  }

  // Max-heap order on priority = min on (rank, pos).
  struct LowerPriority {
    bool operator()(const BpeScratch::Merge& x, const BpeScratch::Merge& y) const {
      return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
    }
  };

  bool find_merge(BpeScratch& sc, int32_t a, int32_t b, uint32_t& rank, int32_t& id) const {
    const uint64_t k = detail::MergeTable::key(a, b);
    auto& m = sc.memo[static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 48) & (BpeScratch::kMemo - 1)];
    if (m.key != k) {
      m.key = k;
      if (!merges_.find(a, b, m.rank, m.id)) m.id = -1;
    }
    rank = m.rank;
    id = m.id;
    return id >= 0;
  }

  void merge_all(BpeScratch& sc) const {
    auto& sym = sc.symbols;
    if (sym.size() < 2) return;
    if (sc.memo.empty()) sc.memo.resize(BpeScratch::kMemo);
    auto& heap = sc.heap;
    heap.clear();
    uint32_t rank;
    int32_t id;
    for (size_t i = 0; i + 1 < sym.size(); ++i)
      if (find_merge(sc, sym[i].c, sym[i + 1].c, rank, id))
        heap.push_back({rank, static_cast<uint32_t>(i), id, sym[i].c, sym[i + 1].c});
    if (heap.empty()) return;
    const LowerPriority lower;
    std::make_heap(heap.begin(), heap.end(), lower);
    // An entry whose pair is unchanged since it was pushed is valid; any other entry is checked the way word.rs
    // checks it (the pair now there must map to the same new id).
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), lower);
      const BpeScratch::Merge top = heap.back();
      heap.pop_back();
      auto& cur = sym[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      const int32_t next_pos = cur.next;
      const auto right = sym[static_cast<size_t>(next_pos)];
      if (right.c != top.right || cur.c != top.left) {
        if (!find_merge(sc, cur.c, right.c, rank, id) || id != top.id) continue;
      }
      cur.c = top.id;
      cur.len += right.len;
      cur.next = right.next;
      sym[static_cast<size_t>(next_pos)].len = 0;
      if (right.next > -1 && static_cast<size_t>(right.next) < sym.size())
        sym[static_cast<size_t>(right.next)].prev = static_cast<int32_t>(top.pos);
      const auto current = sym[top.pos];
      if (current.prev >= 0) {
        const auto& p = sym[static_cast<size_t>(current.prev)];
        if (find_merge(sc, p.c, current.c, rank, id)) {
          heap.push_back({rank, static_cast<uint32_t>(current.prev), id, p.c, current.c});
          std::push_heap(heap.begin(), heap.end(), lower);
        }
      }
      if (current.next >= 0 && static_cast<size_t>(current.next) < sym.size()) {
        const auto& nx = sym[static_cast<size_t>(current.next)];
        if (find_merge(sc, current.c, nx.c, rank, id)) {
          heap.push_back({rank, top.pos, id, current.c, nx.c});
          std::push_heap(heap.begin(), heap.end(), lower);
        }
      }
    }
  }
};

}  // namespace distill::text
