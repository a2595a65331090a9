// Chat rendering for Qwen3-4B-Thinking-2507 and Gemma3-it, written out by hand (no Jinja engine). The text equals
// transformers' `apply_chat_template(..., tokenize=False)` byte for byte for the same messages (SPEC §5.1, §5.2;
// checked against tests/golden/chat/cases.json), including the templates' odd corners: Qwen drops the thinking
// of turns before the last user query and silently skips unknown roles; Gemma folds the system prompt into the
// first user turn, raises on non-alternating roles and `| trim`s contents with Python's str.strip() (Unicode
// whitespace). Where a template raises, render_chat throws distill::Error whose message holds the template's
// (or Jinja's / Python's) message.
//
// Besides the text, render_chat returns the byte span of every assistant turn (from just after the role header
// `<|im_start|>assistant\n` / `<start_of_turn>model\n` through the end-of-turn token `<|im_end|>` /
// `<end_of_turn>` inclusive, without the "\n" after it), for loss masks (see chat_tokens.hpp).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/core/error.hpp"
#include "distill/text/utf8.hpp"

namespace distill::text {

// One item of list content (Gemma style: {"type": "text", "text": ...} or {"type": "image", ...}).
struct ContentPart {
  std::string type = {};                 // "text", "image"; other types render nothing
  std::optional<std::string> text = {};  // absent for images
};

// How a message's content was given. transformers drops keys whose value is None, so JSON `null` is Missing.
enum class ContentKind : uint8_t { Text, Parts, Missing };

struct Message {
  // Default initializers keep `Message{"user", "hi"}` free of -Wmissing-field-initializers.
  std::string role = {};
  std::string content = {};                           // when kind == Text
  std::optional<std::string> reasoning_content = {};  // also from "thinking" / "reasoning", as transformers does
  std::vector<ContentPart> parts = {};                // when kind == Parts
  ContentKind kind = ContentKind::Text;
};

enum class ChatFormat { Qwen3Thinking, Gemma3 };

struct ChatSpan {
  size_t begin, end;  // byte range [begin, end) in RenderedChat::text
};

struct RenderedChat {
  std::string text;
  std::vector<ChatSpan> assistant_spans;  // one per assistant turn, in order
};

inline std::optional<ChatFormat> chat_format_from_name(std::string_view name) {
  if (name == "qwen3-thinking") return ChatFormat::Qwen3Thinking;
  if (name == "gemma3") return ChatFormat::Gemma3;
  return std::nullopt;
}

inline std::string_view chat_format_name(ChatFormat f) {
  return f == ChatFormat::Qwen3Thinking ? "qwen3-thinking" : "gemma3";
}

namespace detail {

// str.lstrip('\n'), str.rstrip('\n'), str.strip('\n').
inline std::string_view lstrip_nl(std::string_view s) {
  const size_t b = s.find_first_not_of('\n');
  return b == std::string_view::npos ? std::string_view{} : s.substr(b);
}
inline std::string_view rstrip_nl(std::string_view s) {
  const size_t e = s.find_last_not_of('\n');
  return e == std::string_view::npos ? std::string_view{} : s.substr(0, e + 1);
}
inline std::string_view strip_nl(std::string_view s) { return rstrip_nl(lstrip_nl(s)); }

[[noreturn]] inline void json_error(std::string_view source, const std::string& what) {
  throw Error(std::string(source) + ": " + what);
}

[[noreturn]] inline void template_error(ChatFormat f, const std::string& what, const std::string& where = {}) {
  std::string msg = std::string(chat_format_name(f)) + " chat template: " + what;
  if (!where.empty()) msg += " (" + where + ")";
  throw Error(msg);
}

// The message text as the templates see `message.content is string`: the string, else "".
inline std::string_view string_content(const Message& m) {
  return m.kind == ContentKind::Text ? std::string_view(m.content) : std::string_view{};
}

inline RenderedChat render_qwen3_thinking(std::span<const Message> msgs, bool add_generation_prompt) {
  constexpr ChatFormat F = ChatFormat::Qwen3Thinking;
  RenderedChat out;
  std::string& t = out.text;
  const size_t n = msgs.size();
  if (msgs[0].role == "system") {
    if (msgs[0].kind == ContentKind::Parts)
      template_error(F, "can only concatenate str (not \"list\") to str", "message 0: system content is a list");
    if (msgs[0].kind == ContentKind::Missing)
      template_error(F, "'dict object' has no attribute 'content'", "message 0: system message has no content");
    t += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
  }
  // The last user message that is a real query (not a wrapped tool response); n - 1 when there is none.
  size_t last_query = n - 1;
  for (size_t i = n; i-- > 0;) {
    const Message& m = msgs[i];
    if (m.role == "user" && m.kind == ContentKind::Text &&
        !(m.content.starts_with("<tool_response>") && m.content.ends_with("</tool_response>"))) {
      last_query = i;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const Message& m = msgs[i];
    std::string_view content = string_content(m);
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      t.append("<|im_start|>").append(m.role).append("\n").append(content).append("<|im_end|>\n");
    } else if (m.role == "assistant") {
      std::string_view reasoning;
      if (m.reasoning_content) {
        reasoning = *m.reasoning_content;
      } else if (const size_t close = content.find("</think>"); close != std::string_view::npos) {
        // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
        std::string_view before = rstrip_nl(content.substr(0, close));
        if (const size_t open = before.rfind("<think>"); open != std::string_view::npos)
          before = before.substr(open + 7);
        reasoning = lstrip_nl(before);
        content = lstrip_nl(content.substr(content.rfind("</think>") + 8));
      }
      t += "<|im_start|>assistant\n";
      const size_t begin = t.size();
      if (i > last_query && (i == n - 1 || !reasoning.empty())) {
        t.append("<think>\n").append(strip_nl(reasoning)).append("\n</think>\n\n").append(lstrip_nl(content));
      } else {
        t.append(content);
      }
      t += "<|im_end|>";
      out.assistant_spans.push_back({begin, t.size()});
      t += "\n";
    } else if (m.role == "tool") {
      // consecutive tool messages share one user turn
      if (i == 0 || msgs[i - 1].role != "tool") t += "<|im_start|>user";
      t.append("\n<tool_response>\n").append(content).append("\n</tool_response>");
      if (i == n - 1 || msgs[i + 1].role != "tool") t += "<|im_end|>\n";
    }
    // a first system message was rendered above; any other role renders nothing (as in the template)
  }
  if (add_generation_prompt) t += "<|im_start|>assistant\n<think>\n";
  return out;
}

inline RenderedChat render_gemma3(std::span<const Message> msgs, bool add_generation_prompt) {
  constexpr ChatFormat F = ChatFormat::Gemma3;
  RenderedChat out;
  std::string& t = out.text;
  t = "<bos>";
  std::string first_user_prefix;
  size_t first = 0;
  if (msgs[0].role == "system") {
    const Message& s = msgs[0];
    if (s.kind == ContentKind::Text) {
      first_user_prefix = s.content;
    } else if (s.kind == ContentKind::Missing) {
      template_error(F, "'dict object' has no attribute 'content'", "message 0: system message has no content");
    } else if (s.parts.empty()) {
      template_error(F, "list object has no element 0", "message 0: system content is an empty list");
    } else if (!s.parts[0].text) {
      template_error(F, "'dict object' has no attribute 'text'", "message 0: first system part has no text");
    } else {
      first_user_prefix = *s.parts[0].text;  // the template takes only the first part, untrimmed
    }
    first_user_prefix += "\n\n";
    first = 1;
  }
  for (size_t k = 0; first + k < msgs.size(); ++k) {
    const Message& m = msgs[first + k];
    if ((m.role == "user") != (k % 2 == 0))
      template_error(F, "Conversation roles must alternate user/assistant/user/assistant/...",
                     "message " + std::to_string(first + k) + " has role '" + m.role + "'");
    const std::string_view role = m.role == "assistant" ? std::string_view("model") : std::string_view(m.role);
    t.append("<start_of_turn>").append(role).append("\n");
    if (k == 0) t += first_user_prefix;
    const size_t begin = t.size();
    if (m.kind == ContentKind::Text) {
      t.append(utf8::py_strip(m.content));
    } else if (m.kind == ContentKind::Parts) {
      for (const ContentPart& p : m.parts) {
        if (p.type == "image")
          t += "<start_of_image>";
        else if (p.type == "text" && p.text)
          t.append(utf8::py_strip(*p.text));
      }
    }  // Missing content is an undefined value, which Jinja iterates as an empty list
    t += "<end_of_turn>";
    if (role == "model") out.assistant_spans.push_back({begin, t.size()});
    t += "\n";
  }
  if (add_generation_prompt) t += "<start_of_turn>model\n";
  return out;
}

}  // namespace detail

// Renders messages as transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt) does
// with the Qwen3-4B-Thinking-2507 or gemma-3-it template.
inline RenderedChat render_chat(ChatFormat format, std::span<const Message> messages,
                                bool add_generation_prompt = false) {
  if (messages.empty())
    detail::template_error(format,
                           "Cannot apply chat template to an empty conversation. Provide at least one message.");
  return format == ChatFormat::Qwen3Thinking ? detail::render_qwen3_thinking(messages, add_generation_prompt)
                                             : detail::render_gemma3(messages, add_generation_prompt);
}

// Messages from JSON: a list of {"role", "content"[, "reasoning_content" | "thinking" | "reasoning"]}. content
// is a string, a list of parts ({"type": "text", "text": ...}, {"type": "image", ...}) or null/absent. Keys
// whose value is null count as absent (as in transformers). Tool calls are not supported. `source` names the
// input in error messages.
inline std::vector<Message> messages_from_json(const nlohmann::json& j, std::string_view source = "<json>") {
  const auto fail = [&](const std::string& what) { detail::json_error(source, what); };
  if (!j.is_array()) fail(std::string("expected a JSON array of messages, got ") + j.type_name());
  std::vector<Message> out;
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& m = j[i];
    const std::string at = "message " + std::to_string(i);
    if (!m.is_object()) fail(at + ": expected an object, got " + m.type_name());
    Message msg;
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) fail(at + ": \"role\" must be a string");
    msg.role = role->get<std::string>();
    const auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      msg.kind = ContentKind::Missing;
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      msg.kind = ContentKind::Parts;
      for (size_t k = 0; k < content->size(); ++k) {
        const nlohmann::json& p = (*content)[k];
        const std::string pat = at + ", content part " + std::to_string(k);
        if (!p.is_object()) fail(pat + ": expected an object, got " + p.type_name());
        ContentPart part;
        if (const auto ty = p.find("type"); ty != p.end()) {
          if (!ty->is_string()) fail(pat + ": \"type\" must be a string");
          part.type = ty->get<std::string>();
        }
        if (const auto tx = p.find("text"); tx != p.end()) {
          if (!tx->is_string()) fail(pat + ": \"text\" must be a string");
          part.text = tx->get<std::string>();
        }
        if (part.type == "text" && !part.text) fail(pat + ": a \"text\" part needs a \"text\" string");
        msg.parts.push_back(std::move(part));
      }
    } else {
      fail(at + ": \"content\" must be a string, a list of parts or null, got " + content->type_name());
    }
    for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
      const auto r = m.find(key);
      if (r == m.end() || r->is_null()) continue;
      if (!r->is_string()) fail(at + ": \"" + key + "\" must be a string");
      msg.reasoning_content = r->get<std::string>();
      break;
    }
    if (const auto tc = m.find("tool_calls"); tc != m.end() && !tc->is_null() && !(tc->is_array() && tc->empty()))
      fail(at + ": \"tool_calls\" are not supported");
    out.push_back(std::move(msg));
  }
  return out;
}

namespace detail {

inline std::optional<ChatFormat> classify_template(std::string_view tmpl) {
  const bool gemma = tmpl.find("<start_of_turn>") != std::string_view::npos;
  const bool qwen = tmpl.find("<|im_start|>") != std::string_view::npos;
  if (gemma == qwen) return std::nullopt;
  return gemma ? ChatFormat::Gemma3 : ChatFormat::Qwen3Thinking;
}

inline std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(p.string() + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

// Whether the file contains each needle, reading it in blocks (tokenizer.json can be tens of MB).
inline std::vector<bool> file_contains(const std::filesystem::path& p, const std::vector<std::string>& needles) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(p.string() + ": cannot open");
  size_t keep = 0;
  for (const auto& s : needles) keep = std::max(keep, s.size());
  std::vector<bool> found(needles.size(), false);
  std::string buf;
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    buf.append(block.data(), static_cast<size_t>(in.gcount()));
    for (size_t k = 0; k < needles.size(); ++k)
      if (!found[k] && buf.find(needles[k]) != std::string::npos) found[k] = true;
    if (buf.size() > keep) buf.erase(0, buf.size() - keep);
  }
  return found;
}

}  // namespace detail

// The chat format of a tokenizer directory, from its chat template (chat_template.jinja or the "chat_template"
// of tokenizer_config.json) or, without one, from the added tokens in tokenizer.json: `<start_of_turn>` means
// Gemma3, `<|im_start|>` means Qwen3 — rendered with the Thinking-2507 rules whatever the Qwen3 template
// (the hybrid Qwen3 template differs: it does not open `<think>` in the generation prompt).
inline ChatFormat detect_chat_format(const std::string& tokenizer_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(tokenizer_dir);
  std::string looked;
  if (const fs::path p = dir / "chat_template.jinja"; fs::is_regular_file(p)) {
    if (auto f = detail::classify_template(detail::read_text_file(p))) return *f;
    looked += " chat_template.jinja";
  }
  if (const fs::path p = dir / "tokenizer_config.json"; fs::is_regular_file(p)) {
    nlohmann::json cfg;
    try {
      cfg = nlohmann::json::parse(detail::read_text_file(p));
    } catch (const nlohmann::json::exception& e) {
      throw Error(p.string() + ": invalid JSON: " + e.what());
    }
    std::string tmpl;
    if (const auto ct = cfg.is_object() ? cfg.find("chat_template") : cfg.end(); ct != cfg.end()) {
      if (ct->is_string()) {
        tmpl = ct->get<std::string>();
      } else if (ct->is_array()) {  // [{"name": ..., "template": ...}]: the "default" one, else all of them
        for (const auto& e : *ct)
          if (e.is_object() && e.contains("template") && e["template"].is_string()) {
            if (e.contains("name") && e["name"] == "default") {
              tmpl = e["template"].get<std::string>();
              break;
            }
            tmpl += e["template"].get<std::string>();
          }
      }
    }
    if (auto f = detail::classify_template(tmpl)) return *f;
    looked += " tokenizer_config.json";
  }
  if (const fs::path p = dir / "tokenizer.json"; fs::is_regular_file(p)) {
    const auto found = detail::file_contains(p, {"\"<start_of_turn>\"", "\"<|im_start|>\""});
    if (found[0] != found[1]) return found[0] ? ChatFormat::Gemma3 : ChatFormat::Qwen3Thinking;
    looked += " tokenizer.json";
  }
  if (looked.empty())
    throw Error(tokenizer_dir +
                ": no chat_template.jinja, tokenizer_config.json or tokenizer.json to detect the chat "
                "format from");
  throw Error(tokenizer_dir + ": cannot tell the chat format (looked at" + looked +
              " for exactly one of <|im_start|> (qwen3-thinking) and <start_of_turn> (gemma3)); name it instead");
}

}  // namespace distill::text
