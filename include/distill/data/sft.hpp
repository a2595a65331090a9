// Supervised fine-tuning data: a chat turned into token ids and labels, and examples batched for the trainer
// (padded one per row, or packed several per row).
//
// Labels (build_sft_example): labels[i] = ids[i] for the tokens of the assistant turns and kIgnoreLabel (-100)
// elsewhere, NOT shifted: the loss predicts labels[t + 1] from position t (SPEC §9.1), so labels[0] is never a
// target. A token is trained exactly when transformers' apply_chat_template(..., return_assistant_tokens_mask
// =True) marks it: when it overlaps an assistant span of render_chat (just after the role header through the
// end-of-turn token; checked against tests/golden/sft/, made by tools/golden/sft.py). The ids are those of
// apply_chat_template(tokenize=True): the rendered text encoded with add_special_tokens = false (Gemma's <bos>
// is part of the template text).
//
// How, without token offsets: text::encode_chat (text/chat_tokens.hpp) encodes the text in pieces cut only
// right after turn markers (added tokens: the pieces' ids are the whole text's ids) and marks the tokens that
// overlap a span, including the one holding a join of the header's "\n" with the span's first bytes.
//
// Batches: Tensor<int32_t> of shape [rows, len], padded on the right with pad_id (label -100, attention mask
// 0). In a packed row the examples follow each other; segments[r] lists their lengths, so the model can keep
// attention and positions inside each example, and the label at each example's first token is -100 so no
// token of one example is trained to predict the next one.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/tensor/tensor.hpp"
#include "distill/text/chat.hpp"
#include "distill/text/chat_tokens.hpp"
#include "distill/text/tokenizer.hpp"

namespace distill::data {

// torch cross_entropy's default ignore_index, distill::kIgnoreIndex of ops/cross_entropy.hpp (not included here)
inline constexpr int32_t kIgnoreLabel = -100;

struct SftExample {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  // ids[i] on assistant tokens, kIgnoreLabel elsewhere (not shifted)
};

namespace detail {

struct ChatMarkers {
  std::string_view turn_start, turn_end;
};

inline ChatMarkers chat_markers(text::ChatFormat f) {
  if (f == text::ChatFormat::Qwen3Thinking) return {"<|im_start|>", "<|im_end|>"};
  return {"<start_of_turn>", "<end_of_turn>"};
}

// The turn markers must be special added tokens of the tokenizer, else the cuts are not token boundaries
// (and the tokenizer does not belong to this chat format).
inline void check_markers(const text::Tokenizer& tok, text::ChatFormat f) {
  const ChatMarkers m = chat_markers(f);
  for (std::string_view marker : {m.turn_start, m.turn_end}) {
    const auto id = tok.token_to_id(marker);
    DISTILL_CHECK(id && tok.is_special(*id), "build_sft_example: tokenizer '", tok.source(), "' has no special token ",
                  marker, " of chat format ", text::chat_format_name(f), " (a tokenizer of another model family?)");
  }
}

}  // namespace detail

// The ids and labels of one conversation rendered in `fmt` (no generation prompt). max_len > 0 keeps the first
// max_len tokens (a conversation cut before its first assistant token then has only -100 labels); 0 keeps all.
inline SftExample build_sft_example(const text::Tokenizer& tok, text::ChatFormat fmt,
                                    std::span<const text::Message> msgs, int64_t max_len = 0) {
  DISTILL_CHECK(max_len >= 0, "build_sft_example: max_len must be >= 0 (0 = no limit), got ", max_len);
  detail::check_markers(tok, fmt);
  const text::RenderedChat chat = text::render_chat(fmt, msgs, /*add_generation_prompt=*/false);
  const detail::ChatMarkers markers = detail::chat_markers(fmt);
  for (const text::ChatSpan& sp : chat.assistant_spans)
    DISTILL_CHECK(
        sp.end <= chat.text.size() && std::string_view(chat.text).substr(0, sp.end).ends_with(markers.turn_end),
        "build_sft_example: assistant span [", sp.begin, ", ", sp.end, ") does not end with ", markers.turn_end);
  const text::ChatTokens ct = text::encode_chat(tok, chat);
  SftExample ex;
  ex.ids = ct.ids;
  ex.labels.resize(ct.ids.size());
  for (size_t i = 0; i < ct.ids.size(); ++i) ex.labels[i] = ct.loss_mask[i] ? ct.ids[i] : kIgnoreLabel;
  if (max_len > 0 && static_cast<int64_t>(ex.ids.size()) > max_len) {
    ex.ids.resize(static_cast<size_t>(max_len));
    ex.labels.resize(static_cast<size_t>(max_len));
  }
  return ex;
}

// The number of tokens the shifted loss trains on: labels != -100 at positions >= 1.
inline int64_t count_trainable(const SftExample& ex) {
  int64_t n = 0;
  for (size_t i = 1; i < ex.labels.size(); ++i) n += ex.labels[i] != kIgnoreLabel;
  return n;
}

struct Batch {
  Tensor<int32_t> ids, labels, attention_mask;  // [rows, len]
  std::vector<std::vector<int64_t>> segments;   // per row, the lengths of its examples in order
  int64_t rows = 0, len = 0;
};

namespace detail {

inline void check_examples(std::span<const SftExample* const> ex, int32_t pad_id, const char* fn) {
  DISTILL_CHECK(!ex.empty(), fn, ": no examples");
  DISTILL_CHECK(pad_id >= 0, fn, ": pad id must be >= 0, got ", pad_id);
  for (size_t i = 0; i < ex.size(); ++i) {
    DISTILL_CHECK(ex[i] != nullptr, fn, ": example ", i, " is a null pointer");
    DISTILL_CHECK(ex[i]->ids.size() == ex[i]->labels.size(), fn, ": example ", i, " has ", ex[i]->ids.size(),
                  " ids but ", ex[i]->labels.size(), " labels");
    DISTILL_CHECK(!ex[i]->ids.empty(), fn, ": example ", i, " is empty");
  }
}

// A [rows, len] batch filled with padding (pad id, label -100, mask 0).
inline Batch padded_batch(int64_t rows, int64_t len, int32_t pad_id) {
  Batch b;
  b.rows = rows;
  b.len = len;
  b.ids = Tensor<int32_t>::full({rows, len}, pad_id);
  b.labels = Tensor<int32_t>::full({rows, len}, kIgnoreLabel);
  b.attention_mask = Tensor<int32_t>::zeros({rows, len});
  b.segments.resize(static_cast<size_t>(rows));
  return b;
}

// Writes example e into row r from column col; ignore_first_label sets the label of its first token to -100.
inline void place(Batch& b, int64_t r, int64_t col, const SftExample& e, bool ignore_first_label) {
  int32_t* ids = b.ids.data() + r * b.len + col;
  int32_t* labels = b.labels.data() + r * b.len + col;
  int32_t* mask = b.attention_mask.data() + r * b.len + col;
  std::copy(e.ids.begin(), e.ids.end(), ids);
  std::copy(e.labels.begin(), e.labels.end(), labels);
  std::fill(mask, mask + e.ids.size(), 1);
  if (ignore_first_label) labels[0] = kIgnoreLabel;
  b.segments[static_cast<size_t>(r)].push_back(static_cast<int64_t>(e.ids.size()));
}

}  // namespace detail

// One example per row, padded on the right to the longest, rounded up to a multiple of pad_to_multiple.
// Labels are copied as they are (labels[0] is never a target of the shifted loss).
inline Batch make_batch(std::span<const SftExample* const> ex, int32_t pad_id, int64_t pad_to_multiple = 1) {
  detail::check_examples(ex, pad_id, "make_batch");
  DISTILL_CHECK(pad_to_multiple >= 1, "make_batch: pad_to_multiple must be >= 1, got ", pad_to_multiple);
  int64_t longest = 0;
  for (const SftExample* e : ex) longest = std::max(longest, static_cast<int64_t>(e->ids.size()));
  const int64_t len = (longest + pad_to_multiple - 1) / pad_to_multiple * pad_to_multiple;
  Batch b = detail::padded_batch(static_cast<int64_t>(ex.size()), len, pad_id);
  for (size_t r = 0; r < ex.size(); ++r) detail::place(b, static_cast<int64_t>(r), 0, *ex[r], false);
  return b;
}

// Greedy packing in order of examples of these lengths: an example goes into the current row when it still fits
// in max_len tokens, else it opens a new row. Returns each row's example indices. A length over max_len is an
// error naming the example (truncate it with build_sft_example's max_len).
inline std::vector<std::vector<size_t>> pack_greedy(std::span<const int64_t> lengths, int64_t max_len) {
  DISTILL_CHECK(max_len >= 1, "make_packed_batch: max_len must be >= 1, got ", max_len);
  std::vector<std::vector<size_t>> rows;
  int64_t used = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int64_t n = lengths[i];
    DISTILL_CHECK(n <= max_len, "make_packed_batch: example ", i, " has ", n, " tokens, more than max_len ", max_len,
                  " (truncate it with build_sft_example's max_len)");
    if (rows.empty() || used + n > max_len) {
      rows.emplace_back();
      used = 0;
    }
    rows.back().push_back(i);
    used += n;
  }
  return rows;
}

// Rows given explicitly: row r holds rows[r]'s examples one after another; len is the longest row. Every
// example's first label becomes -100 (no token is trained to predict the next example).
inline Batch make_rows_batch(std::span<const std::vector<const SftExample*>> rows, int32_t pad_id) {
  DISTILL_CHECK(!rows.empty(), "make_rows_batch: no rows");
  int64_t len = 0;
  for (const auto& row : rows) {
    detail::check_examples(row, pad_id, "make_rows_batch");
    int64_t used = 0;
    for (const SftExample* e : row) used += static_cast<int64_t>(e->ids.size());
    len = std::max(len, used);
  }
  Batch b = detail::padded_batch(static_cast<int64_t>(rows.size()), len, pad_id);
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t col = 0;
    for (const SftExample* e : rows[r]) {
      detail::place(b, static_cast<int64_t>(r), col, *e, true);
      col += static_cast<int64_t>(e->ids.size());
    }
  }
  return b;
}

// Greedy packing (pack_greedy) of the examples in order, as one batch (make_rows_batch).
inline Batch make_packed_batch(std::span<const SftExample* const> ex, int64_t max_len, int32_t pad_id) {
  detail::check_examples(ex, pad_id, "make_packed_batch");
  std::vector<int64_t> lengths;
  for (const SftExample* e : ex) lengths.push_back(static_cast<int64_t>(e->ids.size()));
  std::vector<std::vector<const SftExample*>> rows;
  for (const auto& idx : pack_greedy(lengths, max_len)) {
    rows.emplace_back();
    for (size_t i : idx) rows.back().push_back(ex[i]);
  }
  return make_rows_batch(rows, pad_id);
}

}  // namespace distill::data
