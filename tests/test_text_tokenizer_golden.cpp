// Golden tests of distill::text::Tokenizer against the Hugging Face `tokenizers` reference (0.23.3) on the
// real Qwen3 and Gemma3 tokenizer.json files: every question and answer of GSM8K train and test (id hashes and
// counts, decode), a hand-written torture set (ids exactly, decode), decode of arbitrary id sequences, vocab
// facts, and batch == one-by-one. Fixtures: tests/golden/tokenizer/, made by
// tools/golden/export_tokenizer_fixtures.py (formats documented there and in tools/golden/README.md).
// Needs ../shared (tokenizers, GSM8K); skips with a message when it is absent.
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "distill/text/tokenizer.hpp"
#include "shared_data.hpp"

using distill::text::Tokenizer;
using nlohmann::json;

namespace {

const std::string kTokenizers[] = {"qwen3", "gemma3"};

uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t fnv_ids(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int32_t id : ids) {
    const auto u = static_cast<uint32_t>(id);
    const unsigned char le[4] = {static_cast<unsigned char>(u), static_cast<unsigned char>(u >> 8),
                                 static_cast<unsigned char>(u >> 16), static_cast<unsigned char>(u >> 24)};
    h = fnv1a64(le, 4, h);
  }
  return h;
}

std::string hex16(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string unhex(const std::string& hex) {
  if (hex.size() % 2 != 0) throw std::runtime_error("odd-length hex in a tokenizer fixture: " + hex);
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json load_json(const std::string& rel) { return json::parse(read_all(distill::test::golden_path(rel))); }

// Printable form of a string for failure messages: ASCII kept, everything else \xHH; truncated.
std::string show(std::string_view s, size_t max_bytes = 240) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_bytes; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  if (s.size() > max_bytes) out += "...(" + std::to_string(s.size()) + " bytes)";
  return "\"" + out + "\"";
}

std::string show_ids(const std::vector<int32_t>& ids, size_t max_ids = 200) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size() && i < max_ids; ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  if (ids.size() > max_ids) out += ",...(" + std::to_string(ids.size()) + " ids)";
  return out + "]";
}

// First position where two id lists differ, for messages.
std::string first_diff(const std::vector<int32_t>& ours, const std::vector<int32_t>& ref) {
  size_t i = 0;
  while (i < ours.size() && i < ref.size() && ours[i] == ref[i]) ++i;
  return "first difference at index " + std::to_string(i) + " (ours " + std::to_string(ours.size()) +
         " ids, reference " + std::to_string(ref.size()) + ")";
}

// The two real tokenizers, each loaded once for the whole test executable.
const Tokenizer& tokenizer(const std::string& name, const std::string& path) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& slot = cache[name];
  if (!slot) slot = std::make_unique<Tokenizer>(Tokenizer::from_file(path));
  return *slot;
}

#define REQUIRE_TOKENIZERS()                                                                        \
  DISTILL_REQUIRE_SHARED(qwen3_path, "tokenizers/qwen3/tokenizer.json");                            \
  DISTILL_REQUIRE_SHARED(gemma3_path, "tokenizers/gemma3/tokenizer.json");                          \
  const std::map<std::string, const Tokenizer*> toks = {{"qwen3", &tokenizer("qwen3", qwen3_path)}, \
                                                        {"gemma3", &tokenizer("gemma3", gemma3_path)}}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// ---------------------------------------------------------------------------------------------------------
// GSM8K
// ---------------------------------------------------------------------------------------------------------
struct GsmRecord {
  int line = 0;
  std::string q, a;
};

struct GsmExpected {
  int line = 0;
  size_t nq = 0, na = 0;
  std::string hq, ha, dq, dqs, da, das;
};

std::vector<GsmRecord> read_gsm8k(const std::string& path, uint64_t* file_fnv) {
  const std::string raw = read_all(path);
  *file_fnv = fnv1a64(raw.data(), raw.size());
  std::vector<GsmRecord> out;
  size_t pos = 0;
  int line_no = 0;
  while (pos < raw.size()) {
    size_t end = raw.find('\n', pos);
    if (end == std::string::npos) end = raw.size();
    ++line_no;
    const std::string_view line(raw.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const json r = json::parse(line);
    out.push_back({line_no, r.at("question").get<std::string>(), r.at("answer").get<std::string>()});
  }
  return out;
}

// Checks one split under one tokenizer; prints the first few mismatching records.
void check_gsm8k(const std::string& tok_name, const Tokenizer& tok, const std::string& split,
                 const std::string& jsonl_path, const json& full_ids) {
  const std::string fixture = distill::test::golden_path("tokenizer/gsm8k_" + tok_name + "_" + split + ".txt");
  std::ifstream in(fixture);
  REQUIRE_MESSAGE(in.good(), "missing fixture " << fixture << " (tools/golden/export_tokenizer_fixtures.py)");
  std::string line, magic, f_tok, f_split, f_fnv;
  size_t n_records = 0, total_q = 0, total_a = 0;
  int bos = -1;
  while (std::getline(in, line) && (line.empty() || line[0] == '#')) {
  }
  std::istringstream hs(line);
  hs >> magic >> f_tok >> f_split >> n_records >> total_q >> total_a >> bos >> f_fnv;
  REQUIRE_MESSAGE((magic == "gsm8k-tokenizer-v1" && f_tok == tok_name && f_split == split),
                  "bad header in " << fixture << ": " << line);
  std::vector<GsmExpected> exp;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    GsmExpected e;
    ls >> e.line >> e.nq >> e.hq >> e.na >> e.ha >> e.dq >> e.dqs >> e.da >> e.das;
    REQUIRE_MESSAGE(!ls.fail(), "bad record line in " << fixture << ": " << line);
    exp.push_back(e);
  }
  REQUIRE(exp.size() == n_records);

  uint64_t file_fnv = 0;
  const auto records = read_gsm8k(jsonl_path, &file_fnv);
  REQUIRE_MESSAGE(hex16(file_fnv) == f_fnv, jsonl_path << " is not the GSM8K file the fixtures were made from");
  REQUIRE(records.size() == exp.size());

  std::vector<std::string> texts;
  texts.reserve(2 * records.size());
  for (const auto& r : records) texts.push_back(r.q);
  for (const auto& r : records) texts.push_back(r.a);
  const auto ids = tok.encode_batch(texts, /*add_special_tokens=*/false);
  REQUIRE(ids.size() == texts.size());
  const auto dec = tok.decode_batch(ids, /*skip_special_tokens=*/false);
  const auto dec_skip = tok.decode_batch(ids, /*skip_special_tokens=*/true);
  REQUIRE(dec.size() == texts.size());
  REQUIRE(dec_skip.size() == texts.size());

  // Reference ids for the first records, when committed.
  std::map<int, std::pair<std::vector<int32_t>, std::vector<int32_t>>> ref_ids;
  for (const auto& r : full_ids.at("records").at(tok_name).at(split))
    ref_ids[r.at("line").get<int>()] = {ids_of(r.at("q")), ids_of(r.at("a"))};

  auto dec_matches = [](const std::string& field, const std::string& decoded, const std::string& text) {
    return field == "=" ? decoded == text : field == hex16(fnv1a64(decoded.data(), decoded.size()));
  };

  size_t our_q = 0, our_a = 0, enc_bad = 0, dec_bad = 0, shown = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    const auto& e = exp[i];
    REQUIRE_MESSAGE(r.line == e.line, "line numbers out of step: data line " << r.line << ", fixture " << e.line);
    const auto& iq = ids[i];
    const auto& ia = ids[records.size() + i];
    our_q += iq.size();
    our_a += ia.size();
    const bool q_ok = iq.size() == e.nq && hex16(fnv_ids(iq)) == e.hq;
    const bool a_ok = ia.size() == e.na && hex16(fnv_ids(ia)) == e.ha;
    const bool dq_ok = dec_matches(e.dq, dec[i], r.q) && dec_matches(e.dqs, dec_skip[i], r.q);
    const bool da_ok =
        dec_matches(e.da, dec[records.size() + i], r.a) && dec_matches(e.das, dec_skip[records.size() + i], r.a);
    enc_bad += !q_ok + !a_ok;
    dec_bad += !dq_ok + !da_ok;
    if ((q_ok && a_ok && dq_ok && da_ok) || shown >= 5) continue;
    ++shown;
    std::ostringstream msg;
    msg << tok_name << " GSM8K " << split << " line " << r.line << ":";
    const auto ref = ref_ids.find(r.line);
    for (int which = 0; which < 2; ++which) {
      const bool ok = which == 0 ? q_ok : a_ok;
      const bool dok = which == 0 ? dq_ok : da_ok;
      if (ok && dok) continue;
      const auto& text = which == 0 ? r.q : r.a;
      const auto& ours = which == 0 ? iq : ia;
      msg << "\n  " << (which == 0 ? "question" : "answer") << " " << show(text, 400);
      if (!ok) {
        msg << "\n    encode: ours " << ours.size() << " ids " << show_ids(ours) << "\n    reference "
            << (which == 0 ? e.nq : e.na) << " ids, hash " << (which == 0 ? e.hq : e.ha);
        if (ref != ref_ids.end()) {
          const auto& rid = which == 0 ? ref->second.first : ref->second.second;
          msg << " " << show_ids(rid) << "\n    " << first_diff(ours, rid);
        }
      }
      if (!dok) {
        const size_t k = which == 0 ? i : records.size() + i;
        msg << "\n    decode(skip=false) ours " << show(dec[k], 400) << "\n    decode(skip=true) ours "
            << show(dec_skip[k], 400) << " (reference fields " << (which == 0 ? e.dq : e.da) << " "
            << (which == 0 ? e.dqs : e.das) << "; '=' means equal to the text)";
      }
    }
    MESSAGE(msg.str());
  }
  INFO(tok_name << " GSM8K " << split);
  CHECK_MESSAGE(enc_bad == 0, enc_bad << " of " << texts.size() << " texts encode differently from HF");
  CHECK_MESSAGE(dec_bad == 0, dec_bad << " of " << texts.size() << " decodes differ from HF");
  CHECK(our_q == total_q);
  CHECK(our_a == total_a);

  // add_special_tokens=true: the fixed prefix (Gemma <bos>) or nothing, on a subset.
  int bos_bad = 0;
  for (size_t i = 0; i < records.size(); i += 97) {
    for (const std::string* text : {&records[i].q, &records[i].a}) {
      std::vector<int32_t> expect;
      if (bos >= 0) expect.push_back(bos);
      const auto plain = tok.encode(*text, false);
      expect.insert(expect.end(), plain.begin(), plain.end());
      const auto got = tok.encode(*text, true);
      if (got != expect && bos_bad++ < 3)
        MESSAGE(tok_name << " line " << records[i].line << " add_special_tokens=true: ours " << show_ids(got, 20)
                         << ", expected " << show_ids(expect, 20));
    }
  }
  CHECK_MESSAGE(bos_bad == 0, bos_bad << " texts get a wrong add_special_tokens=true prefix (expected "
                                      << (bos >= 0 ? "[" + std::to_string(bos) + "]" : "none") << ")");
}

// ---------------------------------------------------------------------------------------------------------
// Torture set
// ---------------------------------------------------------------------------------------------------------
struct TortureCase {
  std::string name, input, repaired;  // repaired = input.decode('utf-8', 'replace') as Python does
  const json* j = nullptr;
};

std::vector<TortureCase> torture_cases(const json& doc) {
  std::vector<TortureCase> out;
  for (const auto& c : doc.at("cases")) {
    TortureCase t;
    t.name = c.at("name").get<std::string>();
    if (c.contains("hex")) {
      t.input = unhex(c.at("hex").get<std::string>());
    } else {
      const std::string unit = unhex(c.at("repeat_hex").get<std::string>());
      for (int k = 0; k < c.at("repeat_count").get<int>(); ++k) t.input += unit;
    }
    t.repaired = c.contains("repaired_hex") ? unhex(c.at("repaired_hex").get<std::string>()) : t.input;
    t.j = &c;
    out.push_back(std::move(t));
  }
  return out;
}

std::string expected_text(const json& field, const std::string& same) {
  const auto s = field.get<std::string>();
  return s == "=" ? same : unhex(s);
}

}  // namespace

TEST_CASE("tokenizer golden: vocab facts match HF") {
  REQUIRE_TOKENIZERS();
  const auto& q = *toks.at("qwen3");
  const auto& g = *toks.at("gemma3");
  // SPEC §4.4 / §4.5, checked against HF.
  CHECK(q.vocab_size() == 151669);
  CHECK(q.token_to_id("<think>") == std::optional<int32_t>(151667));
  CHECK_FALSE(q.is_special(151667));
  CHECK(q.token_to_id("<|im_end|>") == std::optional<int32_t>(151645));
  CHECK(q.is_special(151645));
  CHECK(q.id_to_token(198) == "\xC4\x8A");  // "Ċ", byte-level "\n"
  CHECK(g.vocab_size() == 262145);
  CHECK(g.token_to_id("<bos>") == std::optional<int32_t>(2));
  CHECK(g.is_special(2));
  CHECK(g.token_to_id("\n") == std::optional<int32_t>(107));
  CHECK_FALSE(g.is_special(107));
  CHECK(g.id_to_token(106) == "<end_of_turn>");

  const json doc = load_json("tokenizer/vocab.json");
  for (const std::string& name : kTokenizers) {
    INFO(name);
    const auto& tok = *toks.at(name);
    const auto& v = doc.at(name);
    CHECK(tok.vocab_size() == v.at("vocab_size").get<int32_t>());
    int bad = 0;
    for (const auto& t : v.at("tokens")) {
      const auto id = t.at("id").get<int32_t>();
      const std::string s = unhex(t.at("hex").get<std::string>());
      const bool special = t.at("special").get<bool>();
      const auto to_id = t.at("to_id").get<int32_t>();
      const bool ok = tok.id_to_token(id) == s && tok.is_special(id) == special && tok.token_to_id(s) == to_id;
      if (!ok && bad++ < 10)
        FAIL_CHECK(name << " id " << id << ": ours token " << show(tok.id_to_token(id)) << " special "
                        << tok.is_special(id) << " token_to_id " << tok.token_to_id(s).value_or(-1) << "; HF token "
                        << show(s) << " special " << special << " token_to_id " << to_id);
    }
    CHECK_MESSAGE(bad == 0, bad << " vocab entries differ");
    for (const auto& h : v.at("absent")) {
      const std::string s = unhex(h.get<std::string>());
      CHECK_MESSAGE(!tok.token_to_id(s).has_value(), name << " token_to_id(" << show(s) << ") should be absent");
    }
  }
}

TEST_CASE("tokenizer golden: torture set matches HF exactly") {
  REQUIRE_TOKENIZERS();
  const json doc = load_json("tokenizer/torture.json");
  const auto cases = torture_cases(doc);
  CHECK(cases.size() >= 150);
  std::vector<std::string> failed;
  for (const std::string& name : kTokenizers) {
    const auto& tok = *toks.at(name);
    for (const auto& c : cases) {
      const json& r = c.j->at(name);
      const auto ref = ids_of(r.at("ids"));
      std::vector<int32_t> ref_sp;
      if (r.contains("ids_special")) {
        ref_sp = ids_of(r.at("ids_special"));
      } else {
        ref_sp = ids_of(r.at("special_prefix"));
        ref_sp.insert(ref_sp.end(), ref.begin(), ref.end());
      }
      const auto ours = tok.encode(c.input, false);
      const auto ours_sp = tok.encode(c.input, true);
      std::ostringstream msg;
      if (ours != ref)
        msg << "\n  encode(add_special_tokens=false): ours " << show_ids(ours, 80) << "\n    HF " << show_ids(ref, 80)
            << "\n    " << first_diff(ours, ref);
      if (ours_sp != ref_sp)
        msg << "\n  encode(add_special_tokens=true): ours " << show_ids(ours_sp, 80) << "\n    HF "
            << show_ids(ref_sp, 80);
      // Decode the reference ids, so a decode failure is not masked by an encode failure.
      const std::pair<const char*, std::string> decs[] = {{"dec", tok.decode(ref, false)},
                                                          {"dec_skip", tok.decode(ref, true)},
                                                          {"dec_special", tok.decode(ref_sp, false)},
                                                          {"dec_special_skip", tok.decode(ref_sp, true)}};
      for (const auto& [field, got] : decs) {
        const std::string want = expected_text(r.at(field), c.repaired);
        if (got != want) msg << "\n  " << field << ": ours " << show(got) << "\n    HF " << show(want);
      }
      if (!msg.str().empty()) {
        failed.push_back(name + ":" + c.name);
        if (failed.size() <= 60)
          FAIL_CHECK(name << " torture case '" << c.name << "' input " << show(c.input) << msg.str());
      }
    }
  }
  std::string list;
  for (const auto& f : failed) list += " " + f;
  CHECK_MESSAGE(failed.empty(), failed.size() << " torture cases fail:" << list);
}

TEST_CASE("tokenizer golden: decode of arbitrary id sequences matches HF") {
  REQUIRE_TOKENIZERS();
  const json doc = load_json("tokenizer/decode.json");
  int n = 0;
  for (const auto& c : doc.at("cases")) {
    const auto& tok = *toks.at(c.at("tokenizer").get<std::string>());
    const auto ids = ids_of(c.at("ids"));
    const std::string want = unhex(c.at("dec").get<std::string>());
    const std::string want_skip = unhex(c.at("dec_skip").get<std::string>());
    const std::string got = tok.decode(ids, false);
    const std::string got_skip = tok.decode(ids, true);
    INFO("decode case " << c.at("name").get<std::string>() << " ids " << show_ids(ids, 80));
    CHECK_MESSAGE(got == want, "skip_special_tokens=false: ours " << show(got) << "\n  HF " << show(want));
    CHECK_MESSAGE(got_skip == want_skip,
                  "skip_special_tokens=true: ours " << show(got_skip) << "\n  HF " << show(want_skip));
    ++n;
  }
  CHECK(n > 50);
}

TEST_CASE("tokenizer golden: every GSM8K question and answer matches HF (qwen3, gemma3; train, test)") {
  REQUIRE_TOKENIZERS();
  const json full_ids = load_json("tokenizer/gsm8k_ids.json");
  for (const char* split : {"train", "test"}) {
    const std::string rel = std::string("data/gsm8k/") + split + ".jsonl";
    const auto jsonl = distill::test::shared_path(rel);
    if (!jsonl) {
      MESSAGE("SKIPPED: ../shared/" << rel << " is absent");
      continue;
    }
    for (const std::string& name : kTokenizers) check_gsm8k(name, *toks.at(name), split, *jsonl, full_ids);
  }
}

TEST_CASE("tokenizer golden: encode_batch and decode_batch equal one-by-one calls on 1, 2 and 4 threads") {
  REQUIRE_TOKENIZERS();
  const json doc = load_json("tokenizer/torture.json");
  std::vector<std::string> texts;
  for (const auto& c : torture_cases(doc)) texts.push_back(c.input);
  if (const auto jsonl = distill::test::shared_path("data/gsm8k/test.jsonl")) {
    uint64_t unused = 0;
    const auto recs = read_gsm8k(*jsonl, &unused);
    for (size_t i = 0; i < recs.size() && i < 300; ++i) {
      texts.push_back(recs[i].q);
      texts.push_back(recs[i].a);
    }
  }
  for (const std::string& name : kTokenizers) {
    const auto& tok = *toks.at(name);
    for (const bool add_special : {false, true}) {
      std::vector<std::vector<int32_t>> one;
      for (const auto& t : texts) one.push_back(tok.encode(t, add_special));
      std::vector<std::string> dec_one, dec_one_skip;
      for (const auto& ids : one) {
        dec_one.push_back(tok.decode(ids, false));
        dec_one_skip.push_back(tok.decode(ids, true));
      }
      for (const int threads : {1, 2, 4}) {
        INFO(name << " threads " << threads << " add_special_tokens " << add_special);
        CHECK(tok.encode_batch(texts, add_special, threads) == one);
        CHECK(tok.decode_batch(one, false, threads) == dec_one);
        CHECK(tok.decode_batch(one, true, threads) == dec_one_skip);
      }
    }
    INFO(name);
    CHECK(tok.encode_batch(std::vector<std::string>{}, true, 2).empty());
    CHECK(tok.decode_batch(std::vector<std::vector<int32_t>>{}, true, 2).empty());
  }
}
