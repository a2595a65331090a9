// SFT data (distill/data/sft.hpp): ids and labels of chats against transformers' apply_chat_template with
// return_assistant_tokens_mask (tests/golden/sft, tools/golden/sft.py), the piecewise encoding against the whole
// text's on hundreds of GSM8K conversations, and padded / packed batches.
#include "distill/data/sft.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/gsm8k.hpp"
#include "distill/ops/cross_entropy.hpp"
#include "distill/text/chat_tokens.hpp"
#include "harness.hpp"
#include "shared_data.hpp"

using namespace distill;
using distill::data::Batch;
using distill::data::build_sft_example;
using distill::data::count_trainable;
using distill::data::kIgnoreLabel;
using distill::data::make_batch;
using distill::data::make_packed_batch;
using distill::data::SftExample;
using distill::test::check_throws_naming;
using distill::text::ChatFormat;
using distill::text::Message;
using json = nlohmann::json;

static_assert(kIgnoreLabel == distill::kIgnoreIndex, "SFT labels use the loss's ignore_index");

namespace {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> out;
  std::istringstream is(s);
  for (int32_t id = 0; is >> id;) out.push_back(id);
  return out;
}

std::string mask_of(const SftExample& ex) {
  std::string m;
  for (int32_t l : ex.labels) m += l == kIgnoreLabel ? '0' : '1';
  return m;
}

// labels are ids or -100, never anything else
void check_labels_consistent(const SftExample& ex) {
  REQUIRE(ex.labels.size() == ex.ids.size());
  for (size_t i = 0; i < ex.ids.size(); ++i) CHECK((ex.labels[i] == kIgnoreLabel || ex.labels[i] == ex.ids[i]));
}

int64_t ones_from_1(const std::string& mask) {
  int64_t n = 0;
  for (size_t i = 1; i < mask.size(); ++i) n += mask[i] == '1';
  return n;
}

void check_golden(ChatFormat fmt, const std::string& tokenizer_dir, const std::string& fixture) {
  const auto tok = text::Tokenizer::from_file(tokenizer_dir);
  std::ifstream in(test::golden_path("sft/" + fixture));
  REQUIRE_MESSAGE(in.good(), "missing fixture tests/golden/sft/" << fixture << " (tools/golden/sft.py makes it)");
  const json doc = json::parse(in);
  CHECK(doc.at("format").get<std::string>() == text::chat_format_name(fmt));
  int cases = 0, straddles = 0, truncated = 0;
  for (const json& c : doc.at("cases")) {
    const std::string name = c.at("name").get<std::string>();
    CAPTURE(name);
    const auto msgs = text::messages_from_json(c.at("messages"), name);
    const SftExample ex = build_sft_example(tok, fmt, msgs);
    check_labels_consistent(ex);
    CHECK(ex.ids == parse_ids(c.at("ids").get<std::string>()));
    const std::string mask = c.at("assistant_mask").get<std::string>();
    CHECK(mask_of(ex) == mask);
    CHECK(count_trainable(ex) == ones_from_1(mask));
    straddles += c.at("straddles").get<int>();
    if (c.contains("truncated")) {
      const json& t = c.at("truncated");
      const SftExample cut = build_sft_example(tok, fmt, msgs, t.at("max_len").get<int64_t>());
      check_labels_consistent(cut);
      CHECK(cut.ids == parse_ids(t.at("ids").get<std::string>()));
      CHECK(mask_of(cut) == t.at("assistant_mask").get<std::string>());
      ++truncated;
    }
    ++cases;
  }
  MESSAGE(text::chat_format_name(fmt) << ": " << cases << " conversations (" << truncated << " also truncated), "
                                      << straddles << " spans whose first byte is inside a token");
  CHECK(cases >= 25);
  CHECK(truncated >= 3);
  if (fmt == ChatFormat::Qwen3Thinking) CHECK(straddles >= 1);  // the overlap rule is exercised
}

Message user(std::string c) { return {"user", std::move(c)}; }
Message assistant(std::string c, std::optional<std::string> reasoning = std::nullopt) {
  Message m{"assistant", std::move(c)};
  m.reasoning_content = std::move(reasoning);
  return m;
}
Message system_msg(std::string c) { return {"system", std::move(c)}; }

// "reasoning lines", "N" of a GSM8K answer
std::pair<std::string, std::string> split_answer(const std::string& a) {
  const size_t p = a.rfind("####");
  if (p == std::string::npos) return {a, ""};
  std::string body = a.substr(0, p);
  while (!body.empty() && (body.back() == '\n' || body.back() == ' ')) body.pop_back();
  std::string num = a.substr(p + 4);
  while (!num.empty() && num.front() == ' ') num.erase(0, 1);
  return {body, num};
}

// Conversations of several shapes from GSM8K records (each uses record k and k+1).
std::vector<std::vector<Message>> gsm8k_conversations(ChatFormat fmt, const data::Gsm8kExample& a,
                                                      const data::Gsm8kExample& b, size_t k) {
  const auto [ra, na] = split_answer(a.answer);
  const auto [rb, nb] = split_answer(b.answer);
  std::vector<std::vector<Message>> out;
  out.push_back({user(a.question), assistant(a.answer)});
  if (fmt == ChatFormat::Qwen3Thinking) {
    out.push_back({user(a.question), assistant("The answer is " + na + ".", ra)});
    out.push_back({user(a.question), assistant("<think>\n" + ra + "\n</think>\n\n#### " + na)});
    out.push_back({system_msg("Think step by step."), user(a.question), assistant(na, ra), user(b.question),
                   assistant("#### " + nb, rb)});
  } else {
    out.push_back({system_msg("Solve the problem."), user(a.question), assistant(a.answer)});
    out.push_back({user(a.question), assistant(a.answer), user(b.question), assistant(b.answer)});
  }
  if (k % 7 == 0) out.push_back({user(a.question), assistant(a.answer), user(b.question)});
  return out;
}

void check_gsm8k(ChatFormat fmt, const std::string& tokenizer_dir, const std::string& gsm8k) {
  const auto tok = text::Tokenizer::from_file(tokenizer_dir);
  std::vector<data::Gsm8kExample> recs;
  data::for_each_gsm8k(gsm8k, [&](data::Gsm8kExample&& e) {
    if (recs.size() < 301) recs.push_back(std::move(e));
  });
  REQUIRE(recs.size() == 301);
  int64_t convs = 0, spans = 0, tokens = 0, trained = 0;
  for (size_t k = 0; k + 1 < recs.size(); ++k) {
    for (const auto& msgs : gsm8k_conversations(fmt, recs[k], recs[k + 1], k)) {
      CAPTURE(recs[k].line);
      const SftExample ex = build_sft_example(tok, fmt, msgs);
      const auto chat = text::render_chat(fmt, msgs);
      // the pieces' ids are the whole text's ids
      REQUIRE(ex.ids == tok.encode(chat.text, /*add_special_tokens=*/false));
      check_labels_consistent(ex);
      // the other masking implementation (text::encode_chat) agrees
      const auto ct = text::encode_chat(tok, chat);
      std::string other;
      for (uint8_t m : ct.loss_mask) other += static_cast<char>('0' + m);
      CHECK(mask_of(ex) == other);
      // every span starts on a token boundary: the trained runs decode exactly to the spans
      std::vector<std::vector<int32_t>> runs;
      for (size_t i = 0; i < ex.ids.size(); ++i)
        if (ex.labels[i] != kIgnoreLabel) {
          if (i == 0 || ex.labels[i - 1] == kIgnoreLabel) runs.emplace_back();
          runs.back().push_back(ex.ids[i]);
        }
      REQUIRE(runs.size() == chat.assistant_spans.size());
      for (size_t s = 0; s < runs.size(); ++s) {
        const auto& sp = chat.assistant_spans[s];
        CHECK(tok.decode(runs[s], false) == chat.text.substr(sp.begin, sp.end - sp.begin));
      }
      ++convs;
      spans += static_cast<int64_t>(runs.size());
      tokens += static_cast<int64_t>(ex.ids.size());
      trained += count_trainable(ex);
    }
  }
  MESSAGE(text::chat_format_name(fmt) << ": " << convs << " GSM8K conversations, " << spans << " assistant spans, "
                                      << tokens << " tokens, " << trained << " trained; no span straddles a token");
  CHECK(convs >= 900);
}

SftExample ex_of(std::vector<int32_t> ids, std::vector<int32_t> labels) { return {std::move(ids), std::move(labels)}; }

std::vector<int32_t> row(const Tensor<int32_t>& t, int64_t r) {
  std::vector<int32_t> v;
  for (int64_t j = 0; j < t.dim(1); ++j) v.push_back(t(r, j));
  return v;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
TEST_CASE("data_sft: ids and labels equal transformers' assistant-token mask (qwen3-thinking)") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/qwen3");
  check_golden(ChatFormat::Qwen3Thinking, dir, "qwen3.json");
}

TEST_CASE("data_sft: ids and labels equal transformers' assistant-token mask (gemma3)") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/gemma3");
  check_golden(ChatFormat::Gemma3, dir, "gemma3.json");
}

TEST_CASE("data_sft: piecewise ids equal the whole text's on GSM8K conversations (qwen3-thinking)") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/qwen3");
  DISTILL_REQUIRE_SHARED(gsm8k, "data/gsm8k/train.jsonl");
  check_gsm8k(ChatFormat::Qwen3Thinking, dir, gsm8k);
}

TEST_CASE("data_sft: piecewise ids equal the whole text's on GSM8K conversations (gemma3)") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/gemma3");
  DISTILL_REQUIRE_SHARED(gsm8k, "data/gsm8k/train.jsonl");
  check_gsm8k(ChatFormat::Gemma3, dir, gsm8k);
}

TEST_CASE("data_sft: a span opening with whitespace that joins the header: the joined token is trained") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/qwen3");
  const auto tok = text::Tokenizer::from_file(dir);
  // an earlier turn renders its raw content: "assistant\n" + "\n\nfirst" puts "\n\n\n" into one token
  const std::vector<Message> msgs{user("q1"), assistant("\n\nfirst"), user("q2"), assistant("second")};
  const SftExample ex = build_sft_example(tok, ChatFormat::Qwen3Thinking, msgs);
  const auto chat = text::render_chat(ChatFormat::Qwen3Thinking, msgs);
  CHECK(ex.ids == tok.encode(chat.text, false));
  const auto nl3 = tok.encode("\n\n\n", false);
  REQUIRE(nl3.size() == 1);
  const auto assistant_id = tok.encode("assistant", false);
  REQUIRE(assistant_id.size() == 1);
  size_t at = 0;
  while (at < ex.ids.size() && ex.ids[at] != nl3[0]) ++at;
  REQUIRE(at < ex.ids.size());
  CHECK(ex.ids[at - 1] == assistant_id[0]);  // the header's "\n" went into the joined token
  CHECK(ex.labels[at - 1] == kIgnoreLabel);
  CHECK(ex.labels[at] == nl3[0]);  // it overlaps the span: trained
}

TEST_CASE("data_sft: truncation, count_trainable and conversations without assistant tokens") {
  DISTILL_REQUIRE_SHARED(dir, "tokenizers/gemma3");
  const auto tok = text::Tokenizer::from_file(dir);
  const std::vector<Message> msgs{user("What is 2+2?"), assistant("4")};
  const SftExample full = build_sft_example(tok, ChatFormat::Gemma3, msgs);
  // <bos> <start_of_turn> user \n ... <end_of_turn> \n <start_of_turn> model \n 4 <end_of_turn> \n
  CHECK(full.ids.front() == *tok.token_to_id("<bos>"));
  CHECK(full.ids.back() != *tok.token_to_id("<end_of_turn>"));  // the "\n" after the turn is not trained
  CHECK(full.labels.back() == kIgnoreLabel);
  CHECK(full.labels[full.labels.size() - 2] == *tok.token_to_id("<end_of_turn>"));  // end of turn is trained
  CHECK(count_trainable(full) == 2);                                                // "4" and <end_of_turn>
  for (int64_t n = 1; n <= static_cast<int64_t>(full.ids.size()) + 2; ++n) {
    const SftExample cut = build_sft_example(tok, ChatFormat::Gemma3, msgs, n);
    const size_t m = std::min(full.ids.size(), static_cast<size_t>(n));
    CHECK(cut.ids == std::vector<int32_t>(full.ids.begin(), full.ids.begin() + static_cast<std::ptrdiff_t>(m)));
    CHECK(cut.labels ==
          std::vector<int32_t>(full.labels.begin(), full.labels.begin() + static_cast<std::ptrdiff_t>(m)));
  }
  const SftExample early = build_sft_example(tok, ChatFormat::Gemma3, msgs, 5);
  CHECK(early.ids.size() == 5);
  CHECK(count_trainable(early) == 0);
  for (int32_t l : early.labels) CHECK(l == kIgnoreLabel);
  const SftExample no_assistant = build_sft_example(tok, ChatFormat::Gemma3, std::vector<Message>{user("hi")});
  CHECK(count_trainable(no_assistant) == 0);
  CHECK(count_trainable(SftExample{}) == 0);
  CHECK(count_trainable(ex_of({5}, {5})) == 0);  // position 0 is never a target
}

TEST_CASE("data_sft: build_sft_example errors") {
  DISTILL_REQUIRE_SHARED(qdir, "tokenizers/qwen3");
  DISTILL_REQUIRE_SHARED(gdir, "tokenizers/gemma3");
  const auto qwen = text::Tokenizer::from_file(qdir);
  const auto gemma = text::Tokenizer::from_file(gdir);
  const std::vector<Message> msgs{user("q"), assistant("a")};
  check_throws_naming<Error>([&] { build_sft_example(qwen, ChatFormat::Gemma3, msgs); },
                             {"<start_of_turn>", "gemma3", "qwen3/tokenizer.json"}, "Qwen tokenizer, Gemma format");
  check_throws_naming<Error>([&] { build_sft_example(gemma, ChatFormat::Qwen3Thinking, msgs); },
                             {"<|im_start|>", "qwen3-thinking"}, "Gemma tokenizer, Qwen format");
  check_throws_naming<Error>([&] { build_sft_example(qwen, ChatFormat::Qwen3Thinking, msgs, -1); }, {"max_len", "-1"},
                             "negative max_len");
  check_throws_naming<Error>([&] { build_sft_example(qwen, ChatFormat::Qwen3Thinking, std::vector<Message>{}); },
                             {"empty conversation"}, "no messages");
  check_throws_naming<Error>(
      [&] {
        build_sft_example(gemma, ChatFormat::Gemma3, std::vector<Message>{user("a"), user("b")});
      },
      {"alternate"}, "the Gemma template raises");
}

// ------------------------------------------------------------------------------------------------
TEST_CASE("data_sft: make_batch pads on the right") {
  const SftExample a = ex_of({1, 2, 3}, {-100, 2, 3});
  const SftExample b = ex_of({4, 5, 6, 7, 8}, {-100, -100, 6, 7, -100});
  const SftExample* list[] = {&a, &b};
  const Batch x = make_batch(list, 0);
  CHECK(x.rows == 2);
  CHECK(x.len == 5);
  CHECK(x.ids.shape() == Shape{2, 5});
  CHECK(x.labels.shape() == Shape{2, 5});
  CHECK(x.attention_mask.shape() == Shape{2, 5});
  CHECK(row(x.ids, 0) == std::vector<int32_t>{1, 2, 3, 0, 0});
  CHECK(row(x.labels, 0) == std::vector<int32_t>{-100, 2, 3, -100, -100});
  CHECK(row(x.attention_mask, 0) == std::vector<int32_t>{1, 1, 1, 0, 0});
  CHECK(row(x.ids, 1) == std::vector<int32_t>{4, 5, 6, 7, 8});
  CHECK(row(x.labels, 1) == std::vector<int32_t>{-100, -100, 6, 7, -100});
  CHECK(row(x.attention_mask, 1) == std::vector<int32_t>{1, 1, 1, 1, 1});
  CHECK(x.segments == std::vector<std::vector<int64_t>>{{3}, {5}});

  const Batch y = make_batch(list, 151643, 4);  // rounded up to a multiple of 4
  CHECK(y.len == 8);
  CHECK(row(y.ids, 1) == std::vector<int32_t>{4, 5, 6, 7, 8, 151643, 151643, 151643});
  CHECK(row(y.attention_mask, 0) == std::vector<int32_t>{1, 1, 1, 0, 0, 0, 0, 0});
  const Batch z = make_batch(list, 0, 5);  // already a multiple
  CHECK(z.len == 5);
  const SftExample* one[] = {&a};
  CHECK(make_batch(one, 0, 1).len == 3);  // a single row: no padding
}

TEST_CASE("data_sft: make_packed_batch packs greedily and cuts the labels at example starts") {
  const SftExample a = ex_of({1, 2, 3}, {1, 2, 3});
  const SftExample b = ex_of({4, 5}, {-100, 5});
  const SftExample c = ex_of({6, 7, 8, 9}, {6, 7, 8, 9});
  const SftExample d = ex_of({10}, {10});
  const SftExample* list[] = {&a, &b, &c, &d};
  const Batch x = make_packed_batch(list, 6, 0);
  // a+b fit in 6 (5 tokens); c does not fit after them (9 > 6): new row; d fits after c (5)
  CHECK(x.rows == 2);
  CHECK(x.len == 5);  // the longest row
  CHECK(x.segments == std::vector<std::vector<int64_t>>{{3, 2}, {4, 1}});
  CHECK(row(x.ids, 0) == std::vector<int32_t>{1, 2, 3, 4, 5});
  CHECK(row(x.labels, 0) == std::vector<int32_t>{-100, 2, 3, -100, 5});
  CHECK(row(x.ids, 1) == std::vector<int32_t>{6, 7, 8, 9, 10});
  CHECK(row(x.labels, 1) == std::vector<int32_t>{-100, 7, 8, 9, -100});
  CHECK(row(x.attention_mask, 0) == std::vector<int32_t>{1, 1, 1, 1, 1});

  // exact fit, then padding of a shorter last row; order is kept (no reordering to fill gaps)
  const Batch y = make_packed_batch(list, 5, 7);
  CHECK(y.segments == std::vector<std::vector<int64_t>>{{3, 2}, {4, 1}});
  const SftExample* list2[] = {&c, &a, &d, &b};
  const Batch z = make_packed_batch(list2, 5, 7);
  CHECK(z.segments == std::vector<std::vector<int64_t>>{{4}, {3, 1}, {2}});
  CHECK(z.len == 4);
  CHECK(row(z.ids, 2) == std::vector<int32_t>{4, 5, 7, 7});
  CHECK(row(z.labels, 2) == std::vector<int32_t>{-100, 5, -100, -100});
  CHECK(row(z.attention_mask, 2) == std::vector<int32_t>{1, 1, 0, 0});
  CHECK(row(z.labels, 1) == std::vector<int32_t>{-100, 2, 3, -100});

  // the packed batch trains the same tokens as the examples' shifted losses
  int64_t want = 0, got = 0;
  for (const SftExample* e : list) want += count_trainable(*e);
  for (int64_t i = 0; i < x.labels.numel(); ++i) got += x.labels.flat(i) != kIgnoreLabel;
  CHECK(got == want);
}

TEST_CASE("data_sft: batch errors") {
  const SftExample a = ex_of({1, 2, 3}, {1, 2, 3});
  const SftExample bad = ex_of({1, 2}, {1});
  const SftExample empty = ex_of({}, {});
  const SftExample* ok[] = {&a};
  const SftExample* mismatched[] = {&a, &bad};
  const SftExample* with_empty[] = {&empty};
  const SftExample* with_null[] = {&a, nullptr};
  check_throws_naming<Error>([] { make_batch({}, 0); }, {"make_batch", "no examples"}, "no examples");
  check_throws_naming<Error>([&] { make_batch(mismatched, 0); }, {"example 1", "2 ids", "1 labels"}, "lengths");
  check_throws_naming<Error>([&] { make_batch(with_empty, 0); }, {"example 0", "empty"}, "empty example");
  check_throws_naming<Error>([&] { make_batch(with_null, 0); }, {"example 1", "null"}, "null example");
  check_throws_naming<Error>([&] { make_batch(ok, 0, 0); }, {"pad_to_multiple", "0"}, "pad_to_multiple 0");
  check_throws_naming<Error>([&] { make_batch(ok, -1); }, {"pad id", "-1"}, "negative pad id");
  check_throws_naming<Error>([&] { make_packed_batch(ok, 2, 0); }, {"example 0", "3 tokens", "max_len 2"},
                             "example longer than a row");
  check_throws_naming<Error>([&] { make_packed_batch(ok, 0, 0); }, {"max_len", "0"}, "max_len 0");
  check_throws_naming<Error>([&] { make_packed_batch(mismatched, 8, 0); }, {"make_packed_batch", "example 1"},
                             "packed lengths");
}
