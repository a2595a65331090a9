// Fuzz target: tokenizer.json loading (Tokenizer::from_json on arbitrary bytes) and, when a file loads, encoding
// and decoding a few fixed inputs (whitespace runs, multi-byte and invalid UTF-8, special-token-like text) plus
// the vocabulary accessors. Only distill::Error may escape the library; anything else (a crash, another
// exception, a hang, a leak) is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "distill/text/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using distill::text::Tokenizer;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  Tokenizer tok;
  try {
    tok = Tokenizer::from_json(in, "<fuzz>");
  } catch (const distill::Error&) {
    return 0;
  }
  static const std::string kInputs[] = {
      "",
      "Hello world! It's 12,345.",
      "  lead\t\ttabs\r\n\r\nand trailing   ",
      "<s><|im_start|>user\n<think>x</think><b> <mask> </s>",
      "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80 \xE4\xB8\xAD\xE6\x96\x87 e\xCC\x81",
      std::string("bad \xFF\xC3 utf8 \xED\xA0\x80\0nul", 20),
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
  };
  std::vector<int32_t> all;
  for (const auto& s : kInputs) {
    for (bool special : {true, false}) {
      try {
        const auto ids = tok.encode(s, special);
        all.insert(all.end(), ids.begin(), ids.end());
        for (bool skip : {true, false}) (void)tok.decode(ids, skip);
      } catch (const distill::Error&) {
      }
    }
  }
  const int32_t n = tok.vocab_size();
  for (int32_t id = 0; id < n && id < 64; ++id) all.push_back(id);
  all.push_back(n);
  all.push_back(-1);
  all.push_back(n > 0 ? n - 1 : 0);
  try {
    (void)tok.decode(all, true);
    (void)tok.decode(all, false);
  } catch (const distill::Error&) {
  }
  for (const int32_t id : all) {
    try {
      const std::string& t = tok.id_to_token(id);
      (void)tok.token_to_id(t);
    } catch (const distill::Error&) {
    }
    (void)tok.is_special(id);
  }
  try {
    const std::vector<std::string> batch(std::begin(kInputs), std::end(kInputs));
    (void)tok.encode_batch(batch, true, 2);
  } catch (const distill::Error&) {
  }
  return 0;
}
