// Tokenizer encode throughput on GSM8K-style JSONL: every "question" and "answer" string of the given files is
// encoded with Tokenizer::encode_batch (add_special_tokens=false) on N threads, once to warm up and then
// --repeat times; prints MB/s of UTF-8 input (1 MB = 1e6 bytes) and the total token count. The HF side of
// the comparison is tools/bench_tokenizer.py, which runs this program and parses its RESULT line:
//   RESULT tokenizer=<path> threads=<n> texts=<n> bytes=<n> tokens=<n> repeat=<k> best_s=<s> median_s=<s>
//          best_mbps=<x> median_mbps=<x>
// Usage: tokenizer_encode --tokenizer PATH [--threads N] [--repeat K] file.jsonl...
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/text/tokenizer.hpp"

namespace {

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s --tokenizer PATH [--threads N] [--repeat K] file.jsonl...\n", argv0);
  return 2;
}

// Every question and answer string of a GSM8K-style JSONL file, in file order.
void read_texts(const std::string& path, std::vector<std::string>& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const auto j = nlohmann::json::parse(line);
      for (const char* key : {"question", "answer"})
        if (j.contains(key)) out.push_back(j.at(key).get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(path + ":" + std::to_string(line_no) + ": " + e.what());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string tok_path;
  int threads = 1;
  int repeat = 5;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--tokenizer" || a == "--threads" || a == "--repeat") && i + 1 < argc) {
      const std::string v = argv[++i];
      if (a == "--tokenizer") tok_path = v;
      if (a == "--threads") threads = std::atoi(v.c_str());
      if (a == "--repeat") repeat = std::atoi(v.c_str());
    } else if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      return usage(argv[0]);
    } else {
      files.push_back(a);
    }
  }
  if (tok_path.empty() || files.empty() || threads < 1 || repeat < 1) return usage(argv[0]);

  try {
    std::vector<std::string> texts;
    for (const auto& f : files) read_texts(f, texts);
    size_t bytes = 0;
    for (const auto& t : texts) bytes += t.size();

    const auto t_load = std::chrono::steady_clock::now();
    const auto tok = distill::text::Tokenizer::from_file(tok_path);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

    size_t tokens = 0;
    std::vector<double> times;
    for (int r = 0; r <= repeat; ++r) {  // r == 0 is the warm-up
      const auto t0 = std::chrono::steady_clock::now();
      const auto ids = tok.encode_batch(texts, /*add_special_tokens=*/false, threads);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      size_t n = 0;
      for (const auto& v : ids) n += v.size();
      if (r == 0) {
        tokens = n;
      } else {
        if (n != tokens) throw std::runtime_error("token count changed between repetitions");
        times.push_back(s);
      }
    }
    std::sort(times.begin(), times.end());
    const double best = times.front();
    const double median =
        times.size() % 2 ? times[times.size() / 2] : 0.5 * (times[times.size() / 2 - 1] + times[times.size() / 2]);
    const double mb = static_cast<double>(bytes) / 1e6;
    std::printf("%s: %zu texts, %.3f MB, %zu tokens, %d thread(s), load %.2f s\n", tok_path.c_str(), texts.size(), mb,
                tokens, threads, load_s);
    std::printf("  best %.4f s (%.2f MB/s), median of %d %.4f s (%.2f MB/s)\n", best, mb / best, repeat, median,
                mb / median);
    std::printf(
        "RESULT tokenizer=%s threads=%d texts=%zu bytes=%zu tokens=%zu repeat=%d best_s=%.6f median_s=%.6f "
        "best_mbps=%.4f median_mbps=%.4f\n",
        tok_path.c_str(), threads, texts.size(), bytes, tokens, repeat, best, median, mb / best, mb / median);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_encode: %s\n", e.what());
    return 1;
  }
  return 0;
}
