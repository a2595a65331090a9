// A Hugging Face `tokenizer.json` tokenizer that encodes and decodes exactly like the Python `tokenizers`
// library (0.23): added tokens matched first, then normalizer -> pre-tokenizer -> BPE on the remaining text,
// then the post-processor; decoding maps ids back through the decoder chain. Supported components are listed
// in each header (normalizer.hpp, pre_tokenizer.hpp, bpe.hpp, added_vocab.hpp, decoder.hpp); anything else in
// the file is rejected with a distill::Error naming the file and the component, never ignored.
//
// Input that is not valid UTF-8 is first repaired like Python's bytes.decode("utf-8", errors="replace").
// A Tokenizer is immutable after loading and safe to use from several threads at once: each thread keeps
// its own scratch buffers, PCRE2 match data and word cache.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/text/added_vocab.hpp"
#include "distill/text/bpe.hpp"
#include "distill/text/decoder.hpp"
#include "distill/text/json_util.hpp"
#include "distill/text/normalizer.hpp"
#include "distill/text/pre_tokenizer.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

namespace detail {

// The post-processor for a single sequence: a list of templates applied in order, each a list of items (the
// sequence itself, or the ids of a special token). As in tokenizers, the sequence items of a template apply
// even without add_special_tokens; only the special tokens are left out. ByteLevel post-processors add nothing.
class PostProcessor {
 public:
  static PostProcessor from_json(const JsonRef& j, const std::function<bool(int32_t)>& id_exists) {
    PostProcessor p;
    if (!j.is_null()) p.add(j, id_exists, 0);
    return p;
  }
  void apply(std::vector<int32_t>& ids, bool add_special_tokens) const {
    for (const auto& tpl : templates_) {
      std::vector<int32_t> out;
      out.reserve(ids.size() + 4);
      for (const auto& item : tpl) {
        if (item.sequence)
          out.insert(out.end(), ids.begin(), ids.end());
        else if (add_special_tokens)
          out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
      ids.swap(out);
    }
  }

 private:
  struct Item {
    bool sequence = false;
    std::vector<int32_t> ids;
  };
  std::vector<std::vector<Item>> templates_;

  static int32_t checked_id(const JsonRef& r, const std::function<bool(int32_t)>& id_exists) {
    const int32_t id = r.id();
    if (!id_exists(id)) r.fail("special token id " + std::to_string(id) + " is not in the vocabulary");
    return id;
  }

  // {"SpecialToken": {"id": name, "type_id": n}} or {"Sequence": {"id": "A"|"B", "type_id": n}}: the name of a
  // special token, or "" for a sequence (its id in seq).
  static std::string piece(const JsonRef& p, std::string& seq) {
    if (!p->is_object() || p->size() != 1) p.fail("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    if (p.has("SpecialToken")) {
      const auto st = p.at("SpecialToken");
      st.at("type_id").uint();
      const std::string& name = st.at("id").str();
      return name.empty() ? std::string(" ") : name;  // never "" (that marks a sequence)
    }
    if (p.has("Sequence")) {
      const auto sq = p.at("Sequence");
      sq.at("type_id").uint();
      seq = sq.at("id").str();
      if (seq != "A" && seq != "B") sq.at("id").fail("a template sequence is \"A\" or \"B\", found \"" + seq + "\"");
      return std::string();
    }
    p.fail("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
  }

  void add(const JsonRef& j, const std::function<bool(int32_t)>& id_exists, int depth) {
    if (depth > 32) j.fail("post_processor nesting is too deep (more than 32 Sequence levels)");
    const std::string& type = j.type();
    if (type == "ByteLevel") {
      j.at("add_prefix_space").boolean();
      j.at("trim_offsets").boolean();
      return;
    }
    if (type == "Sequence") {
      const auto list = j.at("processors").array();
      for (size_t i = 0; i < list.size(); ++i) add(list.at(i), id_exists, depth + 1);
      return;
    }
    if (type == "BertProcessing" || type == "RobertaProcessing") {
      // single: cls $A sep; each is [token, id]
      auto special = [&](const char* key) {
        const auto pair = j.at(key);
        if (!pair->is_array() || pair->size() != 2) pair.fail("expected [token, id]");
        pair.at(size_t{0}).str();
        return Item{false, {checked_id(pair.at(size_t{1}), id_exists)}};
      };
      std::vector<Item> tpl;
      tpl.push_back(special("cls"));
      tpl.push_back(Item{true, {}});
      tpl.push_back(special("sep"));
      templates_.push_back(std::move(tpl));
      return;
    }
    if (type != "TemplateProcessing")
      j.fail("unsupported post_processor type \"" + type +
             "\" (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence)");
    // special_tokens: {name: {"id": name, "ids": [...], "tokens": [...]}}
    const auto specials = j.at("special_tokens");
    if (!specials->is_object()) specials.wrong_type("an object");
    std::unordered_map<std::string, std::vector<int32_t>> map;
    for (auto it = specials->begin(); it != specials->end(); ++it) {
      const JsonRef e{&it.value(), specials.file, specials.path + "[\"" + it.key() + "\"]"};
      e.at("id").str();
      const auto ids = e.at("ids").array();
      const auto toks = e.at("tokens").array();
      for (size_t k = 0; k < toks.size(); ++k) toks.at(k).str();
      std::vector<int32_t> v;
      for (size_t k = 0; k < ids.size(); ++k) v.push_back(checked_id(ids.at(k), id_exists));
      map[it.key()] = std::move(v);
    }
    std::string seq;
    const auto pair = j.at("pair").array();  // pairs are not encoded here, but the template must be well formed
    for (size_t k = 0; k < pair.size(); ++k) piece(pair.at(k), seq);
    const auto single = j.at("single").array();
    std::vector<Item> tpl;
    for (size_t k = 0; k < single.size(); ++k) {
      const auto pc = single.at(k);
      const std::string name = piece(pc, seq);
      if (name.empty()) {
        if (seq != "A") pc.fail("the single-sequence template can only use sequence A (tokenizers panics on B)");
        tpl.push_back(Item{true, {}});
      } else {
        const auto f = map.find(name);
        if (f == map.end()) pc.fail("special token \"" + name + "\" is missing from special_tokens");
        tpl.push_back(Item{false, f->second});
      }
    }
    templates_.push_back(std::move(tpl));
  }
};

inline uint64_t next_tokenizer_uid() {
  static std::atomic<uint64_t> counter{1};
  return counter.fetch_add(1);
}

// Per-thread working memory of one tokenizer.
struct EncodeScratch {
  uint64_t uid = 0;
  std::vector<AddedSplit> raw_splits, norm_splits;
  std::vector<Piece> words;
  PreTokenizeScratch pre;
  BpeScratch bpe;
  std::string norm;
};

}  // namespace detail

class Tokenizer {
 public:
  // A tokenizer.json, or a directory containing one.
  static Tokenizer from_file(const std::string& path) {
    std::string file = path;
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) file = (std::filesystem::path(path) / "tokenizer.json").string();
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error("tokenizer.json '" + file + "': cannot open: " + std::strerror(errno));
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw Error("tokenizer.json '" + file + "': read error");
    return from_json(data, file);
  }

  static Tokenizer from_json(std::string_view json, std::string_view source_name = "<memory>") {
    auto impl = std::make_shared<Impl>();
    impl->source = std::string(source_name);
    detail::Json doc;
    try {
      doc = detail::Json::parse(json.begin(), json.end());
    } catch (const detail::Json::exception& e) {
      throw Error("tokenizer.json '" + impl->source + "': invalid JSON: " + e.what());
    }
    impl->load(detail::JsonRef{&doc, &impl->source, ""});
    Tokenizer t;
    t.impl_ = std::move(impl);
    return t;
  }

  // add_special_tokens applies the post-processor (Gemma3: prepend <bos>).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const {
    const Impl& m = impl();
    std::string repaired;
    const std::string_view t = utf8::valid_view(text, repaired);
    std::vector<int32_t> ids;
    ids.reserve(t.size() / 3 + 4);
    m.encode_into(t, scratch(m.uid), ids);
    m.post.apply(ids, add_special_tokens);
    return ids;
  }

  // Results in input order; num_threads 0 = all hardware threads.
  std::vector<std::vector<int32_t>> encode_batch(std::span<const std::string> texts, bool add_special_tokens = true,
                                                 int num_threads = 0) const {
    std::vector<std::vector<int32_t>> out(texts.size());
    parallel(texts.size(), num_threads, [&](size_t i) { out[i] = encode(texts[i], add_special_tokens); });
    return out;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const {
    const Impl& m = impl();
    if (m.byte_level_decode) {
      std::string bytes;
      bytes.reserve(ids.size() * 4);
      for (const int32_t id : ids) {
        if (id < 0 || id >= static_cast<int32_t>(m.bl_offsets.size()) - 1 || !m.has_token[static_cast<size_t>(id)])
          continue;
        if (skip_special_tokens && m.skip[static_cast<size_t>(id)]) continue;
        bytes.append(m.bl_bytes, m.bl_offsets[static_cast<size_t>(id)],
                     m.bl_offsets[static_cast<size_t>(id) + 1] - m.bl_offsets[static_cast<size_t>(id)]);
      }
      return utf8::repair(bytes);
    }
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const int32_t id : ids) {
      const std::string* t = m.token_of(id);
      if (!t) continue;  // unknown ids are skipped, as tokenizers does
      if (skip_special_tokens && m.skip[static_cast<size_t>(id)]) continue;
      tokens.push_back(*t);
    }
    return m.decoder.decode(std::move(tokens));
  }

  std::vector<std::string> decode_batch(std::span<const std::vector<int32_t>> ids, bool skip_special_tokens = true,
                                        int num_threads = 0) const {
    std::vector<std::string> out(ids.size());
    parallel(ids.size(), num_threads, [&](size_t i) { out[i] = decode(ids[i], skip_special_tokens); });
    return out;
  }

  // max id + 1 over the vocabulary and the added tokens
  int32_t vocab_size() const { return impl().vocab_size; }

  std::optional<int32_t> token_to_id(std::string_view token) const {
    const Impl& m = impl();
    if (auto id = m.added.token_to_id(token)) return id;
    return m.model.token_to_id(token);
  }

  // The token string of id (for a normalized added token, its normalized form, as tokenizers returns it).
  // Throws distill::Error when no token has this id.
  const std::string& id_to_token(int32_t id) const {
    const std::string* t = impl().token_of(id);
    if (!t)
      throw Error("tokenizer '" + impl().source + "': no token has id " + std::to_string(id) + " (vocab_size " +
                  std::to_string(vocab_size()) + ")");
    return *t;
  }

  // An added token with special:true (skipped by decode with skip_special_tokens).
  bool is_special(int32_t id) const {
    const Impl& m = impl();
    return id >= 0 && id < m.vocab_size && m.special[static_cast<size_t>(id)];
  }

  const std::string& source() const { return impl().source; }

 private:
  struct Impl {
    std::string source;
    uint64_t uid = detail::next_tokenizer_uid();
    Normalizer normalizer;
    PreTokenizer pre_tokenizer;
    BpeModel model;
    AddedVocab added;
    Decoder decoder;
    detail::PostProcessor post;
    int32_t vocab_size = 0;
    std::vector<bool> special, has_token;
    std::vector<bool> skip;  // dropped by skip_special_tokens: its string is a special token's content
    // ByteLevel decoding table: the bytes of every id, concatenated
    bool byte_level_decode = false;
    std::string bl_bytes;
    std::vector<uint32_t> bl_offsets;

    // The string of id as decoding sees it (an added token's normalized form when it is normalized).
    const std::string* token_of(int32_t id) const {
      if (const AddedToken* a = added.by_id(id)) return &a->decode_form;
      return model.id_to_token(id);
    }

    void load(const detail::JsonRef& root) {
      if (!root->is_object()) root.wrong_type("an object");
      const auto version = root.opt("version");
      if (!version.is_null() && version.str() != "1.0")
        version.fail("unsupported tokenizer.json version \"" + version.str() + "\" (expected \"1.0\")");
      if (!root.opt("truncation").is_null())
        root.opt("truncation").fail("truncation is not supported (it must be null)");
      if (!root.opt("padding").is_null()) root.opt("padding").fail("padding is not supported (it must be null)");
      normalizer = Normalizer::from_json(root.opt("normalizer"));
      pre_tokenizer = PreTokenizer::from_json(root.opt("pre_tokenizer"));
      model = BpeModel::from_json(root.at("model"));
      model.prepare(pre_tokenizer.byte_units());
      added = AddedVocab::from_json(root.opt("added_tokens"), model, normalizer);
      decoder = Decoder::from_json(root.opt("decoder"));
      vocab_size = std::max(model.size(), added.max_id() + 1);
      special.assign(static_cast<size_t>(vocab_size), false);
      has_token.assign(static_cast<size_t>(vocab_size), false);
      skip.assign(static_cast<size_t>(vocab_size), false);
      for (const auto& t : added.tokens()) special[static_cast<size_t>(t.id)] = t.special;
      for (int32_t id = 0; id < vocab_size; ++id) {
        const std::string* t = token_of(id);
        has_token[static_cast<size_t>(id)] = t != nullptr;
        skip[static_cast<size_t>(id)] = t && added.is_special_content(*t);
      }
      post = detail::PostProcessor::from_json(root.opt("post_processor"), [this](int32_t id) {
        return id >= 0 && id < vocab_size && has_token[static_cast<size_t>(id)];
      });
      if (decoder.is_byte_level_only()) {
        byte_level_decode = true;
        bl_offsets.assign(static_cast<size_t>(vocab_size) + 1, 0);
        for (int32_t id = 0; id < vocab_size; ++id) {
          if (const std::string* t = token_of(id)) Decoder::byte_level_bytes(*t, bl_bytes);
          DISTILL_CHECK(bl_bytes.size() < UINT32_MAX, "vocabulary too large");
          bl_offsets[static_cast<size_t>(id) + 1] = static_cast<uint32_t>(bl_bytes.size());
        }
      }
    }

    void encode_into(std::string_view text, detail::EncodeScratch& sc, std::vector<int32_t>& ids) const {
      if (text.empty()) return;
      auto& raw = sc.raw_splits;
      if (added.has_raw())
        added.split(text, false, raw);
      else
        raw.assign(1, AddedSplit{0, text.size(), -1});
      for (const AddedSplit& s : raw) {
        if (s.end <= s.start) continue;  // empty splits are dropped, even an added token squeezed to nothing
        if (s.id >= 0) {
          ids.push_back(s.id);
          continue;
        }
        const std::string_view seg = text.substr(s.start, s.end - s.start);
        auto& arena = sc.pre.arena;
        arena.clear();
        // bytes of the normalized segment that stand for offset 0 of the input (Metaspace "first")
        uint32_t origin = s.start == 0 ? static_cast<uint32_t>(utf8::char_len(static_cast<unsigned char>(seg[0]))) : 0;
        if (normalizer.empty()) {
          arena.assign(seg.data(), seg.size());
        } else {
          normalizer.apply(seg, sc.norm, &origin);
          arena.swap(sc.norm);
        }
        DISTILL_CHECK(arena.size() < UINT32_MAX / 2, "input segment too large for the tokenizer (2 GiB)");
        const uint32_t len = static_cast<uint32_t>(arena.size());
        origin = std::min(origin, len);
        if (added.has_normalized()) {
          // the normalized text is split again; splits are copied since the arena may grow below
          added.split(arena, true, sc.norm_splits);
          const std::vector<AddedSplit> subs = sc.norm_splits;
          for (const AddedSplit& n : subs) {
            if (n.end <= n.start) continue;
            if (n.id >= 0) {
              ids.push_back(n.id);
              continue;
            }
            const uint32_t b = static_cast<uint32_t>(n.start);
            model_words(Piece{b, static_cast<uint32_t>(n.end - n.start), b < origin ? origin - b : 0}, sc, ids);
          }
        } else {
          model_words(Piece{0, len, origin}, sc, ids);
        }
      }
    }

    void model_words(Piece seg, detail::EncodeScratch& sc, std::vector<int32_t>& ids) const {
      if (seg.len == 0) return;
      sc.words.clear();
      pre_tokenizer.run(seg, sc.pre, sc.words);
      for (const Piece& w : sc.words)
        model.encode_word(std::string_view(sc.pre.arena.data() + w.off, w.len), sc.bpe, ids);
    }
  };

  std::shared_ptr<const Impl> impl_;

  const Impl& impl() const {
    if (!impl_) throw Error("Tokenizer used before it was loaded (use Tokenizer::from_file or from_json)");
    return *impl_;
  }

  // This thread's scratch for tokenizer `uid` (a few tokenizers per thread are kept).
  static detail::EncodeScratch& scratch(uint64_t uid) {
    thread_local std::array<std::unique_ptr<detail::EncodeScratch>, 4> slots;
    thread_local size_t next = 0;
    for (auto& s : slots)
      if (s && s->uid == uid) return *s;
    auto& s = slots[next++ % slots.size()];
    s = std::make_unique<detail::EncodeScratch>();
    s->uid = uid;
    return *s;
  }

  template <class F>
  static void parallel(size_t n, int num_threads, F&& body) {
    int nt = num_threads > 0 ? num_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    nt = static_cast<int>(std::min<size_t>(static_cast<size_t>(nt), n));
    if (nt <= 1) {
      for (size_t i = 0; i < n; ++i) body(i);
      return;
    }
    std::exception_ptr err;
    std::atomic<bool> failed{false};
    const int64_t count = static_cast<int64_t>(n);
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
#endif
    for (int64_t i = 0; i < count; ++i) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        body(static_cast<size_t>(i));
      } catch (...) {
#if defined(_OPENMP)
#pragma omp critical(distill_tokenizer_error)
#endif
        {
          if (!err) err = std::current_exception();
        }
        failed = true;
      }
    }
    if (err) std::rethrow_exception(err);
  }
};

}  // namespace distill::text
