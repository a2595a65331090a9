// Aligning a teacher's positions with a student's when their texts or tokenizers differ (issue 10): the student
// learns from the teacher's response with the thinking removed (and, across model families, tokenized by another
// tokenizer), so position k of one sequence is not position k of the other.
//
// Alignment rule (align_tokens). Both sides' trained tokens are decoded to text (specials kept) and each token's
// start offset is taken in its side's text. The student's text is mapped onto the teacher's (text_map: the
// student text is the teacher's with pieces left out or added -- the thinking tags, trimmed whitespace, an
// appended "#### N" -- matched as long common runs, in order). A student token is aligned with the teacher token
// that starts at the mapped offset of its first character: at those two positions both models have read the same
// text (up to the removed pieces) and predict a token that starts at the same character, so their next-token
// distributions, and their hidden states, describe the same point of the text. A student token whose start maps
// to no teacher token start (a token that straddles a teacher boundary, or text the teacher never wrote) is not
// aligned: it trains by the CE only. The last trained tokens of both sides (their end-of-turn markers) are aligned
// with each other. For a same-tokenizer pair without removed text, this pairs every token with itself.
//
// Vocabularies (shared_vocabulary). Across tokenizers, a teacher token corresponds to the student token that
// decodes to the same bytes ("Ġthe" and "▁the" are both " the"); special tokens correspond only through the pairs
// the caller gives (e.g. <|im_end|> -> <end_of_turn>). Top-K rows (kd.hpp, ref::topk_kd_row) then carry the
// teacher's distribution in the student's vocabulary: its most probable tokens that have a counterpart, the rest
// as tail mass. Comparing next-token distributions this way is only sound where both sides' next tokens are the
// same text: with whole_tokens, align_tokens keeps only the positions whose tokens start AND end at the same
// characters (elsewhere the student's token spells more or less than the teacher's -- "▁books." against "Ġbook"
// -- and the teacher's mass on its own spelling would pull the student away from its label; an earlier version
// that sent such teacher tokens to the student token their text begins with lowered the demo's accuracy).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/text/tokenizer.hpp"

namespace distill::train {

// The decoded text of ids (special tokens kept) and each token's start offset in it; -1 for a token whose bytes
// are not a clean extension of the text before it (a byte-fallback piece inside a multi-byte character).
struct TokenText {
  std::string text;
  std::vector<int64_t> starts;
};

inline TokenText token_text(const text::Tokenizer& tok, std::span<const int32_t> ids) {
  TokenText out;
  out.text = tok.decode(ids, /*skip_special_tokens=*/false);
  out.starts.assign(ids.size(), -1);
  // Token by token first (exact for byte-level and SentencePiece tokenizers); when the pieces do not add up to the
  // whole, each prefix is decoded (quadratic, rare) and kept only when it is a prefix of the whole.
  std::string cat;
  std::vector<int64_t> starts(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    starts[i] = static_cast<int64_t>(cat.size());
    cat += tok.decode(ids.subspan(i, 1), false);
  }
  if (cat == out.text) {
    out.starts = std::move(starts);
    return out;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string prefix = tok.decode(ids.subspan(0, i), false);
    if (out.text.compare(0, prefix.size(), prefix) == 0) out.starts[i] = static_cast<int64_t>(prefix.size());
  }
  return out;
}

// m[c] = the teacher offset of student character c (-1: not in the teacher's text), m[|s|] = |t|. Runs are found
// in order: from the current teacher offset, the first occurrence of the next min(16, rest) student characters
// (shorter anchors down to 4 characters, or the whole rest when shorter), extended while the characters agree.
inline std::vector<int64_t> text_map(std::string_view s, std::string_view t) {
  std::vector<int64_t> m(s.size() + 1, -1);
  m[s.size()] = static_cast<int64_t>(t.size());
  size_t i = 0, j = 0;
  while (i < s.size()) {
    const size_t rest = s.size() - i;
    size_t at = std::string_view::npos;
    for (size_t len = std::min<size_t>(16, rest); len >= std::min<size_t>(4, rest) && len > 0; --len) {
      at = t.find(s.substr(i, len), j);
      if (at != std::string_view::npos) break;
    }
    if (at == std::string_view::npos) {
      ++i;  // a character the teacher never wrote here
      continue;
    }
    while (i < s.size() && at < t.size() && s[i] == t[at]) m[i++] = static_cast<int64_t>(at++);
    j = at;
  }
  return m;
}

// Pairs (student token index, teacher token index) over the given token ranges [s0, s1) and [t0, t1) of two
// sequences whose trained texts are `student` and `teacher` (token_text of those ranges). See the file comment.
inline std::vector<std::pair<int64_t, int64_t>> align_tokens(const TokenText& student, int64_t s0,
                                                             const TokenText& teacher, int64_t t0,
                                                             bool whole_tokens = false) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const size_t ns = student.starts.size(), nt = teacher.starts.size();
  if (ns == 0 || nt == 0) return out;
  const std::vector<int64_t> m = text_map(student.text, teacher.text);
  std::unordered_map<int64_t, int64_t> teacher_at;  // start offset -> teacher token (the first starting there)
  for (size_t k = 0; k + 1 < nt; ++k)
    if (teacher.starts[k] >= 0) teacher_at.emplace(teacher.starts[k], static_cast<int64_t>(k));
  for (size_t k = 0; k + 1 < ns; ++k) {
    const int64_t c = student.starts[k];
    if (c < 0 || c >= static_cast<int64_t>(student.text.size())) continue;
    // A token that decodes to nothing (c == start of the next) has no character to map.
    if (k + 1 < ns && student.starts[k + 1] == c) continue;
    const int64_t tc = m[static_cast<size_t>(c)];
    if (tc < 0) continue;
    const auto it = teacher_at.find(tc);
    if (it == teacher_at.end()) continue;
    if (whole_tokens) {  // the last characters correspond too, and end both tokens
      const int64_t s_end = student.starts[k + 1], t_end = teacher.starts[static_cast<size_t>(it->second) + 1];
      if (s_end <= c || t_end < 0 || m[static_cast<size_t>(s_end - 1)] != t_end - 1) continue;
    }
    out.emplace_back(s0 + static_cast<int64_t>(k), t0 + it->second);
  }
  out.emplace_back(s0 + static_cast<int64_t>(ns) - 1, t0 + static_cast<int64_t>(nt) - 1);  // the end markers
  // Keep the teacher side increasing (a run matched out of order would pair backwards).
  std::vector<std::pair<int64_t, int64_t>> mono;
  for (const auto& p : out)
    if (mono.empty() || p.second > mono.back().second) mono.push_back(p);
  return mono;
}

// teacher id -> student id (-1: none), by identical decoded bytes for non-special tokens, plus the caller's pairs
// of special tokens.
struct VocabMap {
  std::vector<int32_t> to_student;
  int64_t shared = 0;  // tokens with an identical student token (and the given special pairs)
  int32_t operator()(int64_t teacher_id) const {
    return teacher_id >= 0 && teacher_id < static_cast<int64_t>(to_student.size())
               ? to_student[static_cast<size_t>(teacher_id)]
               : -1;
  }
};

inline VocabMap identity_vocabulary(int64_t n) {
  VocabMap m;
  m.to_student.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) m.to_student[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  m.shared = n;
  return m;
}

inline VocabMap shared_vocabulary(const text::Tokenizer& teacher, const text::Tokenizer& student,
                                  std::span<const std::pair<std::string, std::string>> special_pairs = {}) {
  auto is_byte_piece = [](const std::string& p) {  // SentencePiece byte fallback "<0x41>"
    return p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>';
  };
  auto piece_of = [](const text::Tokenizer& tok, int32_t id) -> std::string {  // "" for an id no token has
    try {
      return tok.id_to_token(id);
    } catch (const Error&) {
      return {};
    }
  };
  auto bytes_of = [](const text::Tokenizer& tok, int32_t id) {
    const std::vector<int32_t> one{id};
    return tok.decode(one, false);
  };
  std::unordered_map<std::string, int32_t> by_bytes;
  for (int pass = 0; pass < 2; ++pass)  // ordinary pieces first, then byte-fallback pieces for bytes not yet seen
    for (int32_t id = 0; id < student.vocab_size(); ++id) {
      const std::string piece = piece_of(student, id);
      if (piece.empty() || student.is_special(id) || is_byte_piece(piece) != (pass == 1)) continue;
      const std::string b = bytes_of(student, id);
      if (b.empty() || b.find("\xEF\xBF\xBD") != std::string::npos) continue;  // decodes to nothing / U+FFFD
      by_bytes.emplace(b, id);
    }
  VocabMap m;
  m.to_student.assign(static_cast<size_t>(teacher.vocab_size()), -1);
  for (int32_t id = 0; id < teacher.vocab_size(); ++id) {
    if (teacher.is_special(id) || piece_of(teacher, id).empty()) continue;
    const std::string b = bytes_of(teacher, id);
    if (b.empty() || b.find("\xEF\xBF\xBD") != std::string::npos) continue;
    if (const auto it = by_bytes.find(b); it != by_bytes.end()) {
      m.to_student[static_cast<size_t>(id)] = it->second;
      ++m.shared;
    }
  }
  for (const auto& [t, s] : special_pairs) {
    const auto ti = teacher.token_to_id(t), si = student.token_to_id(s);
    DISTILL_CHECK(ti && si, "shared vocabulary: no token ", ti ? s : t, " in the ", ti ? "student" : "teacher",
                  "'s tokenizer");
    if (m.to_student[static_cast<size_t>(*ti)] < 0) ++m.shared;
    m.to_student[static_cast<size_t>(*ti)] = *si;
  }
  return m;
}

// One top-K row (kd.hpp's layout, width 2K + 1) in the student's vocabulary from a row of teacher logits at
// temperature T: the K most probable teacher tokens that map to a student token, and the log of everything else.
inline void topk_row_from_logits(const float* logits, int64_t VT, const VocabMap& map, int64_t K, double T,
                                 float* row) {
  std::vector<double> lp(static_cast<size_t>(VT));
  double mx = -INFINITY;
  for (int64_t v = 0; v < VT; ++v) mx = std::max(mx, static_cast<double>(logits[v]) / T);
  double z = 0;
  for (int64_t v = 0; v < VT; ++v) z += std::exp(static_cast<double>(logits[v]) / T - mx);
  const double lz = mx + std::log(z);
  std::vector<int32_t> cand;
  for (int64_t v = 0; v < VT; ++v) {
    lp[static_cast<size_t>(v)] = static_cast<double>(logits[v]) / T - lz;
    if (map(v) >= 0) cand.push_back(static_cast<int32_t>(v));
  }
  const auto k = static_cast<size_t>(std::min<int64_t>(K, static_cast<int64_t>(cand.size())));
  std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k), cand.end(), [&](int32_t a, int32_t b) {
    return lp[static_cast<size_t>(a)] > lp[static_cast<size_t>(b)] ||
           (lp[static_cast<size_t>(a)] == lp[static_cast<size_t>(b)] && a < b);
  });
  std::vector<uint8_t> listed(static_cast<size_t>(VT), 0);
  for (size_t j = 0; j < static_cast<size_t>(K); ++j) {
    if (j < k) {
      const int32_t v = cand[j];
      listed[static_cast<size_t>(v)] = 1;
      row[j] = static_cast<float>(map(v));
      row[static_cast<size_t>(K) + j] = static_cast<float>(lp[static_cast<size_t>(v)]);
    } else {
      row[j] = -1.0f;
      row[static_cast<size_t>(K) + j] = -std::numeric_limits<float>::infinity();
    }
  }
  double rest = 0;  // summed, not 1 - kept: no cancellation when the listed tokens hold nearly everything
  for (int64_t v = 0; v < VT; ++v)
    if (!listed[static_cast<size_t>(v)]) rest += std::exp(lp[static_cast<size_t>(v)]);
  row[2 * K] = rest > 0 ? static_cast<float>(std::log(rest)) : -std::numeric_limits<float>::infinity();
}

// One top-K row in the student's vocabulary from a stored row (ids in the teacher's vocabulary, log-probs, tail):
// ids without a counterpart keep their mass as an out-of-vocabulary id (`student_vocab`), which ref::topk_kd_row
// adds to the tail.
inline void topk_row_from_stored(const int32_t* ids, const float* logprobs, float tail, int64_t K, const VocabMap& map,
                                 int64_t student_vocab, float* row) {
  for (int64_t j = 0; j < K; ++j) {
    const int32_t s = ids[j] < 0 ? -1 : map(ids[j]);
    row[j] = ids[j] < 0 ? -1.0f : static_cast<float>(s >= 0 ? s : student_vocab);
    row[K + j] = logprobs[j];
  }
  row[2 * K] = tail;
}

}  // namespace distill::train
