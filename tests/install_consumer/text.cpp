// Uses the installed distill::text target (utf8proc, PCRE2 found through the package config): a tiny BPE
// tokenizer.json, and the Gemma3 chat template.
#include <distill/text/chat.hpp>
#include <distill/text/tokenizer.hpp>

#include <cstdio>
#include <vector>

int main() {
  using namespace distill::text;
  const char* json = R"({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
    "normalizer": {"type": "NFC"}, "pre_tokenizer": null, "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})";
  const auto tok = Tokenizer::from_json(json, "consumer");
  const auto ids = tok.encode("abab", false);
  const std::vector<Message> msgs{Message{"user", "Hello"}};
  const auto chat = render_chat(ChatFormat::Gemma3, msgs, true);
  std::printf("consumer_text: %zu ids, %zu chars\n", ids.size(), chat.text.size());
  return ids == std::vector<int32_t>{2, 2} && chat.text.rfind("<bos>", 0) == 0 ? 0 : 1;
}
