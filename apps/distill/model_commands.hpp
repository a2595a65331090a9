// The `distill` subcommands that run a model (CPU):
//   generate  a prompt rendered with the model's chat template -> streamed text, then a tokens/s line on stderr
//   logits    token ids as JSON on stdin -> the logits of every position as JSON (checks against other
//             implementations)
// Both load any Qwen3ForCausalLM or Gemma3ForCausalLM checkpoint directory through the family specs. Kept out of
// commands.hpp: these instantiate the model templates, the heaviest code in the tool.
#pragma once
#include <chrono>
#include <cstdio>
#include <fstream>
#include <istream>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "distill/core/parallel.hpp"
#include "distill/generate/generate.hpp"
#include "distill/generate/text_stream.hpp"
#include "distill/models/adapter.hpp"
#include "distill/models/export.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/random.hpp"
#include "distill/models/transformer.hpp"
#include "distill/text/chat.hpp"
#include "distill/text/tokenizer.hpp"
#include "model_options.hpp"
#include "progress.hpp"

namespace distill::app {

struct GenerateCmd : ModelOptions {
  std::string prompt;      // empty: read stdin
  std::string system;      // optional system message
  std::string prompt_ids;  // "1,2,3": token ids instead of text (no tokenizer needed); output is ids
  bool raw = false;        // no chat template: the prompt text is encoded as is
  std::optional<int64_t> max_new_tokens;
  bool greedy = false;
  std::optional<float> temperature, top_p, min_p;
  std::optional<int64_t> top_k;
  uint64_t seed = 0;
  bool ignore_eos = false;
};

struct LogitsCmd : ModelOptions {
  bool last = false;  // only the last position of each sequence
};

namespace detail {

inline std::vector<int32_t> parse_id_list(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0 || v > INT32_MAX)
      throw Error("--prompt-ids: \"" + item + "\" is not a token id (expected comma-separated integers)");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw Error("--prompt-ids: no ids given");
  return ids;
}

}  // namespace detail

// Streams the generated text (or ids, with --prompt-ids) to `out`, then one stats line to `err`.
inline generate::GenerateStats run_generate(const GenerateCmd& o, std::istream& in, std::ostream& out,
                                            std::ostream& err) {
  set_max_threads(o.threads);
  generate::GenerateStats stats;
  detail::with_model_type(o, [&]<models::TransformerSpec Spec, class T>() {
    const auto load0 = std::chrono::steady_clock::now();
    const auto model = detail::load_model<Spec, T>(o);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load0).count();

    std::optional<text::Tokenizer> tok;
    std::vector<int32_t> prompt;
    if (!o.prompt_ids.empty()) {
      prompt = detail::parse_id_list(o.prompt_ids);
    } else {
      tok = text::Tokenizer::from_file(o.model);
      std::string user = o.prompt;
      if (user.empty()) user.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      if (o.raw) {
        prompt = tok->encode(user);
      } else {
        std::vector<text::Message> msgs;
        if (!o.system.empty()) msgs.push_back(text::Message{"system", o.system});
        msgs.push_back(text::Message{"user", user});
        const auto r = text::render_chat(text::detect_chat_format(o.model), msgs, true);
        prompt = tok->encode(r.text, false);  // the template writes <bos> itself
      }
    }

    generate::GenerateOptions g;
    const auto gc = generate::load_generation_config(o.model);
    if (gc) {
      g.sampling = gc->sampling;
      g.stop_ids = gc->eos_token_ids;
    }
    g.max_new_tokens = o.max_new_tokens.value_or(gc && gc->max_new_tokens ? *gc->max_new_tokens : 512);
    if (o.temperature || o.top_k || o.top_p || o.min_p) g.sampling.do_sample = true;
    if (o.temperature) g.sampling.temperature = *o.temperature;
    if (o.top_k) g.sampling.top_k = *o.top_k;
    if (o.top_p) g.sampling.top_p = *o.top_p;
    if (o.min_p) g.sampling.min_p = *o.min_p;
    if (o.greedy) g.sampling.do_sample = false;
    g.sampling.seed = o.seed;
    g.ignore_stop = o.ignore_eos;

    std::optional<generate::TextStream> stream;
    if (tok) stream.emplace(*tok);
    bool first = true;
    autograd::NoGradGuard no_grad;
    const auto res = generate::generate(model, {prompt}, g, [&](size_t, int32_t t) {
      if (stream)
        out << stream->push(t);
      else
        out << (first ? "" : " ") << t;
      first = false;
      out.flush();
    });
    if (stream) out << stream->flush();
    out << '\n';
    out.flush();
    stats = res.stats;
    char line[512];
    std::snprintf(line, sizeof line,
                  "[distill] %s %s, %d threads: load %.2f s; prefill %lld tokens in %.6f s (%.1f tok/s); "
                  "decode %lld tokens in %.6f s (%.1f tok/s); stop: %s\n",
                  models::family_name(Spec.family), o.dtype.c_str(), max_threads(), load_s,
                  static_cast<long long>(stats.prompt_tokens), stats.prefill_seconds, stats.prefill_tokens_per_second(),
                  static_cast<long long>(stats.new_tokens), stats.decode_seconds, stats.decode_tokens_per_second(1),
                  res.rows[0].finish == generate::Finish::Stop ? "stop id" : "max new tokens");
    err << line;
    err.flush();
  });
  return stats;
}

// stdin: one JSON array of ids, or an array of arrays (a batch; ragged rows are right-padded and masked).
// stdout: {"shape": [B, T, V] or [T, V], "logits": nested arrays} (--last: [B, V] / [V]).
inline void run_logits(const LogitsCmd& o, std::istream& in, std::ostream& out) {
  set_max_threads(o.threads);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("stdin: not valid JSON: ") + e.what());
  }
  const bool single = j.is_array() && !j.empty() && j[0].is_number();
  if (single) j = nlohmann::json::array({j});
  if (!j.is_array() || j.empty()) throw Error("stdin: expected a JSON array of token ids or an array of such arrays");
  std::vector<std::vector<int32_t>> rows;
  int64_t Tmax = 0;
  for (size_t b = 0; b < j.size(); ++b) {
    if (!j[b].is_array() || j[b].empty()) throw Error("stdin: row " + std::to_string(b) + " is not a non-empty array");
    std::vector<int32_t> r;
    for (const auto& x : j[b]) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)
        throw Error("stdin: row " + std::to_string(b) + " holds " + x.dump() + ", not a token id");
      r.push_back(x.get<int32_t>());
    }
    Tmax = std::max<int64_t>(Tmax, static_cast<int64_t>(r.size()));
    rows.push_back(std::move(r));
  }
  const int64_t B = static_cast<int64_t>(rows.size());
  auto ids = Tensor<int32_t>::zeros({B, Tmax});
  auto mask = Tensor<int32_t>::zeros({B, Tmax});
  for (int64_t b = 0; b < B; ++b)
    for (size_t t = 0; t < rows[static_cast<size_t>(b)].size(); ++t) {
      ids(b, static_cast<int64_t>(t)) = rows[static_cast<size_t>(b)][t];
      mask(b, static_cast<int64_t>(t)) = 1;
    }
  detail::with_model_type(o, [&]<models::TransformerSpec Spec, class T>() {
    autograd::NoGradGuard no_grad;
    const auto model = detail::load_model<Spec, T>(o);
    const Tensor<float> l = model.forward(ids, mask).value().template cast<float>();
    const int64_t V = l.dim(2);
    char buf[32];
    auto row = [&](int64_t b, int64_t t) {
      out << '[';
      for (int64_t v = 0; v < V; ++v) {
        std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(l(b, t, v)));
        out << (v ? "," : "") << buf;
      }
      out << ']';
    };
    out << "{\"shape\":[";
    if (!single) out << B << ',';
    if (!o.last) out << Tmax << ',';
    out << V << "],\"logits\":";
    if (!single) out << '[';
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = static_cast<int64_t>(rows[static_cast<size_t>(b)].size());
      if (b) out << ',';
      if (o.last) {
        row(b, n - 1);
        continue;
      }
      out << '[';
      for (int64_t t = 0; t < n; ++t) {
        if (t) out << ',';
        row(b, t);
      }
      out << ']';
    }
    if (!single) out << ']';
    out << "}\n";
  });
}

// distill random-model: a checkpoint with a real model's shapes and random bf16 weights (models/random.hpp).
struct RandomModelCmd {
  std::string preset, config, out, tokenizer;
  uint64_t seed = 0;
  double std = 0.02;
  int64_t layers = 0, vocab = 0;
};

inline int64_t run_random_model(const RandomModelCmd& o, std::ostream& log) {
  nlohmann::json cfg;
  if (!o.config.empty()) {
    std::ifstream f(o.config);
    if (!f) throw Error("cannot open --config " + o.config);
    try {
      cfg = nlohmann::json::parse(f);
    } catch (const nlohmann::json::exception& e) {
      throw Error(o.config + ": not valid JSON (" + e.what() + ")");
    }
  } else {
    cfg = models::preset_config(o.preset);
  }
  models::RandomModelOptions ro;
  ro.seed = o.seed;
  ro.std = o.std;
  ro.layers = o.layers;
  ro.vocab = o.vocab;
  std::optional<ProgressBar> bar;
  const int64_t n = models::write_random_checkpoint(cfg, o.out, ro, [&](int64_t done, int64_t total) {
    if (!bar) bar.emplace(log, total, true);
    bar->update(done, "shards");
  });
  if (!o.tokenizer.empty()) models::detail::copy_side_files(o.tokenizer, o.out);
  log << "wrote " << o.out << ": " << n << " parameters (bf16, seed " << o.seed << ")"
      << (o.tokenizer.empty() ? "; no tokenizer (--tokenizer DIR copies one)" : "") << "\n";
  return n;
}

}  // namespace distill::app
