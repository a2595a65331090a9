// The `distill` tool's subcommands as plain functions over streams, so that main.cpp stays a thin CLI11
// front end and tests/test_app_distill.cpp can drive them without spawning processes.
//   tokenize  text lines (or JSON strings) -> one JSON array of ids per line; --decode for the reverse
//   chat      a JSON list of messages -> the rendered prompt (or ids + loss mask)
//   inspect   a safetensors file or checkpoint directory -> names, dtypes, shapes, sizes, totals
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iomanip>
#include <istream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/data/topk_logits.hpp"
#include "distill/io/hf_config.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/text/chat.hpp"
#include "distill/text/chat_tokens.hpp"
#include "distill/text/tokenizer.hpp"

namespace distill::app {

// ---------------------------------------------------------------------------------------------- tokenize
struct TokenizeOptions {
  std::string tokenizer;            // tokenizer.json or a directory holding one
  bool decode = false;              // ids -> text instead of text -> ids
  bool json_text = false;           // the text side is JSON strings (one per line), so newlines survive
  bool add_special_tokens = true;   // post-processor (Gemma3: <bos>); the `tokenizers` default
  bool skip_special_tokens = true;  // on decode; the `tokenizers` default
  int threads = 0;                  // 0 = all hardware threads
  int64_t batch_lines = 4096;       // lines encoded together (bounded memory on endless input)
};

namespace detail {

// std::getline has removed the "\n"; a "\r" left by CRLF input goes too (use --json for a text ending in "\r").
inline std::string strip_eol(std::string s) {
  if (!s.empty() && s.back() == '\r') s.pop_back();
  return s;
}

inline void write_ids(std::ostream& out, const std::vector<int32_t>& ids) {
  out << '[';
  for (size_t i = 0; i < ids.size(); ++i) out << (i ? "," : "") << ids[i];
  out << "]\n";
}

}  // namespace detail

// Reads `in` to the end; writes one output line per input line, in order. Returns the number of lines.
inline int64_t run_tokenize(const TokenizeOptions& opt, std::istream& in, std::ostream& out) {
  const auto tok = text::Tokenizer::from_file(opt.tokenizer);
  int64_t line_no = 0, done = 0;
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> ids;
  auto flush = [&] {
    if (!opt.decode) {
      const auto enc = tok.encode_batch(texts, opt.add_special_tokens, opt.threads);
      for (const auto& e : enc) detail::write_ids(out, e);
      texts.clear();
    } else {
      const auto dec = tok.decode_batch(ids, opt.skip_special_tokens, opt.threads);
      for (const auto& d : dec) {
        if (opt.json_text)
          out << nlohmann::json(d).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
        else
          out << d << '\n';
      }
      ids.clear();
    }
    out.flush();
  };
  std::string line;
  while (std::getline(in, line)) {
    ++line_no;
    if (!opt.decode) {
      if (opt.json_text) {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          throw Error("stdin:" + std::to_string(line_no) + ": not a JSON string: " + e.what());
        }
        if (!j.is_string()) throw Error("stdin:" + std::to_string(line_no) + ": expected a JSON string");
        texts.push_back(j.get<std::string>());
      } else {
        texts.push_back(detail::strip_eol(std::move(line)));
      }
    } else {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error("stdin:" + std::to_string(line_no) + ": not a JSON array of ids: " + e.what());
      }
      if (!j.is_array()) throw Error("stdin:" + std::to_string(line_no) + ": expected a JSON array of ids");
      std::vector<int32_t> v;
      v.reserve(j.size());
      for (const auto& x : j) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= tok.vocab_size())
          throw Error("stdin:" + std::to_string(line_no) + ": " + x.dump() + " is not a token id (vocab size " +
                      std::to_string(tok.vocab_size()) + ")");
        v.push_back(x.get<int32_t>());
      }
      ids.push_back(std::move(v));
    }
    ++done;
    if (static_cast<int64_t>(texts.size() + ids.size()) >= opt.batch_lines) flush();
  }
  if (!texts.empty() || !ids.empty()) flush();
  return done;
}

// -------------------------------------------------------------------------------------------------- chat
struct ChatOptions {
  std::string tokenizer;           // directory with tokenizer_config.json / tokenizer.json
  std::string format;              // "qwen3-thinking", "gemma3", or empty: detect from the tokenizer
  bool generation_prompt = false;  // append the assistant header (Qwen3-Thinking: also opens <think>)
  bool ids = false;                // print {"ids": [...], "loss_mask": [...]} instead of the text
  bool spans = false;              // print {"text": ..., "assistant_spans": [[b, e], ...]}
};

inline text::ChatFormat resolve_chat_format(const ChatOptions& opt) {
  if (!opt.format.empty()) {
    auto f = text::chat_format_from_name(opt.format);
    if (!f) throw Error("unknown chat format '" + opt.format + "' (known: qwen3-thinking, gemma3)");
    return *f;
  }
  if (opt.tokenizer.empty()) throw Error("chat: give --tokenizer DIR or --format NAME");
  return text::detect_chat_format(opt.tokenizer);
}

inline void run_chat(const ChatOptions& opt, std::istream& in, std::ostream& out) {
  const std::string src((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(src);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("stdin: not JSON: ") + e.what());
  }
  const auto messages = text::messages_from_json(j, "stdin");
  const auto fmt = resolve_chat_format(opt);
  const auto rendered = text::render_chat(fmt, messages, opt.generation_prompt);
  if (opt.ids) {
    if (opt.tokenizer.empty()) throw Error("chat --ids needs --tokenizer");
    const auto tok = text::Tokenizer::from_file(opt.tokenizer);
    const auto ct = text::encode_chat(tok, rendered);
    nlohmann::json o;
    o["ids"] = ct.ids;
    o["loss_mask"] = ct.loss_mask;
    out << o.dump() << '\n';
  } else if (opt.spans) {
    nlohmann::json o;
    o["text"] = rendered.text;
    o["assistant_spans"] = nlohmann::json::array();
    for (const auto& s : rendered.assistant_spans) o["assistant_spans"].push_back({s.begin, s.end});
    out << o.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  } else {
    out << rendered.text;
  }
}

// ----------------------------------------------------------------------------------------------- inspect
struct InspectOptions {
  std::string path;    // a .safetensors file, an index .json, or a checkpoint directory
  bool json = false;   // machine-readable output
  std::string filter;  // only names containing this
};

namespace detail {

// "model.layers.9.x" before "model.layers.10.x": runs of digits compare as numbers.
inline bool natural_less(std::string_view a, std::string_view b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const bool da = a[i] >= '0' && a[i] <= '9', db = b[j] >= '0' && b[j] <= '9';
    if (da && db) {
      size_t ie = i, je = j;
      while (ie < a.size() && a[ie] >= '0' && a[ie] <= '9') ++ie;
      while (je < b.size() && b[je] >= '0' && b[je] <= '9') ++je;
      std::string_view na = a.substr(i, ie - i), nb = b.substr(j, je - j);
      while (na.size() > 1 && na[0] == '0') na.remove_prefix(1);
      while (nb.size() > 1 && nb[0] == '0') nb.remove_prefix(1);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]);
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

inline std::string human_bytes(uint64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  std::ostringstream os;
  os << std::fixed << std::setprecision(u == 0 ? 0 : 2) << v << ' ' << units[u];
  return os.str();
}

inline std::string with_commas(int64_t n) {
  std::string s = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return n < 0 ? "-" + out : out;
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// One line: "Qwen3ForCausalLM (qwen3): 36 layers, hidden 2560, 32 heads / 8 kv heads x 128, ...".
inline std::string describe_config(const io::ModelConfig& c) {
  std::ostringstream os;
  os << c.architecture << " (" << c.model_type << "): " << c.num_hidden_layers << " layers, hidden " << c.hidden_size
     << ", " << c.num_attention_heads << " heads / " << c.num_key_value_heads << " kv heads x " << c.head_dim
     << ", mlp " << c.intermediate_size << " (" << c.hidden_act_name << "), vocab " << c.vocab_size;
  int64_t sliding = 0;
  for (auto t : c.layer_types) sliding += t == io::LayerType::SlidingAttention;
  if (sliding) os << ", " << sliding << " sliding-window layers (window " << c.sliding_window.value_or(0) << ")";
  os << ", rope theta " << c.rope_full.theta;
  if (sliding && c.rope_sliding.theta != c.rope_full.theta) os << " (sliding " << c.rope_sliding.theta << ")";
  if (c.final_logit_softcapping) os << ", final logit softcap " << *c.final_logit_softcapping;
  if (c.attn_logit_softcapping) os << ", attention logit softcap " << *c.attn_logit_softcapping;
  if (c.tie_word_embeddings) os << ", tied embeddings";
  if (!c.dtype.empty()) os << ", " << c.dtype;
  return os.str();
}

}  // namespace detail

inline void run_inspect(const InspectOptions& opt, std::ostream& out) {
  const auto ck = io::Checkpoint::open(opt.path);
  std::vector<const io::TensorInfo*> ts;
  for (const auto* t : ck.tensors())
    if (opt.filter.empty() || t->name.find(opt.filter) != std::string::npos) ts.push_back(t);
  std::sort(ts.begin(), ts.end(), [](const auto* a, const auto* b) { return detail::natural_less(a->name, b->name); });
  std::map<std::string, std::pair<int64_t, int64_t>> by_dtype;  // dtype -> (tensors, parameters)
  int64_t params = 0;
  uint64_t bytes = 0;
  for (const auto* t : ts) {
    auto& d = by_dtype[io::dtype_name(t->dtype)];
    d.first += 1;
    d.second += t->numel();
    params += t->numel();
    bytes += t->nbytes();
  }
  // The model description, when the checkpoint directory has a config.json beside it.
  namespace fs = std::filesystem;
  const fs::path p(opt.path);
  const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  std::optional<io::ModelConfig> cfg;
  std::string cfg_error;
  if (fs::exists(dir / "config.json")) {
    try {
      cfg = io::load_model_config((dir / "config.json").string());
    } catch (const Error& e) {
      cfg_error = e.what();
    }
  }

  if (opt.json) {
    nlohmann::json j;
    j["path"] = opt.path;
    j["shards"] = ck.num_shards();
    j["tensors"] = nlohmann::json::array();
    for (const auto* t : ts)
      j["tensors"].push_back({{"name", t->name},
                              {"dtype", io::dtype_name(t->dtype)},
                              {"shape", t->shape},
                              {"bytes", t->nbytes()},
                              {"shard", fs::path(ck.shard_of(t->name).path()).filename().string()}});
    j["total_parameters"] = params;
    j["total_bytes"] = bytes;
    nlohmann::json md = nlohmann::json::object();
    for (size_t i = 0; i < ck.num_shards(); ++i)
      for (const auto& [k, v] : ck.shard(i).metadata()) md[k] = v;
    j["metadata"] = md;
    if (cfg) j["config"] = detail::describe_config(*cfg);
    if (!cfg_error.empty()) j["config_error"] = cfg_error;
    out << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    return;
  }

  size_t wn = 4, ws = 5;
  for (const auto* t : ts) {
    wn = std::max(wn, t->name.size());
    ws = std::max(ws, detail::shape_str(t->shape).size());
  }
  out << opt.path << ": " << ck.num_shards() << (ck.num_shards() == 1 ? " file, " : " shards, ") << ts.size()
      << " tensors" << (opt.filter.empty() ? "" : " matching '" + opt.filter + "'") << "\n";
  bool same_metadata = true;  // shards written together carry the same metadata: print it once
  for (size_t i = 1; i < ck.num_shards(); ++i) same_metadata &= ck.shard(i).metadata() == ck.shard(0).metadata();
  for (size_t i = 0; i < (same_metadata ? std::min<size_t>(1, ck.num_shards()) : ck.num_shards()); ++i)
    for (const auto& [k, v] : ck.shard(i).metadata())
      out << "  metadata" << (same_metadata ? "" : " " + fs::path(ck.shard(i).path()).filename().string()) << ": " << k
          << " = " << v << "\n";
  if (cfg) out << "  config.json: " << detail::describe_config(*cfg) << "\n";
  if (!cfg_error.empty()) out << "  config.json: " << cfg_error << "\n";
  out << "\n"
      << std::left << std::setw(static_cast<int>(wn)) << "name"
      << "  " << std::setw(8) << "dtype" << std::setw(static_cast<int>(ws)) << "shape"
      << "  " << std::right << std::setw(14) << "parameters" << std::setw(12) << "size"
      << "\n";
  for (const auto* t : ts)
    out << std::left << std::setw(static_cast<int>(wn)) << t->name << "  " << std::setw(8) << io::dtype_name(t->dtype)
        << std::setw(static_cast<int>(ws)) << detail::shape_str(t->shape) << "  " << std::right << std::setw(14)
        << detail::with_commas(t->numel()) << std::setw(12) << detail::human_bytes(t->nbytes()) << "\n";
  out << "\ntotal: " << detail::with_commas(params) << " parameters, " << detail::human_bytes(bytes) << " ("
      << detail::with_commas(static_cast<int64_t>(bytes)) << " bytes)";
  std::string sep = "; ";
  for (const auto& [d, c] : by_dtype) {
    out << sep << d << ": " << c.first << " tensors, " << detail::with_commas(c.second) << " parameters";
    sep = ", ";
  }
  out << "\n";
}

// `distill diff A B`: two safetensors files (or checkpoint directories) tensor by tensor, as f32: the largest
// absolute difference per tensor. Returns false (the tool exits 1) when the names or shapes differ or a difference
// exceeds atol + rtol * (the largest |value| of that tensor in A).
struct DiffOptions {
  std::string a, b;
  double atol = 0, rtol = 0;
};

inline bool run_diff(const DiffOptions& o, std::ostream& out) {
  const io::Checkpoint ca = io::Checkpoint::open(o.a), cb = io::Checkpoint::open(o.b);
  bool ok = true;
  std::vector<std::string> na, nb;
  for (const auto* t : ca.tensors()) na.push_back(t->name);
  for (const auto* t : cb.tensors()) nb.push_back(t->name);
  std::sort(na.begin(), na.end());
  std::sort(nb.begin(), nb.end());
  if (na != nb) {
    out << "the tensor names differ (" << na.size() << " vs " << nb.size() << ")\n";
    return false;
  }
  double worst_all = 0;
  for (const auto& n : na) {
    const Tensor<float> x = ca.load<float>(n), y = cb.load<float>(n);
    if (x.shape() != y.shape()) {
      out << n << ": shapes differ\n";
      ok = false;
      continue;
    }
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(x.data()[i]) - static_cast<double>(y.data()[i])));
      scale = std::max(scale, std::fabs(static_cast<double>(x.data()[i])));
    }
    const bool bad = !(worst <= o.atol + o.rtol * scale);
    worst_all = std::max(worst_all, worst);
    if (bad || worst > 0)
      out << n << ": max |a-b| " << worst << " (max |a| " << scale << ")" << (bad ? "  EXCEEDS" : "") << "\n";
    ok = ok && !bad;
  }
  out << na.size() << " tensors, max |a-b| " << worst_all << (ok ? "" : " -- outside tolerance") << "\n";
  return ok;
}

// distill topk-info FILE: what an offline teacher-logits file (gsm8k_distill generate --save-logits) holds, as
// JSON: {"k", "vocab", "records", "positions"}; every record is read, so a damaged file is an error.
inline void run_topk_info(const std::string& path, std::ostream& out) {
  const data::TopkReader r(path);
  int64_t positions = 0;
  for (const auto& id : r.ids()) positions += r.get(id).positions;
  out << nlohmann::json{{"k", r.k()}, {"vocab", r.vocab()}, {"records", r.size()}, {"positions", positions}}.dump()
      << "\n";
}

}  // namespace distill::app
