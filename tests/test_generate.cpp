// generate::generate over the tiny random checkpoints of tests/golden/models/ (tools/golden/models.py): greedy
// generations against HF transformers' own (reference.json, "generate"), one prompt at a time and batched; stop
// ids and finish reasons; finished rows leaving the batch; the streaming callback; seeded sampling (determinism,
// independence from the other rows, top_k = 1 = greedy); the argument errors; generation_config.json parsing;
// continuous batching (generate_continuous) against the same goldens; and TextStream on the real Qwen3 / Gemma3
// tokenizers of ../shared.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "distill/generate/generate.hpp"
#include "distill/generate/text_stream.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/transformer.hpp"
#include "distill/text/tokenizer.hpp"
#include "shared_data.hpp"

using namespace distill;
using namespace distill::generate;
using Ids = std::vector<int32_t>;

namespace {

std::string model_dir(const std::string& name) { return test::golden_path("models/" + name); }

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "missing fixture " << path << " (tools/golden/models.py writes it)");
  return nlohmann::json::parse(in);
}

// reference.json: the prompts and HF's f32 greedy generations, one per prompt.
struct Reference {
  std::vector<Ids> prompts;
  std::vector<Ids> outputs;  // outputs[i]: HF's f32 greedy tokens for prompts[i]
  std::vector<int64_t> eos;
  int64_t max_new = 0;
  explicit Reference(const std::string& name) {
    const auto js = read_json(model_dir(name) + "/reference.json");
    for (const auto& p : js["prompts"]) prompts.push_back(p.get<Ids>());
    outputs.resize(prompts.size());
    for (const auto& g : js["generate"]) {
      if (g["dtype"] != "f32") continue;
      const auto i = g["prompt"].get<size_t>();
      REQUIRE(i < prompts.size());
      outputs[i] = g["output"].get<Ids>();
      eos = g["eos_token_id"].get<std::vector<int64_t>>();
      max_new = g["max_new_tokens"].get<int64_t>();
    }
    for (const auto& o : outputs) REQUIRE(!o.empty());
  }
};

// The message of the distill::Error that f throws ("<no error>" when it returns).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// HF stops a row after it produces a stop id, the stop id being its last output token.
Finish hf_finish(const Ids& out, const std::vector<int64_t>& stops) {
  return std::find(stops.begin(), stops.end(), out.back()) != stops.end() ? Finish::Stop : Finish::Length;
}

template <models::TransformerSpec Spec>
void check_greedy(const std::string& name) {
  const Reference ref(name);
  const auto m = models::Transformer<Spec, float>::load(model_dir(name));
  // The default stop ids are the model's eos ids, which must be the ones HF generated with.
  CHECK(m.dims().eos_token_ids == ref.eos);
  GenerateOptions o;
  o.max_new_tokens = ref.max_new;
  o.stop_ids = ref.eos;
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    CAPTURE(i);
    const auto r = generate::generate(m, {ref.prompts[i]}, o);
    REQUIRE(r.rows.size() == 1);
    CHECK(r.rows[0].tokens == ref.outputs[i]);
    CHECK(r.rows[0].finish == hf_finish(ref.outputs[i], ref.eos));
    CHECK(r.stats.prompt_tokens == static_cast<int64_t>(ref.prompts[i].size()));
    CHECK(r.stats.new_tokens == static_cast<int64_t>(ref.outputs[i].size()));
  }
  // All prompts (5, 13 and 20 tokens) in one batch, with the model's default stop ids.
  GenerateOptions ob;
  ob.max_new_tokens = ref.max_new;
  const auto r = generate::generate(m, ref.prompts, ob);
  REQUIRE(r.rows.size() == ref.prompts.size());
  int64_t prompt_tokens = 0, new_tokens = 0;
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    CAPTURE(i);
    CHECK(r.rows[i].tokens == ref.outputs[i]);
    CHECK(r.rows[i].finish == hf_finish(ref.outputs[i], ref.eos));
    prompt_tokens += static_cast<int64_t>(ref.prompts[i].size());
    new_tokens += static_cast<int64_t>(ref.outputs[i].size());
  }
  CHECK(r.stats.prompt_tokens == prompt_tokens);
  CHECK(r.stats.new_tokens == new_tokens);
}

// A row of HF's output and a token it produced at step 3 that appears in no other place before: used as the
// only stop id, it must end that row after exactly 4 tokens and leave the other rows alone.
struct StopChoice {
  size_t row = 0;
  int32_t id = 0;
};
StopChoice choose_stop(const Reference& ref) {
  for (size_t r = 0; r < ref.outputs.size(); ++r) {
    const int32_t id = ref.outputs[r][3];
    bool unique = std::count(ref.outputs[r].begin(), ref.outputs[r].begin() + 3, id) == 0;
    for (size_t o = 0; o < ref.outputs.size(); ++o)
      if (o != r) unique = unique && std::count(ref.outputs[o].begin(), ref.outputs[o].end(), id) == 0;
    if (unique) return {r, id};
  }
  FAIL("no HF output row has a step-3 token that appears nowhere else");
  return {};
}

// A model that forwards to M and records, per step call, the cache rows it was asked to advance.
template <class M>
struct RecordingModel {
  using value_type = typename M::value_type;
  using device_type = typename M::device_type;
  const M& m;
  mutable std::vector<std::vector<int64_t>> calls;

  const models::ModelDims& dims() const { return m.dims(); }
  auto make_cache(int64_t rows, int64_t max_len) const { return m.make_cache(rows, max_len); }
  template <class Cache>
  auto step(Cache& cache, const Tensor<int32_t>& ids, std::span<const int64_t> rows,
            std::span<const int64_t> n_valid = {}) const {
    REQUIRE(ids.dim(0) == static_cast<int64_t>(rows.size()));
    calls.emplace_back(rows.begin(), rows.end());
    return m.step(cache, ids, rows, n_valid);
  }
};

using Qwen = models::Transformer<models::qwen3::kFamily, float>;
using Gemma = models::Transformer<models::gemma3::kFamily, float>;

}  // namespace

TEST_CASE("greedy generate reproduces transformers' generations, one prompt at a time and batched") {
  SUBCASE("qwen3 tiny") { check_greedy<models::qwen3::kFamily>("qwen3_tiny"); }
  SUBCASE("gemma3 tiny (sliding window 6)") { check_greedy<models::gemma3::kFamily>("gemma3_tiny"); }
}

TEST_CASE("a stop id ends its row (included in the output); ignore_stop runs every row to max_new_tokens") {
  const Reference ref("qwen3_tiny");
  const auto m = Qwen::load(model_dir("qwen3_tiny"));
  const StopChoice stop = choose_stop(ref);
  CAPTURE(stop.row);
  CAPTURE(stop.id);
  GenerateOptions o;
  o.max_new_tokens = ref.max_new;
  o.stop_ids = {stop.id};
  const auto r = generate::generate(m, ref.prompts, o);
  REQUIRE(r.rows.size() == ref.prompts.size());
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    CAPTURE(i);
    if (i == stop.row) {
      CHECK(r.rows[i].tokens == Ids(ref.outputs[i].begin(), ref.outputs[i].begin() + 4));
      CHECK(r.rows[i].finish == Finish::Stop);
    } else {
      CHECK(r.rows[i].tokens == ref.outputs[i]);
      CHECK(r.rows[i].finish == Finish::Length);
    }
  }
  // Several stop ids: the first one a row produces ends it.
  o.stop_ids = {9999, stop.id, 12345};
  CHECK(generate::generate(m, ref.prompts, o).rows[stop.row].tokens.size() == 4);

  o.stop_ids = {stop.id};
  o.ignore_stop = true;
  const auto all = generate::generate(m, ref.prompts, o);
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    CAPTURE(i);
    CHECK(all.rows[i].tokens == ref.outputs[i]);
    CHECK(all.rows[i].finish == Finish::Length);
  }
}

TEST_CASE("a finished row leaves the batch: later steps run only the rows still generating") {
  const Reference ref("qwen3_tiny");
  const auto m = Qwen::load(model_dir("qwen3_tiny"));
  const StopChoice stop = choose_stop(ref);
  RecordingModel<Qwen> rec{m, {}};
  GenerateOptions o;
  o.max_new_tokens = ref.max_new;
  o.stop_ids = {stop.id};
  const auto r = generate::generate(rec, ref.prompts, o);
  for (size_t i = 0; i < ref.prompts.size(); ++i)
    CHECK(r.rows[i].tokens ==
          (i == stop.row ? Ids(ref.outputs[i].begin(), ref.outputs[i].begin() + 4) : ref.outputs[i]));
  // The prefill makes token 0 and decode step k token k: the stop row's 4th token (step 3) is its last, so
  // the prefill and steps 1..3 see all 3 rows and steps 4..11 only the other 2.
  REQUIRE(rec.calls.size() == static_cast<size_t>(ref.max_new));
  std::vector<size_t> sizes;
  for (const auto& c : rec.calls) sizes.push_back(c.size());
  CHECK(sizes == std::vector<size_t>{3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2});
  for (size_t k = 4; k < rec.calls.size(); ++k) {
    CAPTURE(k);
    const auto& c = rec.calls[k];
    CHECK(std::find(c.begin(), c.end(), static_cast<int64_t>(stop.row)) == c.end());
  }

  // With max_new_tokens 1 the prefill alone produces every row's token: no decode step runs.
  rec.calls.clear();
  o.max_new_tokens = 1;
  const auto one = generate::generate(rec, ref.prompts, o);
  CHECK(rec.calls.size() == 1);
  for (size_t i = 0; i < ref.prompts.size(); ++i) CHECK(one.rows[i].tokens == Ids{ref.outputs[i][0]});
}

TEST_CASE("the streaming callback sees every token once, in order per row") {
  const Reference ref("gemma3_tiny");
  const auto m = Gemma::load(model_dir("gemma3_tiny"));
  GenerateOptions o;
  o.max_new_tokens = ref.max_new;
  std::vector<Ids> streamed(ref.prompts.size());
  size_t calls = 0;
  bool bad_row = false;
  const auto r = generate::generate(m, ref.prompts, o, [&](size_t row, int32_t tok) {
    ++calls;
    if (row >= streamed.size()) {
      bad_row = true;
      return;
    }
    streamed[row].push_back(tok);
  });
  CHECK_FALSE(bad_row);
  size_t total = 0;
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    CAPTURE(i);
    CHECK(streamed[i] == r.rows[i].tokens);
    CHECK(r.rows[i].tokens == ref.outputs[i]);
    total += r.rows[i].tokens.size();
  }
  CHECK(calls == total);

  // With a stop id the callback still gets the stop token, and nothing after it.
  const Reference q("qwen3_tiny");
  const StopChoice stop = choose_stop(q);
  const auto mq = Qwen::load(model_dir("qwen3_tiny"));
  o.stop_ids = {stop.id};
  std::vector<Ids> sq(q.prompts.size());
  const auto rq = generate::generate(mq, q.prompts, o, [&](size_t row, int32_t tok) { sq.at(row).push_back(tok); });
  for (size_t i = 0; i < q.prompts.size(); ++i) CHECK(sq[i] == rq.rows[i].tokens);
  CHECK(sq[stop.row].back() == stop.id);
}

TEST_CASE("sampled generation: seeded, independent of the other rows, top_k = 1 is greedy") {
  const Reference ref("qwen3_tiny");
  const auto m = Qwen::load(model_dir("qwen3_tiny"));
  GenerateOptions o;
  o.max_new_tokens = 24;
  o.ignore_stop = true;  // every row makes all 24 tokens
  o.sampling.do_sample = true;
  o.sampling.temperature = 1.5f;
  o.sampling.seed = 1234;

  const auto a = generate::generate(m, ref.prompts, o);
  const auto b = generate::generate(m, ref.prompts, o);
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    CAPTURE(i);
    REQUIRE(a.rows[i].tokens.size() == 24);
    CHECK(a.rows[i].tokens == b.rows[i].tokens);
    // A sampled row is not the greedy one (24 tokens at temperature 1.5 over 256 ids).
    CHECK(Ids(a.rows[i].tokens.begin(), a.rows[i].tokens.begin() + 12) != ref.outputs[i]);
  }
  GenerateOptions o2 = o;
  o2.sampling.seed = o.sampling.seed + 100;
  const auto c = generate::generate(m, ref.prompts, o2);
  for (size_t i = 0; i < ref.prompts.size(); ++i) CHECK(c.rows[i].tokens != a.rows[i].tokens);

  // Row i of a batch seeded s uses seed s + i: alone with that seed, the prompt gives the same tokens.
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    CAPTURE(i);
    GenerateOptions oi = o;
    oi.sampling.seed = o.sampling.seed + i;
    CHECK(generate::generate(m, {ref.prompts[i]}, oi).rows[0].tokens == a.rows[i].tokens);
  }
  // ... and in another batch, at another position (seed shifted to match) with other neighbours.
  GenerateOptions o3 = o;
  o3.sampling.seed = o.sampling.seed - 1;  // row 1 is seeded s - 1 + 2 = s + 1 at position 2
  const auto d = generate::generate(m, {ref.prompts[0], ref.prompts[2], ref.prompts[1]}, o3);
  CHECK(d.rows[2].tokens == a.rows[1].tokens);

  // top_k = 1 keeps only the argmax: sampling becomes HF's greedy decoding whatever the seed and temperature.
  GenerateOptions k1;
  k1.max_new_tokens = ref.max_new;
  k1.sampling.do_sample = true;
  k1.sampling.top_k = 1;
  k1.sampling.temperature = 1.5f;
  k1.sampling.seed = 77;
  const auto g = generate::generate(m, ref.prompts, k1);
  for (size_t i = 0; i < ref.prompts.size(); ++i) CHECK(g.rows[i].tokens == ref.outputs[i]);
}

TEST_CASE("generate: argument errors, context overflow, max_new_tokens 0") {
  const Reference ref("qwen3_tiny");
  const auto m = Qwen::load(model_dir("qwen3_tiny"));
  REQUIRE(m.dims().max_positions == 128);
  GenerateOptions o;
  o.max_new_tokens = 4;

  std::string e = error_of([&] { generate::generate(m, {Ids{}}, o); });
  CHECK(contains(e, "prompt 0 is empty"));
  e = error_of([&] { generate::generate(m, {ref.prompts[0], Ids{}}, o); });
  CHECK(contains(e, "prompt 1 is empty"));

  GenerateOptions neg;
  neg.max_new_tokens = -1;
  e = error_of([&] { generate::generate(m, {ref.prompts[0]}, neg); });
  CHECK(contains(e, "max_new_tokens must be >= 0"));
  CHECK(contains(e, "-1"));

  GenerateOptions bad_t;
  bad_t.sampling.do_sample = true;
  bad_t.sampling.temperature = 0.0f;
  e = error_of([&] { generate::generate(m, {ref.prompts[0]}, bad_t); });
  CHECK(contains(e, "temperature"));

  // The longest prompt has 20 tokens: 20 + 108 = 128 fits the context exactly, 20 + 109 does not (the
  // shorter prompts in the batch do not matter).
  REQUIRE(ref.prompts[2].size() == 20);
  GenerateOptions over;
  over.max_new_tokens = 109;
  e = error_of([&] { generate::generate(m, ref.prompts, over); });
  CHECK(contains(e, "20 tokens"));
  CHECK(contains(e, "109"));
  CHECK(contains(e, "128"));
  CHECK(contains(e, "max_position_embeddings"));
  GenerateOptions fit;
  fit.max_new_tokens = 108;
  fit.ignore_stop = true;
  std::vector<Generation> rows;
  CHECK_NOTHROW(rows = generate::generate(m, {ref.prompts[2]}, fit).rows);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].tokens.size() == 108);
  CHECK(Ids(rows[0].tokens.begin(), rows[0].tokens.begin() + 12) == ref.outputs[2]);

  GenerateOptions zero;
  zero.max_new_tokens = 0;
  size_t calls = 0;
  const auto z = generate::generate(m, ref.prompts, zero, [&](size_t, int32_t) { ++calls; });
  REQUIRE(z.rows.size() == ref.prompts.size());
  for (const auto& g : z.rows) CHECK(g.tokens.empty());
  CHECK(calls == 0);
  CHECK(z.stats.new_tokens == 0);
  // ... but the prompts are still checked.
  CHECK(contains(error_of([&] { generate::generate(m, {Ids{}}, zero); }), "empty"));

  CHECK(generate::generate(m, {}, o).rows.empty());
}

TEST_CASE("parse_generation_config: eos ids, sampling fields, HF defaults, malformed values") {
  using nlohmann::json;
  auto parse = [](const json& j) { return parse_generation_config(j, "gc.json"); };

  CHECK(parse(json{{"eos_token_id", 7}}).eos_token_ids == std::vector<int64_t>{7});
  CHECK(parse(json{{"eos_token_id", {1, 106}}}).eos_token_ids == std::vector<int64_t>{1, 106});
  CHECK(parse(json{{"eos_token_id", nullptr}}).eos_token_ids.empty());

  const auto s = parse(json::parse(R"({"do_sample": true, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                                       "min_p": 0.05, "max_new_tokens": 300, "eos_token_id": [151645, 151643]})"));
  CHECK(s.sampling.do_sample);
  CHECK(s.sampling.temperature == 0.6f);
  CHECK(s.sampling.top_k == 20);
  CHECK(s.sampling.top_p == 0.95f);
  CHECK(s.sampling.min_p == 0.05f);
  REQUIRE(s.max_new_tokens.has_value());
  CHECK(*s.max_new_tokens == 300);
  CHECK(s.eos_token_ids == std::vector<int64_t>{151645, 151643});

  // What HF 5.24 generate uses for unset fields (GenerationConfig._get_default_generation_params): do_sample
  // False, temperature 1.0, top_k 50, top_p 1.0; min_p has no default (None: off).
  const auto d = parse(json::object());
  CHECK(d.eos_token_ids.empty());
  CHECK_FALSE(d.sampling.do_sample);
  CHECK(d.sampling.temperature == 1.0f);
  CHECK(d.sampling.top_k == 50);
  CHECK(d.sampling.top_p == 1.0f);
  CHECK(d.sampling.min_p == 0.0f);
  CHECK_FALSE(d.max_new_tokens.has_value());
  const auto nulls = parse(json::parse(R"({"temperature": null, "top_k": null, "top_p": null})"));
  CHECK(nulls.sampling.temperature == 1.0f);
  CHECK(nulls.sampling.top_k == 50);

  std::string e = error_of([&] { parse(json{{"eos_token_id", "2"}}); });
  CHECK(contains(e, "gc.json"));
  CHECK(contains(e, "eos_token_id"));
  e = error_of([&] { parse(json{{"eos_token_id", {1, "x"}}}); });
  CHECK(contains(e, "eos_token_id"));
  e = error_of([&] { parse(json{{"temperature", "0.7"}}); });
  CHECK(contains(e, "temperature"));
  CHECK(contains(e, "gc.json"));
  e = error_of([&] { parse(json{{"top_p", 2.0}}); });
  CHECK(contains(e, "top_p"));
  CHECK(contains(e, "(0, 1]"));
  e = error_of([&] { parse(json{{"top_k", -3}}); });
  CHECK(contains(e, "top_k"));
  // An integer field given as a huge float is refused, not converted (that conversion is undefined behaviour).
  e = error_of([&] { parse(json{{"top_k", 4.4e58}}); });
  CHECK(contains(e, "top_k must be an integer"));
  e = error_of([&] { parse(json{{"temperature", 0.0}}); });
  CHECK(contains(e, "temperature"));
  e = error_of([&] { parse(json::array({1, 2})); });
  CHECK(contains(e, "not a JSON object"));
}

TEST_CASE("load_generation_config reads a checkpoint's generation_config.json, nullopt without one") {
  const std::string dir = model_dir("qwen3_tiny");
  const auto want = read_json(dir + "/generation_config.json");  // written by transformers
  const auto g = load_generation_config(dir);
  REQUIRE(g.has_value());
  CHECK(g->eos_token_ids == want["eos_token_id"].get<std::vector<int64_t>>());
  CHECK(g->sampling.do_sample == want.value("do_sample", false));
  CHECK(g->sampling.temperature == want.value("temperature", 1.0f));
  CHECK(g->sampling.top_k == want.value("top_k", int64_t{50}));
  CHECK(g->sampling.top_p == want.value("top_p", 1.0f));
  CHECK(g->max_new_tokens.has_value() == want.contains("max_new_tokens"));
  // The model's eos ids (config.json) and generation_config's agree on these checkpoints.
  CHECK(g->eos_token_ids == Qwen::load(dir).dims().eos_token_ids);

  namespace fs = std::filesystem;
  const fs::path tmp =
      fs::temp_directory_path() /
      ("distill_test_generate_" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  CHECK_FALSE(load_generation_config(tmp.string()).has_value());
  std::ofstream(tmp / "generation_config.json") << "{\"eos_token_id\": [1, 2,";
  const std::string e = error_of([&] { load_generation_config(tmp.string()); });
  CHECK(contains(e, "generation_config.json"));
  CHECK(contains(e, "not valid JSON"));
  std::ofstream(tmp / "generation_config.json") << R"({"eos_token_id": 5, "top_p": 1.5})";
  CHECK(contains(error_of([&] { load_generation_config(tmp.string()); }), "top_p"));
  fs::remove_all(tmp);
}

namespace {

// Streams ids one at a time; the pieces with flush() must add up to the full decode, none of them holding a
// U+FFFD from a character cut between tokens.
// Returns how many pushes released nothing.
size_t check_stream(const text::Tokenizer& tok, const Ids& ids, bool expect_clean) {
  TextStream ts(tok);
  std::string joined;
  size_t held = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    CAPTURE(i);
    const std::string piece = ts.push(ids[i]);
    if (expect_clean) CHECK_MESSAGE(!contains(piece, "\xEF\xBF\xBD"), "piece " << i << ": '" << piece << "'");
    held += piece.empty();
    joined += piece;
  }
  const std::string rest = ts.flush();
  if (expect_clean) CHECK(rest.empty());
  joined += rest;
  CHECK(joined == tok.decode(ids));
  CHECK(ts.flush().empty());  // flush resets
  return held;
}

void check_tokenizer(const std::string& dir) {
  const auto tok = text::Tokenizer::from_file(dir);
  // Characters that both tokenizers cut between tokens (Qwen3: byte-level pieces of 😀-like characters; Gemma3:
  // <0xF0>... byte fallback for 𠜎 and 𝔘), a line starting with spaces after a newline (the stream restarts
  // its decode there), a blank line, and an emoji at the very end.
  const std::string text = "Größe 😀 ✓\nnext line 中文\n  indented 𠜎𝔘 ok\n\nend 🧬";
  const Ids ids = tok.encode(text);
  // The text survives a round trip through these tokenizers (checked with HF tokenizers 0.23.3).
  REQUIRE(tok.decode(ids) == text);
  // The test needs at least one token that is not a whole character on its own.
  bool split = false;
  for (const int32_t id : ids) split = split || contains(tok.decode(Ids{id}), "\xEF\xBF\xBD");
  REQUIRE(split);
  CHECK(check_stream(tok, ids, true) > 0);  // something was held back

  // A stream that ends inside a character: flush() releases whatever is left, and the total still equals
  // the decode of the ids.
  const Ids cut_ids = tok.encode("ok 𠜎", false);
  for (size_t n = 1; n <= cut_ids.size(); ++n) {
    CAPTURE(n);
    check_stream(tok, Ids(cut_ids.begin(), cut_ids.begin() + static_cast<int64_t>(n)), false);
  }
}

}  // namespace

TEST_CASE("TextStream on the Qwen3 tokenizer: pieces add up to the decode, never half a character") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/qwen3");
  check_tokenizer(dir);
}

TEST_CASE("TextStream on the Gemma3 tokenizer: pieces add up to the decode, never half a character") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/gemma3");
  check_tokenizer(dir);
}

TEST_CASE("continuous batching: more prompts than cache rows, finished rows refilled, same results as generate") {
  const Reference ref("qwen3_tiny");
  const auto m = Qwen::load(model_dir("qwen3_tiny"));
  const StopChoice stop = choose_stop(ref);
  // Every reference prompt twice, in two orders: 2x as many prompts as cache rows (2), so rows are reused.
  std::vector<Ids> prompts;
  std::vector<size_t> src;
  for (size_t i = 0; i < ref.prompts.size(); ++i) prompts.push_back(ref.prompts[i]), src.push_back(i);
  for (size_t i = ref.prompts.size(); i-- > 0;) prompts.push_back(ref.prompts[i]), src.push_back(i);
  GenerateOptions o;
  o.max_new_tokens = ref.max_new;
  o.stop_ids = {stop.id};  // one prompt stops early, freeing its row for the next
  std::vector<size_t> done_order;
  const auto r = generate_continuous(m, prompts, o, /*slots=*/2, [&](size_t i, const Generation& g) {
    CHECK((g.finish != Finish::Length || static_cast<int64_t>(g.tokens.size()) == ref.max_new));
    done_order.push_back(i);
  });
  REQUIRE(r.rows.size() == prompts.size());
  CHECK(done_order.size() == prompts.size());
  CHECK(std::set<size_t>(done_order.begin(), done_order.end()).size() == prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(i);
    const Ids& want = ref.outputs[src[i]];
    if (src[i] == stop.row) {  // HF's tokens up to and including the stop id
      CHECK(r.rows[i].tokens == Ids(want.begin(), want.begin() + 4));
      CHECK(r.rows[i].finish == Finish::Stop);
    } else {
      CHECK(r.rows[i].tokens == want);  // HF transformers' greedy tokens
      CHECK(r.rows[i].finish == Finish::Length);
    }
  }
  CHECK(r.stats.new_tokens == [&] {
    int64_t n = 0;
    for (const auto& g : r.rows) n += static_cast<int64_t>(g.tokens.size());
    return n;
  }());

  // Sampled: prompt i is seeded seed + i, as row i of generate(): the same tokens whatever the slots.
  GenerateOptions s;
  s.max_new_tokens = 16;
  s.ignore_stop = true;
  s.sampling.do_sample = true;
  s.sampling.temperature = 1.3f;
  s.sampling.seed = 99;
  const auto a = generate::generate(m, prompts, s);
  for (const int64_t slots : {1, 3, 100}) {
    CAPTURE(slots);
    const auto b = generate_continuous(m, prompts, s, slots);
    for (size_t i = 0; i < prompts.size(); ++i) CHECK(b.rows[i].tokens == a.rows[i].tokens);
  }
  CHECK_THROWS_WITH_AS(generate_continuous(m, prompts, s, 0), doctest::Contains("slots must be >= 1"), Error);
  CHECK(generate_continuous(m, {}, s, 2).rows.empty());
}
