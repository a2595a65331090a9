// Turns generated token ids into text as they arrive (like HF's TextStreamer): a token's text is released once
// it is final, i.e. not the start of an unfinished UTF-8 character (byte-level and byte-fallback tokenizers
// split characters across tokens; an unfinished one decodes to U+FFFD). Decoding restarts after each newline,
// so the work per token stays bounded by the line length.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "distill/text/tokenizer.hpp"

namespace distill::generate {

class TextStream {
 public:
  explicit TextStream(const text::Tokenizer& tok, bool skip_special = true) : tok_(&tok), skip_(skip_special) {}

  // The text that became final with this token (possibly empty).
  std::string push(int32_t token) {
    ids_.push_back(token);
    const std::string text = tok_->decode(ids_, skip_);
    if (!text.empty() && text.back() == '\n') {
      std::string out = text.size() > printed_ ? text.substr(printed_) : std::string();
      ids_.clear();
      printed_ = 0;
      return out;
    }
    static constexpr char kReplacement[] = "\xEF\xBF\xBD";
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0) return {};  // wait for the rest
    if (text.size() <= printed_) return {};
    std::string out = text.substr(printed_);
    printed_ = text.size();
    return out;
  }
  // Whatever is still held back (an unfinished character at the very end).
  std::string flush() {
    const std::string text = tok_->decode(ids_, skip_);
    std::string out = text.size() > printed_ ? text.substr(printed_) : std::string();
    ids_.clear();
    printed_ = 0;
    return out;
  }

 private:
  const text::Tokenizer* tok_;
  bool skip_;
  std::vector<int32_t> ids_;
  size_t printed_ = 0;
};

}  // namespace distill::generate
