// The `distill` tool's subcommands (apps/distill/commands.hpp), driven through streams. Expected ids come
// from SPEC §4.4/§5 (checked against HF tokenizers there) and from the Python-written fixtures.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../apps/distill/commands.hpp"
#include "shared_data.hpp"

using namespace distill;

namespace {
std::string run_tok(const app::TokenizeOptions& o, const std::string& input) {
  std::istringstream in(input);
  std::ostringstream out;
  app::run_tokenize(o, in, out);
  return out.str();
}
}  // namespace

TEST_CASE("app: tokenize encodes lines and --decode reverses them (Qwen3)") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/qwen3");
  app::TokenizeOptions o;
  o.tokenizer = dir;
  o.json_text = true;  // the text holds newlines
  // SPEC §4.4: "<|im_start|>assistant\n<think>\n" -> [151644, 77091, 198, 151667, 198].
  CHECK(run_tok(o, "\"<|im_start|>assistant\\n<think>\\n\"\n") == "[151644,77091,198,151667,198]\n");
  // Several lines, batched in small groups, come back in order.
  o.json_text = false;
  o.batch_lines = 2;
  const std::string text = "Natalia sold clips to 48 of her friends.\n\nHow many?\nx\n";
  const std::string ids = run_tok(o, text);
  CHECK(std::count(ids.begin(), ids.end(), '\n') == 4);
  app::TokenizeOptions d = o;
  d.decode = true;
  CHECK(run_tok(d, ids) == text);
  // CRLF input: the "\r" is dropped with the line end.
  CHECK(run_tok(o, "Natalia sold clips\r\nx\r\n") == run_tok(o, "Natalia sold clips\nx\n"));
  // A bad id names the line.
  CHECK_THROWS_WITH_AS(run_tok(d, "[1,2]\n[999999999]\n"), doctest::Contains("stdin:2"), Error);
  CHECK_THROWS_WITH_AS(run_tok(d, "[1,2\n"), doctest::Contains("stdin:1"), Error);
}

TEST_CASE("app: tokenize follows the post-processor flags (Gemma3 <bos>)") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/gemma3");
  app::TokenizeOptions o;
  o.tokenizer = dir;
  const std::string with = run_tok(o, "user\n");
  o.add_special_tokens = false;
  const std::string without = run_tok(o, "user\n");
  CHECK(with == "[2,2364]\n");  // <bos> = 2, "user" = 2364 (SPEC §4.5)
  CHECK(without == "[2364]\n");
  app::TokenizeOptions d;
  d.tokenizer = dir;
  d.decode = true;
  CHECK(run_tok(d, "[2,2364]\n") == "user\n");
  d.skip_special_tokens = false;
  CHECK(run_tok(d, "[2,2364]\n") == "<bos>user\n");
}

TEST_CASE("app: chat renders the template given by --format without a tokenizer") {
  app::ChatOptions o;
  o.format = "gemma3";
  o.generation_prompt = true;
  std::istringstream in(R"([{"role": "user", "content": "Hello"}])");
  std::ostringstream out;
  app::run_chat(o, in, out);
  // SPEC §5.2's example.
  CHECK(out.str() == "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n");

  app::ChatOptions q;
  q.format = "qwen3-thinking";
  q.generation_prompt = true;
  std::istringstream qin(R"([{"role": "user", "content": "What is 2+2?"}])");
  std::ostringstream qout;
  app::run_chat(q, qin, qout);
  CHECK(qout.str() == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n");  // SPEC §5.1

  std::istringstream bad("{not json");
  std::ostringstream sink;
  CHECK_THROWS_AS(app::run_chat(q, bad, sink), Error);
  app::ChatOptions none;
  std::istringstream msgs(R"([{"role": "user", "content": "x"}])");
  CHECK_THROWS_WITH_AS(app::run_chat(none, msgs, sink), doctest::Contains("--tokenizer"), Error);
}

TEST_CASE("app: chat --ids masks the assistant turn") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/gemma3");
  app::ChatOptions o;
  o.tokenizer = dir;
  o.ids = true;
  std::istringstream in(R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])");
  std::ostringstream out;
  app::run_chat(o, in, out);
  const auto j = nlohmann::json::parse(out.str());
  const auto ids = j["ids"].get<std::vector<int32_t>>();
  const auto mask = j["loss_mask"].get<std::vector<int>>();
  REQUIRE(ids.size() == mask.size());
  REQUIRE(ids.size() > 4);
  CHECK(ids[0] == 2);                 // <bos>
  CHECK(ids[ids.size() - 2] == 106);  // <end_of_turn>, trained
  CHECK(mask[ids.size() - 2] == 1);
  CHECK(ids.back() == 107);  // the "\n" after it, not trained
  CHECK(mask.back() == 0);
  CHECK(mask[0] == 0);
}

TEST_CASE("app: inspect a sharded checkpoint written by Python") {
  const std::string dir = test::golden_path("safetensors/sharded");
  std::ifstream idx(dir + "/model.safetensors.index.json");
  const auto index = nlohmann::json::parse(idx);
  const auto total_size = index["metadata"]["total_size"].get<uint64_t>();
  const auto n_tensors = index["weight_map"].size();

  app::InspectOptions o;
  o.path = dir;
  o.json = true;
  std::ostringstream out;
  app::run_inspect(o, out);
  const auto j = nlohmann::json::parse(out.str());
  CHECK(j["shards"] == 2);
  CHECK(j["tensors"].size() == n_tensors);
  CHECK(j["total_bytes"].get<uint64_t>() == total_size);
  // Natural order: layer 0's tensors come before layer 1's, the embedding first.
  CHECK(j["tensors"][0]["name"] == "model.embed_tokens.weight");

  o.json = false;
  o.filter = "layers.1.";
  std::ostringstream table;
  app::run_inspect(o, table);
  CHECK(table.str().find("model.layers.1.mlp.down_proj.weight") != std::string::npos);
  CHECK(table.str().find("model.layers.0.") == std::string::npos);

  o.path = dir + "/missing";
  CHECK_THROWS_AS(app::run_inspect(o, out), Error);
}

TEST_CASE("app: natural order of tensor names") {
  using app::detail::natural_less;
  CHECK(natural_less("model.layers.9.w", "model.layers.10.w"));
  CHECK_FALSE(natural_less("model.layers.10.w", "model.layers.9.w"));
  CHECK(natural_less("a", "b"));
  CHECK(natural_less("a", "a1"));
  CHECK_FALSE(natural_less("a1", "a1"));
  CHECK(natural_less("x007y", "x8y"));
  CHECK(app::detail::with_commas(1234567) == "1,234,567");
  CHECK(app::detail::with_commas(999) == "999");
}
