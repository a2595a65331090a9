// Fuzz target: JSONL parsing (the in-memory reader with small and default limits, field access) and the GSM8K
// answer rules (gold extraction, annotation stripping, lm-eval filters and exact_match, our extraction, the
// <<a*b=c>> checker of synthetic.hpp, teacher trace records and their rejection filter) on arbitrary bytes. Only
// distill::Error may escape the library; anything else (a crash, another exception, a hang, a leak) is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "distill/data/gsm8k.hpp"
#include "distill/data/synthetic.hpp"
#include "distill/data/traces.hpp"

namespace {

void score_text(std::string_view text) {
  using namespace distill::data;
  (void)gsm8k_gold_answer(text);
  (void)strip_calculator_annotations(text);
  (void)lm_eval_gsm8k().exact_match.normalize(text);
  for (Gsm8kTask task : {Gsm8kTask::kGsm8k, Gsm8kTask::kGsm8kCot, Gsm8kTask::kGsm8kCotZeroshot}) {
    Gsm8kScore score;
    score.add(text, "x\n#### 1,000", false, task);
    score.add("The answer is 5.", text, true, task);
  }
  (void)extract_model_answer(text);
  (void)normalize_answer(text);
  (void)answers_match(text, "18");
  (void)answers_match("\\boxed{18}", text);
  (void)check_solution(text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace distill::data;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  for (int mode = 0; mode < 2; ++mode) {
    JsonlOptions opts;
    if (mode == 1) {
      opts.max_line_bytes = 256;
      opts.max_depth = 6;
      opts.require_object = false;
    }
    try {
      auto reader = JsonlReader::from_memory(in, "<fuzz>", opts);
      nlohmann::json obj;
      while (reader.next(obj)) {
        try {  // a teacher trace record, judged by the rejection filter
          (void)filter_trace(TraceRecord::from_json(obj, "<fuzz>"));
        } catch (const distill::Error&) {
        }
        if (!obj.is_object()) continue;
        for (const char* key : {"question", "answer", "i"}) {
          try {
            if (key[0] == 'i')
              (void)reader.int_field(obj, key);
            else
              score_text(reader.string_field(obj, key));
          } catch (const distill::Error&) {
          }
        }
      }
    } catch (const distill::Error&) {
    }
  }
  try {
    score_text(in);
  } catch (const distill::Error&) {
  }
  return 0;
}
