// Batched generation over a KV cache (generate), and continuous batching over a fixed number of cache rows
// (generate_continuous: finished sequences are replaced by waiting prompts): greedy or sampled (temperature -> top-k ->
// top-p -> min-p, seeded), several stop ids, max new tokens, rows that finish at different times (a finished row leaves
// the batch, so it costs nothing afterwards), and a callback per token as it is produced (streaming).
//
//   auto r = generate::generate(model, {prompt_ids}, {.max_new_tokens = 256}, [&](size_t row, int32_t tok) {...});
//
// Like HF generate: a row stops after it produces a stop id (the stop id is part of its output) or after
// max_new_tokens; the stop ids default to the model's eos_token_id (generation_config.json's, see
// GenerationConfig). Sampling uses one RNG per row seeded with seed + row, so a row's tokens do not depend on
// which other rows share its batch.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/generate/sampling.hpp"
#include "distill/io/hf_config.hpp"
#include "distill/tensor/tensor.hpp"

namespace distill::generate {

enum class Finish : uint8_t { Stop, Length };

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  std::vector<int64_t> stop_ids;  // empty: the model's eos_token_ids
  bool ignore_stop = false;       // generate exactly max_new_tokens (benchmarks)
  SamplingParams sampling;
  // Called with prompt i's raw next-token logits [V] (f32, before any sampling transform) each time a token is
  // generated for it, before that token is sampled: the teacher's distribution at every generated position
  // (gsm8k_distill generate --save-logits keeps its top-K).
  std::function<void(size_t prompt, std::span<const float> logits)> on_logits;
};

struct Generation {
  std::vector<int32_t> tokens;  // new tokens only, the stop id included
  Finish finish = Finish::Length;
};

struct GenerateStats {
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;  // prefill: the prompt pass and its first sampled token
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  // Tokens after the first of each row, over the time spent producing them.
  double decode_tokens_per_second(int64_t rows) const {
    const int64_t n = new_tokens - rows;
    return decode_seconds > 0 && n > 0 ? n / decode_seconds : 0;
  }
};

struct GenerateResult {
  std::vector<Generation> rows;
  GenerateStats stats;
};

using TokenCallback = std::function<void(size_t row, int32_t token)>;

namespace detail {

// What generate() and generate_continuous() check and set up alike, for a non-empty list of prompts: every prompt
// non-empty and, with max_new_tokens, inside the model's context; the prompt tokens counted into `stats`; one sampler
// per prompt, prompt i seeded seed + i; the stop test (the model's eos ids unless stop_ids are given).
struct GenerationSetup {
  int64_t longest = 0;  // tokens of the longest prompt
  std::vector<Sampler> samplers;
  std::vector<int64_t> stops;
  bool ignore_stop = false;
  bool is_stop(int32_t t) const { return !ignore_stop && std::find(stops.begin(), stops.end(), t) != stops.end(); }
};

template <class Model>
GenerationSetup setup_generation(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& o, GenerateStats& stats) {
  GenerationSetup s;
  for (size_t i = 0; i < prompts.size(); ++i) {
    DISTILL_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty");
    s.longest = std::max<int64_t>(s.longest, static_cast<int64_t>(prompts[i].size()));
    stats.prompt_tokens += static_cast<int64_t>(prompts[i].size());
  }
  const int64_t ctx = m.dims().max_positions;
  if (ctx > 0 && s.longest + o.max_new_tokens > ctx)
    throw Error("generate: a prompt of " + std::to_string(s.longest) + " tokens plus max_new_tokens " +
                std::to_string(o.max_new_tokens) + " exceeds the model's context of " + std::to_string(ctx) +
                " positions (max_position_embeddings)");
  s.samplers.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    SamplingParams p = o.sampling;
    p.seed = o.sampling.seed + i;
    s.samplers.emplace_back(p);
  }
  s.stops = o.stop_ids.empty() ? m.dims().eos_token_ids : o.stop_ids;
  s.ignore_stop = o.ignore_stop;
  return s;
}

// Logits [rows, V] of any dtype and device as f32 on the host, for the samplers.
template <class T, class D>
Tensor<float> host_logits(const Tensor<T, D>& logits) {
  if constexpr (std::is_same_v<T, float>)
    return logits.template to<Cpu>();
  else
    return logits.template cast<float>().template to<Cpu>();
}

}  // namespace detail

// Generates for every prompt (token ids). Model: a models::Transformer (make_cache, step, dims).
template <class Model>
GenerateResult generate(const Model& m, const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o,
                        const TokenCallback& on_token = {}) {
  using clock = std::chrono::steady_clock;
  o.sampling.validate();
  DISTILL_CHECK(o.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", o.max_new_tokens);
  const size_t B = prompts.size();
  GenerateResult res;
  res.rows.resize(B);
  if (B == 0) return res;
  detail::GenerationSetup setup = detail::setup_generation(m, prompts, o, res.stats);
  const int64_t Tmax = setup.longest;
  if (o.max_new_tokens == 0) return res;
  auto cache = m.make_cache(static_cast<int64_t>(B), Tmax + o.max_new_tokens);
  const int64_t V = m.dims().vocab;

  // One sampled token per active row from logits [A, V]; returns the rows still active afterwards.
  std::vector<int64_t> active;
  auto take = [&](const auto& logits, const std::vector<int64_t>& rows) {
    const Tensor<float> l = detail::host_logits(logits);
    std::vector<int64_t> still;
    for (size_t i = 0; i < rows.size(); ++i) {
      const size_t r = static_cast<size_t>(rows[i]);
      if (o.on_logits) o.on_logits(r, std::span<const float>(l.data() + i * V, static_cast<size_t>(V)));
      const int32_t tok = static_cast<int32_t>(setup.samplers[r].next(std::span<const float>(l.data() + i * V, V)));
      Generation& g = res.rows[r];
      g.tokens.push_back(tok);
      ++res.stats.new_tokens;
      if (on_token) on_token(r, tok);
      if (setup.is_stop(tok))
        g.finish = Finish::Stop;
      else if (static_cast<int64_t>(g.tokens.size()) >= o.max_new_tokens)
        g.finish = Finish::Length;
      else
        still.push_back(rows[i]);
    }
    return still;
  };

  // Prefill: all prompts at once, right-padded.
  auto t0 = clock::now();
  {
    auto ids = Tensor<int32_t>::zeros({static_cast<int64_t>(B), Tmax});
    std::vector<int64_t> rows(B), n(B);
    for (size_t i = 0; i < B; ++i) {
      rows[i] = static_cast<int64_t>(i);
      n[i] = static_cast<int64_t>(prompts[i].size());
      std::copy(prompts[i].begin(), prompts[i].end(), ids.data() + static_cast<int64_t>(i) * Tmax);
    }
    active = take(m.step(cache, ids, rows, n), rows);
  }
  auto t1 = clock::now();
  res.stats.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  // Decode: one token per active row per step.
  while (!active.empty()) {
    auto ids = Tensor<int32_t>::empty({static_cast<int64_t>(active.size()), 1});
    for (size_t i = 0; i < active.size(); ++i) ids.data()[i] = res.rows[static_cast<size_t>(active[i])].tokens.back();
    active = take(m.step(cache, ids, active), active);
  }
  res.stats.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return res;
}

// Continuous batching: at most `slots` prompts decode together; when one finishes, the next waiting prompt takes its
// KV-cache row (reset, then prefilled with the other newcomers of that step), so the batch stays full however much
// the lengths differ, and the cache holds `slots` rows of (longest prompt + max_new_tokens) positions, not one row
// per prompt. Results are in prompt order; `on_done(i, generation)` is called as each prompt finishes (e.g. to
// stream records to a file). Prompt i samples with seed + i, as generate() seeds row i, so with the same prompts
// the two agree (greedy: the same tokens, up to float rounding differences between batch shapes).
using DoneCallback = std::function<void(size_t prompt, const Generation& g)>;

template <class Model>
GenerateResult generate_continuous(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                                   const GenerateOptions& o, int64_t slots, const DoneCallback& on_done = {}) {
  using clock = std::chrono::steady_clock;
  o.sampling.validate();
  DISTILL_CHECK(o.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", o.max_new_tokens);
  DISTILL_CHECK(slots >= 1, "generate_continuous: slots must be >= 1, got ", slots);
  const size_t P = prompts.size();
  GenerateResult res;
  res.rows.resize(P);
  if (P == 0) return res;
  detail::GenerationSetup setup = detail::setup_generation(m, prompts, o, res.stats);
  if (o.max_new_tokens == 0) {
    if (on_done)
      for (size_t i = 0; i < P; ++i) on_done(i, res.rows[i]);
    return res;
  }
  const int64_t S = std::min<int64_t>(slots, static_cast<int64_t>(P));
  auto cache = m.make_cache(S, setup.longest + o.max_new_tokens);
  const int64_t V = m.dims().vocab;
  std::vector<int64_t> owner(static_cast<size_t>(S), -1);  // the prompt in each cache row
  size_t next = 0;
  double prefill_s = 0, decode_s = 0;
  // One token for each listed cache row from logits [A, V]; frees the rows whose prompt finished.
  auto take = [&](const auto& logits, const std::vector<int64_t>& rows) {
    const Tensor<float> l = detail::host_logits(logits);
    for (size_t i = 0; i < rows.size(); ++i) {
      const size_t r = static_cast<size_t>(rows[i]);
      const size_t q = static_cast<size_t>(owner[r]);
      if (o.on_logits) o.on_logits(q, std::span<const float>(l.data() + i * V, static_cast<size_t>(V)));
      const int32_t tok = static_cast<int32_t>(setup.samplers[q].next(std::span<const float>(l.data() + i * V, V)));
      Generation& g = res.rows[q];
      g.tokens.push_back(tok);
      ++res.stats.new_tokens;
      const bool stop = setup.is_stop(tok), full = static_cast<int64_t>(g.tokens.size()) >= o.max_new_tokens;
      if (stop || full) {
        g.finish = stop ? Finish::Stop : Finish::Length;
        owner[r] = -1;
        if (on_done) on_done(q, g);
      }
    }
  };
  for (;;) {
    // Refill: waiting prompts take the free rows, prefilled together.
    std::vector<int64_t> fresh;
    for (int64_t r = 0; r < S && next < P; ++r)
      if (owner[static_cast<size_t>(r)] < 0) {
        owner[static_cast<size_t>(r)] = static_cast<int64_t>(next++);
        cache.reset(r);
        fresh.push_back(r);
      }
    if (!fresh.empty()) {
      const auto t0 = clock::now();
      int64_t T = 0;
      for (int64_t r : fresh)
        T = std::max<int64_t>(T,
                              static_cast<int64_t>(prompts[static_cast<size_t>(owner[static_cast<size_t>(r)])].size()));
      auto ids = Tensor<int32_t>::zeros({static_cast<int64_t>(fresh.size()), T});
      std::vector<int64_t> n(fresh.size());
      for (size_t i = 0; i < fresh.size(); ++i) {
        const auto& pr = prompts[static_cast<size_t>(owner[static_cast<size_t>(fresh[i])])];
        n[i] = static_cast<int64_t>(pr.size());
        std::copy(pr.begin(), pr.end(), ids.data() + static_cast<int64_t>(i) * T);
      }
      take(m.step(cache, ids, fresh, n), fresh);
      prefill_s += std::chrono::duration<double>(clock::now() - t0).count();
    }
    std::vector<int64_t> active;
    for (int64_t r = 0; r < S; ++r)
      if (owner[static_cast<size_t>(r)] >= 0) active.push_back(r);
    if (active.empty()) {
      if (next >= P) break;
      continue;  // every newcomer finished on its first token: refill again
    }
    const auto t0 = clock::now();
    auto ids = Tensor<int32_t>::empty({static_cast<int64_t>(active.size()), 1});
    for (size_t i = 0; i < active.size(); ++i)
      ids.data()[i] = res.rows[static_cast<size_t>(owner[static_cast<size_t>(active[i])])].tokens.back();
    take(m.step(cache, ids, active), active);
    decode_s += std::chrono::duration<double>(clock::now() - t0).count();
  }
  res.stats.prefill_seconds = prefill_s;
  res.stats.decode_seconds = decode_s;
  return res;
}

// generation_config.json: the model's default stop ids and sampling (HF generate's defaults where absent).
struct GenerationConfig {
  std::vector<int64_t> eos_token_ids;
  SamplingParams sampling;
  std::optional<int64_t> max_new_tokens;
};

inline GenerationConfig parse_generation_config(const nlohmann::json& j, const std::string& source) {
  GenerationConfig g;
  DISTILL_CHECK(j.is_object(), source, ": not a JSON object");
  auto num = [&](const char* k, auto def) {
    using V = decltype(def);
    if (!j.contains(k) || j[k].is_null()) return def;
    DISTILL_CHECK(j[k].is_number(), source, ": ", k, " must be a number, found ", j[k].dump());
    if constexpr (std::is_integral_v<V>) {
      // An integer field given as a float (or out of range) is refused, not converted: a double beyond int64
      // would be undefined behaviour.
      DISTILL_CHECK(j[k].is_number_integer() && !(j[k].is_number_unsigned() && j[k].get<uint64_t>() > INT64_MAX),
                    source, ": ", k, " must be an integer, found ", j[k].dump());
    }
    return j[k].get<V>();
  };
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer())
      g.eos_token_ids.push_back(e.get<int64_t>());
    else if (e.is_array())
      for (const auto& x : e) {
        DISTILL_CHECK(x.is_number_integer(), source, ": eos_token_id entries must be integers, found ", x.dump());
        g.eos_token_ids.push_back(x.get<int64_t>());
      }
    else
      throw Error(source + ": eos_token_id must be an integer or a list, found " + e.dump());
  }
  if (j.contains("do_sample") && j["do_sample"].is_boolean()) g.sampling.do_sample = j["do_sample"].get<bool>();
  g.sampling.temperature = num("temperature", 1.0f);
  g.sampling.top_k = num("top_k", int64_t{50});  // HF's default top_k is 50 when sampling
  g.sampling.top_p = num("top_p", 1.0f);
  g.sampling.min_p = num("min_p", 0.0f);
  if (j.contains("max_new_tokens") && j["max_new_tokens"].is_number_integer())
    g.max_new_tokens = j["max_new_tokens"].get<int64_t>();
  g.sampling.validate();
  return g;
}

// DIR/generation_config.json, or nullopt when the directory has none.
inline std::optional<GenerationConfig> load_generation_config(const std::string& dir) {
  const auto p = std::filesystem::path(dir) / "generation_config.json";
  if (!std::filesystem::exists(p)) return std::nullopt;
  return parse_generation_config(io::read_json_file(p.string()), p.string());
}

}  // namespace distill::generate
