// Cross-text and cross-tokenizer alignment (train/align.hpp). The rule is ours (documented in align.hpp; no
// reference implementation defines it), so the tests check its defining properties on hand-made texts and on the
// real tokenizers: token start offsets reproduce the decoded text, the text map sends each kept character to the
// same character of the teacher's text, every aligned pair starts at the same character, the shared vocabulary
// pairs tokens with identical bytes, and top-K rows carry the teacher's probabilities.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "distill/text/chat.hpp"
#include "distill/text/tokenizer.hpp"
#include "distill/train/align.hpp"
#include "distill/train/kd.hpp"
#include "shared_data.hpp"

using namespace distill;
using namespace distill::train;

namespace {

const std::string kDemo = std::string(DISTILL_SOURCE_DIR) + "/apps/gsm8k_distill/demo/models/";

// Every pair starts at the same character: the student's token text begins with the teacher's first character
// and the mapped offsets agree.
void check_pairs(const TokenText& s, const TokenText& t, const std::vector<std::pair<int64_t, int64_t>>& pairs) {
  const auto m = text_map(s.text, t.text);
  for (size_t k = 0; k + 1 < pairs.size(); ++k) {
    const auto [a, b] = pairs[k];
    const int64_t cs = s.starts[static_cast<size_t>(a)], ct = t.starts[static_cast<size_t>(b)];
    REQUIRE(cs >= 0);
    CHECK(m[static_cast<size_t>(cs)] == ct);
    CHECK(s.text[static_cast<size_t>(cs)] == t.text[static_cast<size_t>(ct)]);
  }
}

}  // namespace

TEST_CASE("text_map: the student's text (thinking removed, a line appended) maps onto the teacher's") {
  const std::string teacher = "<think>\nthe total is 3+4=7 apples\n</think>\n\n#### 7";
  const std::string student = "the total is 3+4=7 apples\n#### 7\n#### 7";
  const auto m = text_map(student, teacher);
  REQUIRE(m.size() == student.size() + 1);
  CHECK(m[0] == 8);  // "the" after "<think>\n", not the 't' inside "<think>"
  CHECK(m[student.find("apples")] == static_cast<int64_t>(teacher.find("apples")));
  CHECK(m[student.find('\n')] == static_cast<int64_t>(teacher.find("\n</think>")));
  CHECK(m[student.find("####")] == static_cast<int64_t>(teacher.find("####")));
  CHECK(m[student.rfind("####")] == -1);  // the appended line is not in the teacher's text
  CHECK(m.back() == static_cast<int64_t>(teacher.size()));
  for (size_t c = 0; c < student.size(); ++c)
    if (m[c] >= 0) CHECK(student[c] == teacher[static_cast<size_t>(m[c])]);
  CHECK(text_map("", "abc") == std::vector<int64_t>{3});
  CHECK(text_map("xyz", "") == std::vector<int64_t>{-1, -1, -1, 0});
}

TEST_CASE("token_text and align_tokens on the demo's two tokenizers (Qwen3-style BPE, Gemma3-style SentencePiece)") {
  const auto tt = text::Tokenizer::from_file(kDemo + "teacher");
  const auto ts = text::Tokenizer::from_file(kDemo + "student");
  const std::string response =
      "<think>\nShe has 3 * 4 = <<3*4=12>>12 eggs.\nThen 12 + 5 = <<12+5=17>>17.\n</think>\n\n#### 17";
  const std::string answer = "She has 3 * 4 = <<3*4=12>>12 eggs.\nThen 12 + 5 = <<12+5=17>>17.\n#### 17";
  auto ids_t = tt.encode(response + "<|im_end|>", false);
  auto ids_s = ts.encode(answer + "<end_of_turn>", false);
  const TokenText t = token_text(tt, ids_t), s = token_text(ts, ids_s);
  CHECK(t.text == response + "<|im_end|>");
  CHECK(s.text == answer + "<end_of_turn>");
  for (size_t i = 0; i < ids_t.size(); ++i) {  // offsets reproduce the text token by token
    REQUIRE(t.starts[i] >= 0);
    const size_t end = i + 1 < ids_t.size() ? static_cast<size_t>(t.starts[i + 1]) : t.text.size();
    CHECK(t.text.substr(static_cast<size_t>(t.starts[i]), end - static_cast<size_t>(t.starts[i])) ==
          tt.decode(std::vector<int32_t>{ids_t[i]}, false));
  }
  const auto pairs = align_tokens(s, 0, t, 0);
  check_pairs(s, t, pairs);
  // The digit tokens of both tokenizers are single characters: every digit of the answer is aligned.
  int64_t digits = 0, digit_pairs = 0;
  for (size_t k = 0; k + 1 < ids_s.size(); ++k)
    digits += std::isdigit(static_cast<unsigned char>(s.text[static_cast<size_t>(s.starts[k])])) != 0;
  for (size_t k = 0; k + 1 < pairs.size(); ++k)
    digit_pairs += std::isdigit(static_cast<unsigned char>(
                       s.text[static_cast<size_t>(s.starts[static_cast<size_t>(pairs[k].first)])])) != 0;
  CHECK(digits > 10);
  CHECK(digit_pairs == digits);
  CHECK(pairs.back() ==
        std::pair<int64_t, int64_t>{static_cast<int64_t>(ids_s.size()) - 1, static_cast<int64_t>(ids_t.size()) - 1});
  for (size_t k = 1; k < pairs.size(); ++k) CHECK(pairs[k].second > pairs[k - 1].second);
  // whole_tokens: a subset whose tokens are the same text on both sides (start and end at the same characters).
  const auto whole = align_tokens(s, 0, t, 0, /*whole_tokens=*/true);
  CHECK(whole.size() < pairs.size());
  CHECK(whole.size() > pairs.size() / 2);
  for (size_t k = 0; k + 1 < whole.size(); ++k) {
    const auto [a, b] = whole[k];
    CHECK(ts.decode(std::vector<int32_t>{ids_s[static_cast<size_t>(a)]}, false) ==
          tt.decode(std::vector<int32_t>{ids_t[static_cast<size_t>(b)]}, false));
  }
  int64_t same_text = 0;  // and every pair of the start rule whose tokens are the same text is kept
  for (size_t k = 0; k + 1 < pairs.size(); ++k)
    same_text += ts.decode(std::vector<int32_t>{ids_s[static_cast<size_t>(pairs[k].first)]}, false) ==
                 tt.decode(std::vector<int32_t>{ids_t[static_cast<size_t>(pairs[k].second)]}, false);
  CHECK(static_cast<int64_t>(whole.size()) - 1 == same_text);
  // Same tokenizer, same text: every token with itself.
  const auto self = align_tokens(t, 5, t, 9);
  REQUIRE(self.size() == ids_t.size());
  for (size_t k = 0; k < self.size(); ++k)
    CHECK(self[k] == std::pair<int64_t, int64_t>{5 + static_cast<int64_t>(k), 9 + static_cast<int64_t>(k)});
}

TEST_CASE("shared_vocabulary pairs tokens that decode to the same bytes; top-K rows carry the teacher's mass") {
  const auto tt = text::Tokenizer::from_file(kDemo + "teacher");
  const auto ts = text::Tokenizer::from_file(kDemo + "student");
  const std::vector<std::pair<std::string, std::string>> ends{{"<|im_end|>", "<end_of_turn>"}};
  const VocabMap m = shared_vocabulary(tt, ts, ends);
  CHECK(m.shared > 50);
  int64_t counted = 0;
  for (int32_t id = 0; id < tt.vocab_size(); ++id) {
    const int32_t s = m(id);
    if (s < 0) continue;
    ++counted;
    if (tt.is_special(id)) continue;
    CHECK(tt.decode(std::vector<int32_t>{id}, false) == ts.decode(std::vector<int32_t>{s}, false));
  }
  CHECK(counted == m.shared);
  CHECK(m(*tt.token_to_id("<|im_end|>")) == *ts.token_to_id("<end_of_turn>"));
  for (const char* digit : {"0", "7"}) CHECK(m(tt.encode(digit, false).at(0)) == ts.encode(digit, false).back());

  // A top-K row from teacher logits: probabilities of listed tokens are the teacher's; listed + tail = 1.
  const int64_t VT = tt.vocab_size(), K = 5;
  std::vector<float> logits(static_cast<size_t>(VT));
  for (int64_t v = 0; v < VT; ++v)
    logits[static_cast<size_t>(v)] = static_cast<float>(std::sin(0.37 * static_cast<double>(v)) * 4);
  std::vector<float> row(2 * K + 1);
  topk_row_from_logits(logits.data(), VT, m, K, 2.0, row.data());
  double z = 0, mass = std::exp(static_cast<double>(row[2 * K]));
  for (float l : logits) z += std::exp(static_cast<double>(l) / 2.0);
  for (int64_t j = 0; j < K; ++j) {
    CHECK(row[static_cast<size_t>(j)] >= 0);
    mass += std::exp(static_cast<double>(row[static_cast<size_t>(K + j)]));
    if (j) CHECK(row[static_cast<size_t>(K + j)] <= row[static_cast<size_t>(K + j - 1)]);
  }
  CHECK(mass == doctest::Approx(1.0).epsilon(1e-5));
  // The first listed token is the most probable teacher token with a counterpart.
  int64_t best = -1;
  for (int64_t v = 0; v < VT; ++v)
    if (m(v) >= 0 && (best < 0 || logits[static_cast<size_t>(v)] > logits[static_cast<size_t>(best)])) best = v;
  CHECK(row[0] == static_cast<float>(m(best)));
  CHECK(std::exp(static_cast<double>(row[K])) ==
        doctest::Approx(std::exp(logits[static_cast<size_t>(best)] / 2.0) / z).epsilon(1e-5));

  // A stored row: a teacher id without a counterpart keeps its mass as an out-of-vocabulary id.
  int32_t unmapped = -1;
  for (int32_t id = 0; id < VT && unmapped < 0; ++id)
    if (m(id) < 0) unmapped = id;
  REQUIRE(unmapped >= 0);
  const int32_t ids[3] = {best > 0 ? static_cast<int32_t>(best) : 0, unmapped, -1};
  const float lps[3] = {-0.5f, -1.5f, -INFINITY};
  float out[7];
  topk_row_from_stored(ids, lps, -2.0f, 3, m, ts.vocab_size(), out);
  CHECK(out[0] == static_cast<float>(m(ids[0])));
  CHECK(out[1] == static_cast<float>(ts.vocab_size()));
  CHECK(out[2] == -1.0f);
  CHECK(out[4] == -1.5f);
  CHECK(out[6] == -2.0f);
}

TEST_CASE("the real Qwen3 and Gemma3 tokenizers share a large vocabulary; GSM8K-style answers align") {
  DISTILL_REQUIRE_SHARED(qwen, "tokenizers/qwen3");
  DISTILL_REQUIRE_SHARED(gemma, "tokenizers/gemma3");
  const auto tq = text::Tokenizer::from_file(qwen);
  const auto tg = text::Tokenizer::from_file(gemma);
  const std::vector<std::pair<std::string, std::string>> ends{{"<|im_end|>", "<end_of_turn>"}};
  const VocabMap m = shared_vocabulary(tq, tg, ends);
  MESSAGE("Qwen3 -> Gemma3: " << m.shared << " of " << tq.vocab_size() << " teacher tokens have a counterpart");
  CHECK(m.shared > 30000);
  const std::string response =
      "<think>\nNatalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n</think>\n\n"
      "She sold 48 + 24 = 72 clips in April and May.\n\n#### 72";
  const std::string answer =
      "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\nShe sold 48 + 24 = 72 clips in "
      "April and May.\n\n#### 72";
  const auto ids_t = tq.encode(response + "<|im_end|>", false);
  const auto ids_s = tg.encode(answer + "<end_of_turn>", false);
  const TokenText t = token_text(tq, ids_t), s = token_text(tg, ids_s);
  const auto pairs = align_tokens(s, 0, t, 0);
  check_pairs(s, t, pairs);
  MESSAGE(pairs.size() << " of " << ids_s.size() << " Gemma3 answer tokens aligned with Qwen3's");
  CHECK(static_cast<double>(pairs.size()) > 0.6 * static_cast<double>(ids_s.size()));
}
