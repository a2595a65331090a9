// Chat rendering against transformers' apply_chat_template (tests/golden/chat/cases.json, written by
// tools/golden/export_chat_fixtures.py), assistant spans, errors, format detection and messages_from_json.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/text/chat.hpp"
#include "shared_data.hpp"

using distill::text::ChatFormat;
using distill::text::ContentKind;
using distill::text::Message;
using distill::text::render_chat;
using nlohmann::json;
namespace dt = distill::text;

namespace {

const json& fixture() {
  static const json doc = [] {
    const std::string path = distill::test::golden_path("chat/cases.json");
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "missing " << path << " (tools/golden/export_chat_fixtures.py writes it)");
    std::ostringstream ss;
    ss << in.rdbuf();
    return json::parse(ss.str());
  }();
  return doc;
}

ChatFormat format_of(const json& c) {
  const auto f = dt::chat_format_from_name(c.at("format").get<std::string>());
  REQUIRE(f.has_value());
  return *f;
}

std::string error_of(ChatFormat f, const std::vector<Message>& msgs, bool gen) {
  try {
    render_chat(f, msgs, gen);
  } catch (const distill::Error& e) {
    return e.what();
  }
  return "<no error>";
}

// The role headers and end-of-turn tokens around an assistant span.
std::string_view header_of(ChatFormat f) {
  return f == ChatFormat::Qwen3Thinking ? "<|im_start|>assistant\n" : "<start_of_turn>model\n";
}
std::string_view end_of(ChatFormat f) { return f == ChatFormat::Qwen3Thinking ? "<|im_end|>" : "<end_of_turn>"; }

}  // namespace

TEST_CASE("text_chat: every fixture renders as transformers' apply_chat_template") {
  const json& doc = fixture();
  const json& cases = doc.at("cases");
  REQUIRE(cases.size() >= 100);
  int rendered = 0, errors = 0;
  for (const json& c : cases) {
    const std::string name = c.at("name").get<std::string>() + " [" + c.at("format").get<std::string>() + "]";
    CAPTURE(name);
    const ChatFormat f = format_of(c);
    const bool gen = c.at("add_generation_prompt").get<bool>();
    const auto msgs = dt::messages_from_json(c.at("messages"), name);
    if (c.contains("error")) {
      const std::string want = c["error"].at("message").get<std::string>();
      const std::string got = error_of(f, msgs, gen);
      CHECK_MESSAGE(got.find(want) != std::string::npos, "expected an error containing: " << want << "\ngot: " << got);
      ++errors;
      continue;
    }
    const auto r = render_chat(f, msgs, gen);
    CHECK(r.text == c.at("expected").get<std::string>());
    const json& spans = c.at("assistant_spans");
    REQUIRE(r.assistant_spans.size() == spans.size());
    for (size_t k = 0; k < spans.size(); ++k) {
      CHECK(r.assistant_spans[k].begin == spans[k][0].get<size_t>());
      CHECK(r.assistant_spans[k].end == spans[k][1].get<size_t>());
    }
    ++rendered;
  }
  MESSAGE(rendered << " renderings and " << errors << " errors match");
  CHECK(errors >= 10);
}

TEST_CASE("text_chat: assistant spans start after the role header and end with the end-of-turn token") {
  for (const json& c : fixture().at("cases")) {
    if (c.contains("error")) continue;
    const std::string name = c.at("name").get<std::string>() + " [" + c.at("format").get<std::string>() + "]";
    CAPTURE(name);
    const ChatFormat f = format_of(c);
    const auto msgs = dt::messages_from_json(c.at("messages"), name);
    const auto r = render_chat(f, msgs, c.at("add_generation_prompt").get<bool>());
    // one span per assistant turn: Qwen renders every "assistant" message; Gemma also the literal role "model"
    size_t turns = 0;
    for (const auto& m : msgs) turns += m.role == "assistant" || (f == ChatFormat::Gemma3 && m.role == "model");
    CHECK(r.assistant_spans.size() == turns);
    size_t prev_end = 0;
    for (const auto& s : r.assistant_spans) {
      REQUIRE(s.begin <= s.end);
      REQUIRE(s.end <= r.text.size());
      CHECK(s.begin >= prev_end);
      prev_end = s.end;
      const std::string_view text(r.text), hdr = header_of(f), eot = end_of(f);
      CHECK(text.substr(0, s.begin).ends_with(hdr));
      CHECK(text.substr(s.begin, s.end - s.begin).ends_with(eot));
      // every rendered turn ends "<end>\n", and the span stops before that "\n"
      CHECK(text.substr(s.end, 1) == "\n");
    }
  }
}

TEST_CASE("text_chat: SPEC examples") {
  const std::vector<Message> q{{"user", "What is 2+2?"}};
  CHECK(render_chat(ChatFormat::Qwen3Thinking, q, true).text ==
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n");
  const std::vector<Message> g{{"user", "Hello"}};
  CHECK(render_chat(ChatFormat::Gemma3, g, true).text ==
        "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n");
  // a training example with empty reasoning; the span covers the think block, the answer and <|im_end|>
  const std::vector<Message> t{{"user", "Q"}, {"assistant", "A", ""}};
  const auto r = render_chat(ChatFormat::Qwen3Thinking, t);
  CHECK(r.text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n");
  REQUIRE(r.assistant_spans.size() == 1);
  CHECK(r.text.substr(r.assistant_spans[0].begin, r.assistant_spans[0].end - r.assistant_spans[0].begin) ==
        "<think>\n\n</think>\n\nA<|im_end|>");
}

TEST_CASE("text_chat: errors where the templates raise") {
  const std::vector<Message> none;
  for (ChatFormat f : {ChatFormat::Qwen3Thinking, ChatFormat::Gemma3})
    CHECK(error_of(f, none, true).find("empty conversation") != std::string::npos);
  const std::vector<Message> two_users{{"user", "a"}, {"user", "b"}};
  const std::string e = error_of(ChatFormat::Gemma3, two_users, false);
  CHECK(e.find("Conversation roles must alternate user/assistant/user/assistant/...") != std::string::npos);
  CHECK(e.find("message 1") != std::string::npos);
  CHECK_NOTHROW(render_chat(ChatFormat::Qwen3Thinking, two_users));  // Qwen does not check alternation
  // a system message with list content: Qwen concatenates str + list (TypeError); Gemma takes the first part
  Message sys{"system", ""};
  sys.kind = ContentKind::Parts;
  const std::vector<Message> empty_list{sys, {"user", "q"}};
  CHECK(error_of(ChatFormat::Qwen3Thinking, empty_list, false).find("can only concatenate str") != std::string::npos);
  CHECK(error_of(ChatFormat::Gemma3, empty_list, false).find("list object has no element 0") != std::string::npos);
}

TEST_CASE("text_chat: Gemma trim is Python str.strip (Unicode whitespace, nothing else)") {
  // every code point Python's str.isspace() accepts, and some it does not
  const std::vector<std::string> spaces{"\t",     "\n",     "\v",     "\f",     "\r",     "\x1c",   "\x1d",   "\x1e",
                                        "\x1f",   " ",      "\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002",
                                        "\u2003", "\u2004", "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a",
                                        "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"};
  for (const auto& s : spaces) {
    CAPTURE(s);
    CHECK(dt::utf8::py_strip(s + "x" + s + s) == "x");
  }
  for (const std::string s : {"\u200b", "\ufeff", "\u180e", "\u00ad", "\x7f"}) {
    CAPTURE(s);
    CHECK(dt::utf8::py_strip(s + "x" + s) == s + "x" + s);
  }
  CHECK(dt::utf8::py_strip("") == "");
  CHECK(dt::utf8::py_strip(" \u3000 ") == "");
  // malformed UTF-8 is never whitespace: stripping stops at it and keeps it
  CHECK(dt::utf8::py_strip(" \xa0x\xc2 ") == "\xa0x\xc2");
  CHECK(dt::utf8::py_strip("\xe3\x80 x") == "\xe3\x80 x");
  CHECK(dt::utf8::py_strip(" \xc0\xa0 ") == "\xc0\xa0");  // overlong U+0020
  const std::vector<Message> m{{"user", "\u3000 hi\u2029"}};
  CHECK(render_chat(ChatFormat::Gemma3, m).text == "<bos><start_of_turn>user\nhi<end_of_turn>\n");
}

TEST_CASE("text_chat: format names and detection") {
  CHECK(dt::chat_format_from_name("qwen3-thinking") == ChatFormat::Qwen3Thinking);
  CHECK(dt::chat_format_from_name("gemma3") == ChatFormat::Gemma3);
  CHECK_FALSE(dt::chat_format_from_name("qwen3").has_value());
  CHECK_FALSE(dt::chat_format_from_name("").has_value());
  CHECK(dt::chat_format_name(ChatFormat::Gemma3) == "gemma3");

  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("distill_test_chat_" + std::to_string(::getpid()));
  fs::remove_all(root);
  const auto write = [&](const fs::path& p, const std::string& s) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << s;
  };
  write(root / "jinja" / "chat_template.jinja", "{{ '<start_of_turn>' }}");
  CHECK(dt::detect_chat_format((root / "jinja").string()) == ChatFormat::Gemma3);
  write(root / "cfg" / "tokenizer_config.json", R"({"chat_template": "{{ '<|im_start|>' }}"})");
  CHECK(dt::detect_chat_format((root / "cfg").string()) == ChatFormat::Qwen3Thinking);
  write(root / "list" / "tokenizer_config.json",
        R"({"chat_template": [{"name": "tool_use", "template": "x"},
                            {"name": "default", "template": "<start_of_turn>"}]})");
  CHECK(dt::detect_chat_format((root / "list").string()) == ChatFormat::Gemma3);
  write(root / "tok" / "tokenizer_config.json", R"({"eos_token": "<|im_end|>"})");
  write(root / "tok" / "tokenizer.json", R"({"added_tokens": [{"id": 1, "content": "<|im_start|>"}]})");
  CHECK(dt::detect_chat_format((root / "tok").string()) == ChatFormat::Qwen3Thinking);

  const auto err = [](const fs::path& p) {
    try {
      dt::detect_chat_format(p.string());
    } catch (const distill::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  fs::create_directories(root / "empty");
  CHECK(err(root / "empty").find("no chat_template.jinja, tokenizer_config.json or tokenizer.json") !=
        std::string::npos);
  write(root / "both" / "chat_template.jinja", "<|im_start|> <start_of_turn>");
  CHECK(err(root / "both").find("cannot tell the chat format") != std::string::npos);
  write(root / "bad" / "tokenizer_config.json", "{\"chat_template\": ");
  CHECK(err(root / "bad").find("invalid JSON") != std::string::npos);
  CHECK(err(root / "bad").find("tokenizer_config.json") != std::string::npos);
  fs::remove_all(root);
}

TEST_CASE("text_chat: detection on the real tokenizer directories") {
  DISTILL_REQUIRE_SHARED(qwen, "tokenizers/qwen3/tokenizer_config.json");
  DISTILL_REQUIRE_SHARED(gemma, "tokenizers/gemma3/tokenizer_config.json");
  namespace fs = std::filesystem;
  CHECK(dt::detect_chat_format(fs::path(qwen).parent_path().string()) == ChatFormat::Qwen3Thinking);
  CHECK(dt::detect_chat_format(fs::path(gemma).parent_path().string()) == ChatFormat::Gemma3);
}

TEST_CASE("text_chat: messages_from_json reads roles, contents, parts and reasoning aliases") {
  const auto m = dt::messages_from_json(json::parse(R"([
    {"role": "system", "content": "S"},
    {"role": "user", "content": [{"type": "text", "text": "t"}, {"type": "image", "url": "x"}, {"type": "audio"}]},
    {"role": "assistant", "content": null, "thinking": "T", "tool_calls": []},
    {"role": "assistant", "content": "a", "reasoning_content": null, "reasoning": "R", "name": "ignored"},
    {"role": "user"}
  ])"));
  REQUIRE(m.size() == 5);
  CHECK(m[0].kind == ContentKind::Text);
  CHECK(m[0].content == "S");
  CHECK_FALSE(m[0].reasoning_content.has_value());
  CHECK(m[1].kind == ContentKind::Parts);
  REQUIRE(m[1].parts.size() == 3);
  CHECK(m[1].parts[0].text == "t");
  CHECK(m[1].parts[1].type == "image");
  CHECK_FALSE(m[1].parts[1].text.has_value());
  CHECK(m[1].parts[2].type == "audio");
  CHECK(m[2].kind == ContentKind::Missing);
  CHECK(m[2].reasoning_content == "T");
  CHECK(m[3].reasoning_content == "R");
  CHECK(m[4].kind == ContentKind::Missing);
  CHECK(dt::messages_from_json(json::array()).empty());
}

TEST_CASE("text_chat: messages_from_json rejects malformed input with the place named") {
  const auto err = [](const char* text) {
    try {
      dt::messages_from_json(json::parse(text), "conv.json");
    } catch (const distill::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  struct Bad {
    const char* json;
    const char* message;
  };
  const Bad bad[] = {
      {R"({"role": "user", "content": "x"})", "expected a JSON array of messages, got object"},
      {R"("hello")", "expected a JSON array of messages, got string"},
      {R"([1])", "message 0: expected an object, got number"},
      {R"([{"content": "x"}])", "message 0: \"role\" must be a string"},
      {R"([{"role": null, "content": "x"}])", "message 0: \"role\" must be a string"},
      {R"([{"role": "user", "content": "a"}, {"role": 3, "content": "x"}])", "message 1: \"role\" must be a string"},
      {R"([{"role": "user", "content": 42}])", "message 0: \"content\" must be a string, a list of parts or null"},
      {R"([{"role": "user", "content": {"text": "x"}}])", "\"content\" must be a string, a list of parts or null"},
      {R"([{"role": "user", "content": ["x"]}])", "message 0, content part 0: expected an object, got string"},
      {R"([{"role": "user", "content": [{"type": 1}]}])", "content part 0: \"type\" must be a string"},
      {R"([{"role": "user", "content": [{"type": "text", "text": null}]}])", "\"text\" must be a string"},
      {R"([{"role": "user", "content": [{"type": "image"}, {"type": "text"}]}])",
       "content part 1: a \"text\" part needs a \"text\" string"},
      {R"([{"role": "assistant", "content": "x", "reasoning_content": 5}])",
       "message 0: \"reasoning_content\" must be a string"},
      {R"([{"role": "assistant", "content": "x", "thinking": ["a"]}])", "\"thinking\" must be a string"},
      {R"([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}])",
       "message 0: \"tool_calls\" are not supported"},
  };
  for (const auto& b : bad) {
    CAPTURE(b.json);
    const std::string e = err(b.json);
    CHECK_MESSAGE(e.find(b.message) != std::string::npos, e);
    CHECK(e.starts_with("conv.json: "));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Token ids and loss masks (needs the tokenizer and the real tokenizer.json files).
#if __has_include("distill/text/tokenizer.hpp")
#include "distill/text/chat_tokens.hpp"

namespace {

void check_chat_tokens(ChatFormat f, const std::string& tokenizer_json) {
  const auto tok = dt::Tokenizer::from_file(tokenizer_json);
  int cases = 0, straddles = 0;
  for (const json& c : fixture().at("cases")) {
    if (c.contains("error") || format_of(c) != f) continue;
    const std::string name = c.at("name").get<std::string>();
    CAPTURE(name);
    const auto msgs = dt::messages_from_json(c.at("messages"), name);
    const auto r = render_chat(f, msgs, c.at("add_generation_prompt").get<bool>());
    const auto ct = dt::encode_chat(tok, r);
    // the pieces are cut where no token can cross, so the ids are those of the whole text
    CHECK(ct.ids == tok.encode(r.text, false));
    REQUIRE(ct.loss_mask.size() == ct.ids.size());
    // and both equal transformers' apply_chat_template(tokenize=True, return_assistant_tokens_mask=True)
    std::vector<int32_t> hf_ids;
    std::istringstream is(c.at("ids").get<std::string>());
    for (int32_t id = 0; is >> id;) hf_ids.push_back(id);
    CHECK(ct.ids == hf_ids);
    std::string mask;
    for (uint8_t m : ct.loss_mask) mask += static_cast<char>('0' + m);
    CHECK(mask == c.at("assistant_mask").get<std::string>());
    // the masked tokens form one run per span and decode to the span's text
    std::vector<std::vector<int32_t>> runs;
    for (size_t i = 0; i < ct.ids.size(); ++i) {
      CHECK(ct.loss_mask[i] <= 1);
      if (ct.loss_mask[i] == 1) {
        if (i == 0 || ct.loss_mask[i - 1] == 0) runs.emplace_back();
        runs.back().push_back(ct.ids[i]);
      }
    }
    REQUIRE(runs.size() == r.assistant_spans.size());
    for (size_t k = 0; k < runs.size(); ++k) {
      const auto& s = r.assistant_spans[k];
      const std::string span = r.text.substr(s.begin, s.end - s.begin);
      const std::string got = tok.decode(runs[k], /*skip_special_tokens=*/false);
      if (got == span) continue;
      // A token that joins the header's "\n" with whitespace opening the span overlaps the span and is masked:
      // the decoded run then starts with that part of the header.
      ++straddles;
      CHECK_MESSAGE(got.ends_with(span), "masked tokens decode to '" << got << "', span is '" << span << "'");
      const std::string extra = got.substr(0, got.size() - std::min(got.size(), span.size()));
      CHECK(r.text.substr(0, s.begin).ends_with(extra));
      CHECK((!span.empty() && (span[0] == '\n' || span[0] == ' ' || span[0] == '\t' || span[0] == '\r')));
    }
    ++cases;
  }
  MESSAGE(chat_format_name(f) << ": " << cases << " conversations, " << straddles
                              << " spans whose first token overlaps the header");
  CHECK(cases >= 40);
}

}  // namespace

TEST_CASE("text_chat: encode_chat ids equal the whole text's and the mask covers the spans (qwen3)") {
  DISTILL_REQUIRE_SHARED(path, "tokenizers/qwen3/tokenizer.json");
  check_chat_tokens(ChatFormat::Qwen3Thinking, path);
}

TEST_CASE("text_chat: encode_chat ids equal the whole text's and the mask covers the spans (gemma3)") {
  DISTILL_REQUIRE_SHARED(path, "tokenizers/gemma3/tokenizer.json");
  check_chat_tokens(ChatFormat::Gemma3, path);
}
#else
TEST_CASE("text_chat: encode_chat (skipped)") {
  MESSAGE("SKIPPED: distill/text/tokenizer.hpp is not there yet, so encode_chat is not compiled");
}
#endif
