// Fuzz target: a JSON message list (untrusted: `distill chat` reads it from stdin) through
// messages_from_json and both chat renderers. Bad input must end in distill::Error, nothing else; every
// assistant span must lie inside the rendered text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>

#include "distill/core/error.hpp"
#include "distill/text/chat.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    const auto messages = distill::text::messages_from_json(j, "fuzz");
    for (auto fmt : {distill::text::ChatFormat::Qwen3Thinking, distill::text::ChatFormat::Gemma3})
      for (bool gen : {false, true}) {
        try {
          const auto r = distill::text::render_chat(fmt, messages, gen);
          for (const auto& s : r.assistant_spans)
            if (s.begin > s.end || s.end > r.text.size()) std::abort();
        } catch (const distill::Error&) {
        }
      }
  } catch (const distill::Error&) {
  }
  return 0;
}
