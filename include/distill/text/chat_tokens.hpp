// Token ids and a loss mask for a rendered chat: loss_mask[i] = 1 for the tokens of the assistant spans.
//
// The text is encoded (add_special_tokens = false: the rendered text already holds Gemma's <bos>) piece by piece,
// so that each token belongs to one piece. Pieces are cut only where a tokenizer cannot merge across the cut,
// right after an added token: after `<|im_start|>` / `<start_of_turn>` in front of each assistant header, and
// after the end-of-turn token that closes each span. Hence the ids equal encoding the whole text at once.
// Inside a piece `assistant\n` + span, the tokens the piece shares with the header encoded alone get mask 0 and
// the rest 1. Usually that boundary is exact; when the span starts with whitespace the pre-tokenizer joins to the
// header's "\n" (Qwen, an earlier turn's raw content "\n\nx"), the joined token overlaps the span and gets 1,
// as transformers' return_assistant_tokens_mask marks every token that overlaps a span.
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "distill/text/chat.hpp"
#include "distill/text/tokenizer.hpp"

namespace distill::text {

struct ChatTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // same length as ids
};

namespace detail {

// Start of the role header in front of a span: just after the last turn-start token before `pos`, or `pos`
// when there is none (then the cut is at the span itself).
inline size_t header_begin(std::string_view text, size_t pos) {
  size_t best = std::string_view::npos;
  for (std::string_view marker : {std::string_view("<|im_start|>"), std::string_view("<start_of_turn>")}) {
    const size_t at = text.substr(0, pos).rfind(marker);
    if (at != std::string_view::npos && (best == std::string_view::npos || at + marker.size() > best))
      best = at + marker.size();
  }
  return best == std::string_view::npos ? pos : best;
}

// The index of the first token of `piece` (the ids of header + span) that reaches past the first header_bytes
// bytes, given that the first `from` tokens do not (decoded byte lengths).
inline size_t first_overlapping(const Tokenizer& tok, const std::vector<int32_t>& piece, size_t from,
                                size_t header_bytes) {
  for (size_t j = from; j < piece.size(); ++j)
    if (tok.decode(std::span<const int32_t>(piece.data(), j + 1), /*skip_special_tokens=*/false).size() > header_bytes)
      return j;
  return piece.size();
}

}  // namespace detail

inline ChatTokens encode_chat(const Tokenizer& tok, const RenderedChat& chat) {
  const std::string_view text(chat.text);
  ChatTokens out;
  const auto append = [&](std::string_view piece, uint8_t mask) {
    if (piece.empty()) return;
    const auto ids = tok.encode(piece, /*add_special_tokens=*/false);
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.loss_mask.insert(out.loss_mask.end(), ids.size(), mask);
  };
  size_t cursor = 0;
  for (const ChatSpan& s : chat.assistant_spans) {
    DISTILL_CHECK(s.begin >= cursor && s.begin <= s.end && s.end <= text.size(), "encode_chat: assistant span [",
                  s.begin, ", ", s.end, ") is out of order or outside the text (", text.size(), " bytes)");
    const size_t h = std::max(cursor, detail::header_begin(text, s.begin));
    append(text.substr(cursor, h - cursor), 0);
    const auto header = tok.encode(text.substr(h, s.begin - h), /*add_special_tokens=*/false);
    const auto piece = tok.encode(text.substr(h, s.end - h), /*add_special_tokens=*/false);
    const size_t shared = static_cast<size_t>(
        std::mismatch(header.begin(), header.end(), piece.begin(), piece.end()).first - header.begin());
    // The header a prefix of the piece: the span starts on a token boundary; else the token holding the join.
    const size_t first = shared == header.size() ? shared : detail::first_overlapping(tok, piece, shared, s.begin - h);
    out.ids.insert(out.ids.end(), piece.begin(), piece.end());
    out.loss_mask.insert(out.loss_mask.end(), first, 0);
    out.loss_mask.insert(out.loss_mask.end(), piece.size() - first, 1);
    cursor = s.end;
  }
  append(text.substr(cursor), 0);
  return out;
}

}  // namespace distill::text
