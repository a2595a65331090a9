// generate, train, eval and ask (pipeline.hpp). The models run behind runner.hpp's interface, so this file
// instantiates no model template; the trainer lives in the distill tool's train_commands.cpp.
#include "pipeline.hpp"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <unordered_set>

#include "demo_data.hpp"
#include "distill/core/parallel.hpp"
#include "distill/data/topk_logits.hpp"
#include "distill/data/traces.hpp"
#include "distill/io/file.hpp"
#include "distill/io/hf_hub.hpp"
#include "mpi_env.hpp"
#include "progress.hpp"
#include "runner.hpp"

namespace distill::gsm8k_app {

namespace fs = std::filesystem;

namespace {

std::string stem_of(const std::string& path) {
  std::string s = fs::path(path).filename().string();
  if (s.size() > 6 && s.ends_with(".jsonl")) s.resize(s.size() - 6);
  return s;
}

// "a/b.jsonl" + ".rank1-of-2" -> "a/b.rank1-of-2.jsonl".
std::string with_suffix(const std::string& path, const std::string& suffix) {
  if (suffix.empty()) return path;
  if (path.ends_with(".jsonl")) return path.substr(0, path.size() - 6) + suffix + ".jsonl";
  return path + suffix;
}

std::string fmt(const char* f, double a, double b = 0, double c = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, a, b, c);
  return buf;
}

// Generation options: the model's generation_config.json (stop ids, sampling), then the flags.
generate::GenerateOptions generation_options(const std::string& dir, int64_t max_new_tokens, bool greedy,
                                             std::optional<double> temperature, uint64_t seed) {
  generate::GenerateOptions g;
  if (const auto gc = generate::load_generation_config(dir)) {
    g.sampling = gc->sampling;
    g.stop_ids = gc->eos_token_ids;
  }
  g.max_new_tokens = max_new_tokens;
  if (greedy) g.sampling.do_sample = false;
  if (temperature) {
    g.sampling.do_sample = true;
    g.sampling.temperature = static_cast<float>(*temperature);
  }
  g.sampling.seed = seed;
  return g;
}

// Appends to a per-record JSONL file that may hold records of an earlier, killed run: the partial last line is cut
// off and the ids already there are returned, with the records themselves.
std::vector<nlohmann::json> resume_records(const std::string& path, std::unordered_set<std::string>& done) {
  std::vector<nlohmann::json> recs;
  if (!fs::exists(path)) return recs;
  data::repair_jsonl_tail(path);
  data::for_each_jsonl(path, [&](nlohmann::json& j, const data::JsonlReader& r) {
    const std::string id = r.string_field(j, "id");
    if (!done.insert(id).second) r.fail("id \"" + id + "\" was already recorded");
    recs.push_back(std::move(j));
  });
  return recs;
}

// Calls fn(record, reader) for each line of a JSONL file. A line that is not JSON, or that fn refuses by throwing
// distill::Error, is reported on `err` with its line number and skipped — or rethrown when strict. Returns the
// number of lines skipped.
template <class F>
int64_t for_each_record_lenient(const std::string& path, bool strict, std::ostream& err, F&& fn) {
  data::JsonlReader r(path);
  int64_t skipped = 0;
  for (;;) {
    nlohmann::json j;
    try {
      if (!r.next(j)) break;
      fn(j, static_cast<const data::JsonlReader&>(r));
    } catch (const Error& e) {
      if (strict) throw;
      ++skipped;
      err << "[gsm8k_distill] warning: " << e.what() << " (line skipped; --strict makes this fatal)\n";
    }
  }
  return skipped;
}

// Tests: DISTILL_TEST_KILL_AT=<stage> makes the process die at that stage like kill -9, leaving a torn record at the
// end of `file` as a write cut short would.
void test_kill_point(const std::string& stage, const std::string& file) {
  const char* k = std::getenv("DISTILL_TEST_KILL_AT");
  if (!k || stage != k) return;
  if (std::FILE* f = std::fopen(file.c_str(), "ab")) {
    std::fputs("{\"id\": \"torn-rec", f);
    std::fclose(f);
  }
  std::_Exit(86);
}

}  // namespace

std::vector<Question> load_questions(const std::string& path, bool strict, std::ostream& err) {
  DISTILL_CHECK(!path.empty(), "no data file given (--data FILE.jsonl, one {\"question\", \"answer\"} per line)");
  DISTILL_CHECK(fs::is_regular_file(path), path, ": no such file");
  std::vector<Question> out;
  const std::string stem = stem_of(path);
  const int64_t skipped =
      for_each_record_lenient(path, strict, err, [&](const nlohmann::json& j, const data::JsonlReader& r) {
        const std::string& q = r.string_field(j, "question");
        const std::string& a = r.string_field(j, "answer");
        char id[32];
        std::snprintf(id, sizeof id, "-%05lld", static_cast<long long>(r.line_number()));
        out.push_back({stem + id, q, a});
      });
  if (out.empty())
    throw Error(path + ": no usable {\"question\", \"answer\"} records" +
                (skipped ? " (" + std::to_string(skipped) + " malformed lines skipped)" : std::string()));
  return out;
}

Shard Shard::from_env(int rank_flag, int world_flag) {
  Shard s;
  const app::mpi::World env = app::mpi::launched();
  s.rank = rank_flag >= 0 ? rank_flag : env.rank;
  s.world = world_flag >= 0 ? world_flag : env.size;
  if (s.rank < 0) s.rank = 0;
  if (s.world < 1) s.world = 1;
  DISTILL_CHECK(s.rank < s.world, "rank ", s.rank, " is not below the world size ", s.world);
  return s;
}
std::string Shard::suffix() const {
  return world == 1 ? std::string() : ".rank" + std::to_string(rank) + "-of-" + std::to_string(world);
}

// A file beside a traces file: <stem><ext> for <stem>.jsonl, else <traces><ext>.
static std::string beside_traces(const std::string& traces, const char* ext) {
  return (traces.ends_with(".jsonl") ? traces.substr(0, traces.size() - 6) : traces) + ext;
}
std::string accepted_path(const std::string& traces) { return beside_traces(traces, ".accepted.jsonl"); }
std::string topk_path(const std::string& traces) { return beside_traces(traces, ".topk.bin"); }

// ---------------------------------------------------------------------------------------------------- generate

GenerateSummary run_generate(const GenerateOpts& o, std::ostream& err) {
  set_max_threads(o.threads);
  DISTILL_CHECK(o.batch_size >= 1, "--batch-size must be >= 1");
  DISTILL_CHECK(o.max_new_tokens >= 1, "--max-new-tokens must be >= 1");
  const auto t0 = std::chrono::steady_clock::now();
  const std::string dir = io::resolve_model_dir(o.teacher);
  std::vector<Question> all = load_questions(o.data, o.strict, err);
  if (o.limit > 0 && static_cast<int64_t>(all.size()) > o.limit) all.resize(static_cast<size_t>(o.limit));
  const Shard sh = Shard::from_env(o.rank, o.world);
  const std::string out = with_suffix(o.out, sh.suffix());
  if (const auto p = fs::path(out).parent_path(); !p.empty()) fs::create_directories(p);

  std::vector<const Question*> mine;
  for (size_t i = 0; i < all.size(); ++i)
    if (static_cast<int>(i % static_cast<size_t>(sh.world)) == sh.rank) mine.push_back(&all[i]);

  GenerateSummary s;
  s.total = static_cast<int64_t>(mine.size());
  std::unordered_set<std::string> done;
  for (const auto& j : resume_records(out, done)) {
    const auto rec = data::TraceRecord::from_json(j, out);
    s.accepted += data::filter_trace(rec).accepted;
  }
  std::vector<const Question*> todo;
  for (const Question* q : mine)
    if (!done.count(q->id)) todo.push_back(q);
  s.done_before = s.total - static_cast<int64_t>(todo.size());
  if (!todo.empty()) {
    if (!o.quiet && s.done_before > 0)
      err << "[gsm8k_distill] resuming " << out << ": " << s.done_before << " of " << s.total << " already done\n";
    const auto runner = load_runner({dir, "", o.dtype, false, o.device});
    const ChatTokenizer ct = ChatTokenizer::load(dir);
    if (!o.quiet)
      err << "[gsm8k_distill] teacher " << runner->describe() << ": " << todo.size() << " questions"
          << (sh.world > 1 ? " (rank " + std::to_string(sh.rank) + " of " + std::to_string(sh.world) + ")" : "")
          << " -> " << out << "\n";
    data::JsonlWriter w(out, /*append=*/true);
    app::ProgressBar bar(err, s.total, !o.quiet);
    bar.set_start(s.done_before);
    int64_t new_tokens = 0, unsynced = 0, flushes = 0;
    std::vector<std::vector<int32_t>> prompts;
    for (const Question* q : todo) prompts.push_back(ct.prompt(q->question, o.system));
    // Continuous batching over --batch-size sequences; records are written as their traces finish (not in input
    // order) and made durable every --batch-size records. Question k of the shard samples with seed + k, so a record
    // does not depend on the batch it was in nor on where an earlier run was killed.
    auto g = generation_options(dir, o.max_new_tokens, o.greedy, o.temperature,
                                o.seed + static_cast<uint64_t>(s.done_before));
    // --save-logits K: each trace's top-K teacher log-probs go to <stem>.topk.bin before its JSONL line, so a
    // killed run never has a line without its logits (a record without a line is dropped on resume, and redone).
    std::optional<data::TopkWriter> topk;
    std::vector<data::TopkRecord> logits(o.save_logits > 0 ? todo.size() : 0);
    if (o.save_logits > 0) {
      DISTILL_CHECK(o.save_logits <= 4096, "--save-logits K must be at most 4096");
      g.on_logits = [&](size_t i, std::span<const float> l) {
        if (!topk)
          topk.emplace(topk_path(out), static_cast<uint32_t>(o.save_logits), static_cast<uint32_t>(l.size()), &done);
        data::TopkRecord& r = logits[i];
        if (r.k == 0) {
          r.k = o.save_logits;
          r.id = todo[i]->id;
        }
        r.append_row(l.data(), static_cast<int64_t>(l.size()));
      };
    }
    runner->generate(prompts, g, o.batch_size, [&](size_t i, const generate::Generation& row) {
      if (topk) {  // --save-logits: one row per emitted token (the stop token included)
        logits[i].tokens = row.tokens;
        topk->append(logits[i]);
        logits[i] = data::TopkRecord{};
      }
      const auto rec =
          data::TraceRecord::make(todo[i]->id, todo[i]->question, todo[i]->answer, ct.decode(row.tokens),
                                  static_cast<int64_t>(row.tokens.size()), row.finish == generate::Finish::Length);
      w.write(rec.to_json());
      s.accepted += data::filter_trace(rec).accepted;
      ++s.generated;
      new_tokens += static_cast<int64_t>(row.tokens.size());
      if (++unsynced == o.batch_size || s.generated == static_cast<int64_t>(todo.size())) {
        w.flush_sync();
        unsynced = 0;
        test_kill_point("generate:batch:" + std::to_string(++flushes), out);
      }
      const int64_t n = s.done_before + s.generated;
      bar.update(n, fmt("accepted %.1f%%  %.0f tok/s", 100.0 * static_cast<double>(s.accepted) / static_cast<double>(n),
                        static_cast<double>(new_tokens) / std::max(bar.elapsed(), 1e-9)));
    });
    s.tokens_per_second = static_cast<double>(new_tokens) / std::max(bar.elapsed(), 1e-9);
  }
  s.records = s.total;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ostringstream quiet;
  write_accepted(out, accepted_path(out), o.strict, o.quiet ? static_cast<std::ostream&>(quiet) : err);
  return s;
}

// Reads one trace file (generate's records) or accepted file ({"question", "answer"}) into accepted examples.
// Accepted examples keyed by id: written sorted by id (the input order within a file), so the training data does
// not depend on the order in which traces finished.
using Accepted = std::vector<std::pair<std::string, std::string>>;

static std::string accepted_lines(Accepted a) {
  std::stable_sort(a.begin(), a.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::string s;
  for (const auto& [id, line] : a) s += line;
  return s;
}

static int64_t collect_accepted(const std::string& path, bool strict, Accepted& out_lines,
                                std::map<std::string, int64_t>& rejected, std::ostream& err) {
  int64_t n = 0;
  const int64_t skipped =
      for_each_record_lenient(path, strict, err, [&](const nlohmann::json& j, const data::JsonlReader& r) {
        if (j.contains("response") && !j.contains("answer")) {  // a trace record (accepted lines have "answer")
          auto rec = data::TraceRecord::from_json(j, r.where());
          const std::string full = rec.response;
          rec.response = strip_thinking(rec.response);
          const auto v = data::filter_trace(rec);
          if (!v.accepted) {
            ++rejected[v.reason.substr(0, v.reason.find(':'))];
            return;
          }
          // "answer": what the student learns; "response": the teacher's own text (thinking included), which a
          // distilling teacher reads to align its positions with the student's (distill_teacher.hpp).
          out_lines.emplace_back(
              rec.id, nlohmann::json{{"id", rec.id}, {"question", rec.question}, {"answer", v.text}, {"response", full}}
                              .dump() +
                          "\n");
        } else {
          const std::string& q = r.string_field(j, "question");
          const std::string& a = r.string_field(j, "answer");
          const std::string id = j.value("id", r.where());
          nlohmann::json line{{"id", id}, {"question", q}, {"answer", a}};
          if (j.contains("response") && j["response"].is_string()) line["response"] = j["response"];
          out_lines.emplace_back(id, line.dump() + "\n");
        }
        ++n;
      });
  if (skipped > 0) rejected["malformed line"] += skipped;
  return n;
}

static std::string rejected_summary(const std::map<std::string, int64_t>& rejected) {
  std::string s;
  for (const auto& [why, n] : rejected) s += (s.empty() ? "" : ", ") + why + ": " + std::to_string(n);
  return s;
}

int64_t write_accepted(const std::string& traces, const std::string& accepted, bool strict, std::ostream& err) {
  Accepted lines;
  std::map<std::string, int64_t> rejected;
  const int64_t n = collect_accepted(traces, strict, lines, rejected, err);
  io::atomic_write(accepted, accepted_lines(std::move(lines)));
  int64_t nrej = 0;
  for (const auto& kv : rejected) nrej += kv.second;
  err << "[gsm8k_distill] " << n << " of " << n + nrej << " traces accepted -> " << accepted
      << (nrej ? " (rejected: " + rejected_summary(rejected) + ")" : std::string()) << "\n";
  return n;
}

// ---------------------------------------------------------------------------------------------------- train

void run_gsm8k_train(TrainOpts o, std::ostream& log, std::ostream& err) {
  DISTILL_CHECK(!o.out.empty(), "train: --out DIR is required");
  if (o.traces.empty()) o.traces = {"traces.jsonl"};
  Accepted lines;
  std::map<std::string, int64_t> rejected;
  int64_t n = 0;
  for (const auto& t : o.traces) {
    DISTILL_CHECK(fs::is_regular_file(t), t, ": no such trace file (make one with `gsm8k_distill generate`)");
    n += collect_accepted(t, o.strict, lines, rejected, err);
  }
  if (n == 0)
    throw Error("train: no accepted traces in " + std::to_string(o.traces.size()) + " file(s)" +
                (rejected.empty() ? std::string(" (the files hold no records)")
                                  : " (every record was rejected: " + rejected_summary(rejected) + ")"));
  fs::create_directories(o.out);
  // Under mpirun every process reads the same traces; each writes its own copy of the examples (same bytes).
  const app::mpi::World mw = app::mpi::world();
  o.data = (fs::path(o.out) / ("train_data" + Shard{mw.rank, mw.size}.suffix() + ".jsonl")).string();
  io::atomic_write(o.data, accepted_lines(std::move(lines)));
  if (!o.quiet && mw.rank == 0)
    err << "[gsm8k_distill] " << n << " accepted traces"
        << (rejected.empty() ? std::string() : " (rejected: " + rejected_summary(rejected) + ")") << " -> " << o.data
        << "\n";
  o.model = io::resolve_model_dir(o.model);
  // kl/rkl/jsd without a teacher model: the teacher's logits saved beside the traces (generate --save-logits).
  if ((o.mode == "kl" || o.mode == "rkl" || o.mode == "jsd") && o.teacher_logits.empty()) {
    for (const auto& t : o.traces)
      if (fs::is_regular_file(topk_path(t))) o.teacher_logits.push_back(topk_path(t));
    if (!o.teacher_logits.empty() && !o.teacher.empty()) o.teacher_logits.clear();  // --teacher given: run it
    if (!o.teacher_logits.empty() && mw.rank == 0 && !o.quiet)
      err << "[gsm8k_distill] --mode " << o.mode << " from the saved teacher logits beside the traces\n";
  }
  app::run_train(o, log, err);
}

// ---------------------------------------------------------------------------------------------------- eval

namespace {

std::string label_of(const std::string& adapter) {
  if (adapter.empty() || adapter == "none") return "base";
  std::string s = fs::path(adapter).lexically_normal().string();
  while (!s.empty() && s.back() == '/') s.pop_back();
  for (char& c : s)
    if (c == '/' || c == '\\' || c == ' ') c = '_';
  while (!s.empty() && (s.front() == '.' || s.front() == '_')) s.erase(0, 1);
  return s.empty() ? "adapter" : s;
}

// Greedy answers to every question, scored like lm-eval's gsm8k; per-example records in `jsonl` (resumable).
EvalSummary evaluate(const Runner& runner, const ChatTokenizer& ct, const std::string& dir,
                     const std::vector<Question>& qs, const EvalOpts& o, const std::string& label,
                     const std::string& jsonl, std::ostream& err) {
  EvalSummary s;
  s.label = label;
  std::unordered_set<std::string> done;
  for (const auto& j : resume_records(jsonl, done)) {
    data::Gsm8kItemScore item;
    item.strict = j.value("strict", "");
    item.flexible = j.value("flexible", "");
    item.strict_correct = j.value("strict_correct", false);
    item.flexible_correct = j.value("flexible_correct", false);
    s.score.add(item, j.value("truncated", false));
  }
  std::vector<const Question*> todo;
  for (const auto& q : qs)
    if (!done.count(q.id)) todo.push_back(&q);
  const auto g = generation_options(dir, o.max_new_tokens, /*greedy=*/true, std::nullopt, 0);
  data::JsonlWriter w(jsonl, /*append=*/true);
  app::ProgressBar bar(err, static_cast<int64_t>(qs.size()), !o.quiet);
  bar.set_start(s.score.n);
  std::vector<std::vector<int32_t>> prompts;
  for (const Question* q : todo) prompts.push_back(ct.prompt(q->question, o.system));
  int64_t unsynced = 0;
  runner.generate(prompts, g, o.batch_size, [&](size_t i, const generate::Generation& row) {
    const std::string resp = ct.decode(row.tokens);
    const bool trunc = row.finish == generate::Finish::Length;
    const auto item = s.score.add(resp, todo[i]->answer, trunc);
    s.new_tokens += static_cast<int64_t>(row.tokens.size());
    w.write({{"id", todo[i]->id},
             {"question", todo[i]->question},
             {"gold", *data::gold_answer(todo[i]->answer)},
             {"response", resp},
             {"strict", item.strict},
             {"flexible", item.flexible},
             {"strict_correct", item.strict_correct},
             {"flexible_correct", item.flexible_correct},
             {"truncated", trunc},
             {"tokens", row.tokens.size()}});
    if (++unsynced == o.batch_size) {
      w.flush_sync();
      unsynced = 0;
    }
    bar.update(s.score.n, label + fmt(": strict %.1f%%  flexible %.1f%%", 100 * s.score.strict_accuracy(),
                                      100 * s.score.flexible_accuracy()));
  });
  w.flush_sync();
  s.seconds = bar.elapsed();
  return s;
}

}  // namespace

void print_eval_table(const std::vector<EvalSummary>& rows, std::ostream& out) {
  size_t w = 5;
  for (const auto& r : rows) w = std::max(w, r.label.size());
  char line[512];
  std::snprintf(line, sizeof line, "%-*s  %8s  %8s  %9s  %6s\n", static_cast<int>(w), "model", "strict", "flexible",
                "truncated", "n");
  out << line;
  for (const auto& r : rows) {
    const double n = static_cast<double>(std::max<int64_t>(r.score.n, 1));
    std::snprintf(line, sizeof line, "%-*s  %7.1f%%  %7.1f%%  %8.1f%%  %6lld\n", static_cast<int>(w), r.label.c_str(),
                  100 * r.score.strict_accuracy(), 100 * r.score.flexible_accuracy(),
                  100 * static_cast<double>(r.score.truncated) / n, static_cast<long long>(r.score.n));
    out << line;
  }
  if (rows.size() >= 2) {
    const auto &a = rows.front(), &b = rows.back();
    std::snprintf(line, sizeof line, "%-*s  %+7.1f   %+7.1f   (points, %s vs %s)\n", static_cast<int>(w), "change",
                  100 * (b.score.strict_accuracy() - a.score.strict_accuracy()),
                  100 * (b.score.flexible_accuracy() - a.score.flexible_accuracy()), b.label.c_str(), a.label.c_str());
    out << line;
  }
}

std::vector<EvalSummary> run_eval(const EvalOpts& o, std::ostream& out, std::ostream& err) {
  set_max_threads(o.threads);
  DISTILL_CHECK(o.batch_size >= 1, "--batch-size must be >= 1");
  const std::string dir = io::resolve_model_dir(o.model);
  std::vector<Question> qs = load_questions(o.data, o.strict, err);
  if (o.limit > 0 && static_cast<int64_t>(qs.size()) > o.limit) qs.resize(static_cast<size_t>(o.limit));
  const ChatTokenizer ct = ChatTokenizer::load(dir);
  fs::create_directories(o.out);
  std::vector<std::string> adapters = o.adapters.empty() ? std::vector<std::string>{""} : o.adapters;
  DISTILL_CHECK(o.labels.empty() || o.labels.size() == adapters.size(), "eval: ", o.labels.size(), " labels for ",
                adapters.size(), " adapters");
  std::vector<EvalSummary> rows;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const std::string ad = adapters[i] == "none" ? "" : adapters[i];
    const auto runner = load_runner({dir, ad, o.dtype, o.load_in_4bit, o.device});
    const std::string label = o.labels.empty() ? label_of(ad) : o.labels[i];
    if (!o.quiet)
      err << "[gsm8k_distill] eval " << label << " (" << runner->describe() << "), " << qs.size() << " questions\n";
    const std::string base = (fs::path(o.out) / label).string();
    EvalSummary s = evaluate(*runner, ct, dir, qs, o, label, base + ".jsonl", err);
    const nlohmann::json j{{"model", o.model},
                           {"adapter", ad},
                           {"data", o.data},
                           {"n", s.score.n},
                           {"strict_accuracy", s.score.strict_accuracy()},
                           {"flexible_accuracy", s.score.flexible_accuracy()},
                           {"truncated", s.score.truncated},
                           {"invalid_strict", s.score.invalid_strict},
                           {"seconds", s.seconds},
                           {"new_tokens", s.new_tokens}};
    io::atomic_write(base + ".json", j.dump(2) + "\n");
    rows.push_back(std::move(s));
  }
  print_eval_table(rows, out);
  return rows;
}

// ---------------------------------------------------------------------------------------------------- ask

namespace {

std::vector<std::string> wrap(const std::string& text, size_t width) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    std::string para = text.substr(start, nl - start);
    do {
      if (para.size() <= width) {
        out.push_back(para);
        break;
      }
      size_t cut = para.rfind(' ', width);
      if (cut == std::string::npos || cut == 0) cut = width;
      out.push_back(para.substr(0, cut));
      para.erase(0, cut + (cut < para.size() && para[cut] == ' '));
    } while (true);
    start = nl + 1;
  }
  return out;
}

}  // namespace

void print_side_by_side(const std::string& lt, const std::string& left, const std::string& rt, const std::string& right,
                        int width, std::ostream& out) {
  const size_t col = static_cast<size_t>(std::max(20, (width - 3) / 2));
  const auto a = wrap(left, col), b = wrap(right, col);
  auto row = [&](const std::string& x, const std::string& y) {
    std::string l = x;
    l.resize(col, ' ');
    out << l << " | " << y << "\n";
  };
  row(lt, rt);
  row(std::string(std::min(col, lt.size()), '-'), std::string(std::min(col, rt.size()), '-'));
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) row(i < a.size() ? a[i] : "", i < b.size() ? b[i] : "");
}

void run_ask(const AskOpts& o, std::ostream& out) {
  set_max_threads(o.threads);
  DISTILL_CHECK(!o.question.empty(), "ask: give the question as an argument");
  DISTILL_CHECK(!o.adapter.empty(), "ask: --adapter DIR (the distilled student) is required");
  const std::string dir = io::resolve_model_dir(o.model);
  const ChatTokenizer ct = ChatTokenizer::load(dir);
  const auto g = generation_options(dir, o.max_new_tokens, true, std::nullopt, 0);
  const std::vector<std::vector<int32_t>> p{ct.prompt(o.question)};
  const auto base = load_runner({dir, "", o.dtype, o.load_in_4bit, o.device});
  const std::string a = ct.decode(base->generate(p, g, 1).rows[0].tokens);
  const auto dist = load_runner({dir, o.adapter, o.dtype, o.load_in_4bit, o.device});
  const std::string b = ct.decode(dist->generate(p, g, 1).rows[0].tokens);
  int width = o.width;
  if (width <= 0) {
    const char* c = std::getenv("COLUMNS");
    width = c ? std::atoi(c) : 0;
    if (width < 40) width = 100;
  }
  out << "Q: " << o.question << "\n\n";
  print_side_by_side("base: " + base->describe(), a, "distilled: " + dist->describe(), b, width, out);
}

}  // namespace distill::gsm8k_app
