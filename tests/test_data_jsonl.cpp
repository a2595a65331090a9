// JSONL reader/writer: line endings, BOM, blank lines, every malformed-input error (with file:line), large and
// long lines across buffer refills, pipes, and the writer + repair_jsonl_tail round trip used for resuming.
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "distill/data/jsonl.hpp"

using distill::Error;
using namespace distill::data;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case, removed at the end.
struct TempDir {
  fs::path dir;
  TempDir() {
    static std::atomic<int> n{0};
    dir = fs::temp_directory_path() / ("distill_jsonl_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = (dir / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
};

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// All records of a file: (line number, value).
std::vector<std::pair<int64_t, nlohmann::json>> read_all(JsonlReader& r) {
  std::vector<std::pair<int64_t, nlohmann::json>> out;
  nlohmann::json j;
  while (r.next(j)) out.emplace_back(r.line_number(), j);
  return out;
}

// The message of the distill::Error that reading the whole text throws ("" if none).
std::string read_error(const std::string& text, JsonlOptions opts = {}) {
  try {
    auto r = JsonlReader::from_memory(text, "t.jsonl", opts);
    read_all(r);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("jsonl: records, line numbers, CRLF, BOM, blank lines, no final newline") {
  const std::string text =
      "\xEF\xBB\xBF{\"a\": 1}\r\n"  // BOM + CRLF
      "\n"
      "   \t \r\n"  // whitespace-only
      "{\"a\": 2, \"s\": \"x\\ny\"}\n"
      "\r\n"
      "{\"a\": 3}";  // no final newline
  TempDir t;
  const std::string path = t.write("f.jsonl", text);
  for (int mode = 0; mode < 2; ++mode) {
    auto r = mode == 0 ? JsonlReader(path) : JsonlReader::from_memory(text, path);
    const auto recs = read_all(r);
    REQUIRE(recs.size() == 3);
    CHECK(recs[0].first == 1);
    CHECK(recs[0].second["a"] == 1);
    CHECK(recs[1].first == 4);
    CHECK(recs[1].second["s"] == "x\ny");
    CHECK(recs[2].first == 6);
    CHECK(recs[2].second["a"] == 3);
    CHECK(r.path() == path);
  }
  // Empty and blank-only inputs have no records.
  for (const char* s : {"", "\n", "\r\n\r\n", "\xEF\xBB\xBF", "  \n\t"}) {
    auto r = JsonlReader::from_memory(s);
    nlohmann::json j;
    CHECK_FALSE(r.next(j));
  }
}

TEST_CASE("jsonl: field accessors name the file, line and key") {
  const std::string text = "{\"q\": \"hi\", \"n\": 5, \"x\": 1.5, \"b\": true, \"big\": 18446744073709551615}\n";
  auto r = JsonlReader::from_memory(text, "d.jsonl");
  nlohmann::json j;
  REQUIRE(r.next(j));
  CHECK(r.string_field(j, "q") == "hi");
  CHECK(r.int_field(j, "n") == 5);
  CHECK(r.number_field(j, "x") == 1.5);
  CHECK(r.number_field(j, "n") == 5.0);
  CHECK(r.bool_field(j, "b"));
  CHECK_THROWS_WITH_AS(r.string_field(j, "answer"), "d.jsonl:1: missing field \"answer\"", Error);
  CHECK_THROWS_WITH_AS(r.string_field(j, "n"), "d.jsonl:1: field \"n\" must be a string, got an integer", Error);
  CHECK_THROWS_WITH_AS(r.int_field(j, "x"), "d.jsonl:1: field \"x\" must be an integer, got a number", Error);
  CHECK_THROWS_WITH_AS(r.int_field(j, "big"), "d.jsonl:1: field \"big\" is out of the int64 range", Error);
  CHECK_THROWS_WITH_AS(r.bool_field(j, "q"), "d.jsonl:1: field \"q\" must be a boolean, got a string", Error);
  CHECK_THROWS_WITH_AS(r.number_field(j, "q"), "d.jsonl:1: field \"q\" must be a number, got a string", Error);
}

TEST_CASE("jsonl: malformed input gives one clear error with file:line") {
  const std::string ok = "{\"a\": 1}\n";
  CHECK(read_error(ok + ok + "{\"a\": }\n").find("t.jsonl:3: invalid JSON at byte 7 of the line: ") == 0);
  CHECK(read_error(ok + "{\"a\": 1\n").find("t.jsonl:2: invalid JSON at byte") == 0);
  CHECK(read_error(ok + "{\"a\": 1} x\n").find("t.jsonl:2: invalid JSON") == 0);
  CHECK(read_error(ok + "nul\n").find("t.jsonl:2: invalid JSON") == 0);
  CHECK(read_error(ok + "{\"a\": 1e999}\n").find("t.jsonl:2: invalid JSON: number overflow parsing '1e999'") == 0);
  CHECK(read_error("{\"a\": 1" + std::string(70000, '0') + "}").find("t.jsonl:1: invalid JSON: number overflow") == 0);
  CHECK(read_error("{\"a\": 1" + std::string(70000, '0') + "}").size() < 600);
  CHECK(read_error("{\"a\": 123456789012345678901234567890}").empty());  // beyond uint64: nlohmann reads a double
  CHECK(read_error("\n\n[1, 2]\n") == "t.jsonl:3: expected a JSON object, got an array");
  CHECK(read_error("\"s\"\n") == "t.jsonl:1: expected a JSON object, got a string");
  CHECK(read_error("7") == "t.jsonl:1: expected a JSON object, got an integer");
  CHECK(read_error("null\r\n") == "t.jsonl:1: expected a JSON object, got null");
  // Ill-formed UTF-8 inside a string: nlohmann rejects it; the message says so and stays printable.
  const std::string bad_utf8 = ok + "{\"a\": \"x\xff\xfe\"}\n";
  const std::string e = read_error(bad_utf8);
  CHECK(e.find("t.jsonl:2: invalid UTF-8 in the JSON text at byte") == 0);
  CHECK(e.find('\xff') == std::string::npos);
  CHECK(read_error("{\"a\": \"\xed\xa0\x80\"}").find("t.jsonl:1: invalid UTF-8") == 0);  // a surrogate
  // A BOM is skipped only at the very start of the input.
  CHECK(read_error(ok + "\xEF\xBB\xBF" + ok).empty());  // nlohmann itself skips a BOM at a value's start
  CHECK(read_error(ok + "{\"a\": 1}\xEF\xBB\xBF\n").find("t.jsonl:2: invalid JSON") == 0);
  // Objects are optional.
  JsonlOptions any;
  any.require_object = false;
  CHECK(read_error("[1]\n2\n\"x\"\n", any).empty());
  // Nesting limit.
  JsonlOptions shallow;
  shallow.max_depth = 4;
  CHECK(read_error("{\"a\": [[[1]]]}\n", shallow).empty());
  CHECK(read_error(ok + "{\"a\": [[[[1]]]]}\n", shallow) == "t.jsonl:2: JSON nests deeper than 4 levels");
  CHECK(read_error("{\"a\": \"[[[[[[[[\"}\n", shallow).empty());  // brackets inside strings do not count
  CHECK(read_error(std::string(100000, '[')).find("t.jsonl:1: JSON nests deeper than 512 levels") == 0);
  // Over-long lines, with and without a final newline, including CR.
  JsonlOptions small;
  small.max_line_bytes = 16;
  CHECK(read_error("{\"a\": \"0123456\"}\n", small).empty());  // exactly 16 bytes
  CHECK(read_error(ok + "{\"a\": \"01234567\"}\n", small) == "t.jsonl:2: line is longer than the limit of 16 bytes");
  CHECK(read_error(ok + "{\"a\": \"01234567\"}", small) == "t.jsonl:2: line is longer than the limit of 16 bytes");
  CHECK(read_error("{\"a\": \"0123456\"}\r\n", small) == "t.jsonl:1: line is longer than the limit of 16 bytes");
  // Huge invalid lines give short messages.
  CHECK(read_error("{\"a\": \"" + std::string(1 << 20, 'x')).size() < 600);
}

TEST_CASE("jsonl: files — missing, directory, long lines across refills, many lines") {
  TempDir t;
  CHECK_THROWS_WITH_AS(JsonlReader((t.dir / "nope.jsonl").string()), doctest::Contains("nope.jsonl: cannot open"),
                       Error);
  CHECK_THROWS_WITH_AS(JsonlReader(t.dir.string()), doctest::Contains("is a directory"), Error);

  // Lines of 3 MiB (more than the initial 1 MiB buffer) between short ones.
  std::string text;
  const std::string big(3 << 20, 'q');
  for (int i = 0; i < 3; ++i) text += "{\"i\": " + std::to_string(i) + ", \"s\": \"" + big + "\"}\n{\"i\": -1}\n";
  const std::string p = t.write("big.jsonl", text);
  {
    JsonlReader r(p);
    const auto recs = read_all(r);
    REQUIRE(recs.size() == 6);
    CHECK(recs[4].second["i"] == 2);
    CHECK(recs[4].second["s"].get_ref<const std::string&>() == big);
    CHECK(recs[5].first == 6);
  }
  {
    JsonlOptions o;
    o.max_line_bytes = 1 << 20;
    JsonlReader r(p, o.max_line_bytes);
    nlohmann::json j;
    CHECK_THROWS_WITH_AS(r.next(j), doctest::Contains("big.jsonl:1: line is longer than the limit of 1048576 bytes"),
                         Error);
  }
  // 200k short lines: every chunk boundary falls somewhere inside a line.
  std::string many;
  for (int i = 0; i < 200000; ++i) many += "{\"i\":" + std::to_string(i) + "}" + (i % 3 == 0 ? "\r\n" : "\n");
  const std::string pm = t.write("many.jsonl", many);
  int64_t count = 0;
  bool in_order = true;
  for_each_jsonl(pm, [&](nlohmann::json& j, const JsonlReader& r) {
    in_order = in_order && j["i"] == count && r.line_number() == count + 1;
    ++count;
  });
  CHECK(count == 200000);
  CHECK(in_order);
  int64_t count2 = 0;
  for_each_jsonl(pm, [&](nlohmann::json&) { ++count2; });
  CHECK(count2 == 200000);
}

TEST_CASE("jsonl: reads a pipe") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::thread writer([&] {
    std::string s;
    for (int i = 0; i < 5000; ++i) s += "{\"i\": " + std::to_string(i) + "}\n";
    size_t done = 0;
    while (done < s.size()) {
      const ssize_t n = ::write(fds[1], s.data() + done, std::min<size_t>(s.size() - done, 777));
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::close(fds[1]);
  });
  int64_t count = 0;
  {
    JsonlReader r("/proc/self/fd/" + std::to_string(fds[0]));
    nlohmann::json j;
    while (r.next(j)) CHECK(j["i"] == count++);
  }
  writer.join();
  ::close(fds[0]);
  CHECK(count == 5000);
}

TEST_CASE("jsonl: writer + repair_jsonl_tail resume without losing or duplicating records") {
  TempDir t;
  const std::string p = (t.dir / "out.jsonl").string();
  {
    JsonlWriter w(p, /*append=*/false);
    for (int i = 0; i < 50; ++i) w.write({{"i", i}, {"text", "line\n" + std::to_string(i) + " \xC3\xA9"}});
    w.flush_sync();
    CHECK(w.records_written() == 50);
    w.close();
  }
  const std::string complete = slurp(p);
  CHECK(std::count(complete.begin(), complete.end(), '\n') == 50);
  CHECK(repair_jsonl_tail(p) == 50);  // nothing to repair
  CHECK(slurp(p) == complete);

  // A killed writer left half a record.
  { std::ofstream(p, std::ios::binary | std::ios::app) << "{\"i\": 50, \"text\": \"li"; }
  CHECK_THROWS_WITH_AS(JsonlWriter(p, true), doctest::Contains("ends with a partial line"), Error);
  CHECK(repair_jsonl_tail(p) == 50);
  CHECK(slurp(p) == complete);
  {
    JsonlWriter w(p, /*append=*/true);
    w.write({{"i", 50}, {"text", "resumed"}});
  }
  int64_t n = 0;
  for_each_jsonl(p, [&](nlohmann::json& j) { CHECK(j["i"] == n++); });
  CHECK(n == 51);

  // Truncating (append=false) starts over.
  {
    JsonlWriter w(p, false);
    w.write({{"i", 0}});
  }
  CHECK(slurp(p) == "{\"i\":0}\n");

  // Only a partial line: everything goes.
  const std::string p2 = t.write("partial.jsonl", "{\"i\": 0");
  CHECK(repair_jsonl_tail(p2) == 0);
  CHECK(slurp(p2).empty());
  // Blank lines, CRLF and a BOM are not records.
  const std::string p3 = t.write("mixed.jsonl", "\xEF\xBB\xBF{\"a\":1}\r\n\n  \r\n{\"a\":2}\n{\"a\"");
  CHECK(repair_jsonl_tail(p3) == 2);
  CHECK(slurp(p3) == "\xEF\xBB\xBF{\"a\":1}\r\n\n  \r\n{\"a\":2}\n");
  // A complete last line that is not JSON is not a torn write: refuse to guess.
  const std::string p4 = t.write("damaged.jsonl", "{\"a\":1}\n{\"a\":\n");
  CHECK_THROWS_WITH_AS(repair_jsonl_tail(p4),
                       doctest::Contains("damaged.jsonl:2: the last complete line is not valid JSON"), Error);
  CHECK_THROWS_WITH_AS(repair_jsonl_tail((t.dir / "missing.jsonl").string()), doctest::Contains("cannot open"), Error);
  // An empty file is fine.
  CHECK(repair_jsonl_tail(t.write("empty.jsonl", "")) == 0);
}

TEST_CASE("jsonl: writer refuses ill-formed UTF-8 and reports the record") {
  TempDir t;
  JsonlWriter w((t.dir / "w.jsonl").string(), false);
  w.write({{"ok", "fine"}});
  CHECK_THROWS_WITH_AS(w.write({{"bad", std::string("x\xff")}}), doctest::Contains("w.jsonl: cannot write record 2"),
                       Error);
  w.close();
  CHECK(slurp((t.dir / "w.jsonl").string()) == "{\"ok\":\"fine\"}\n");
  CHECK_THROWS_WITH_AS(w.write({{"a", 1}}), doctest::Contains("writer is closed"), Error);
  CHECK_THROWS_WITH_AS(JsonlWriter((t.dir / "no" / "such" / "dir.jsonl").string(), false),
                       doctest::Contains("cannot open for writing"), Error);
}

TEST_CASE("jsonl: an unlimited line length (SIZE_MAX) grows the buffer without wrapping") {
  TempDir t;
  const std::string big(5000, 'x');
  const std::string p = t.write("u.jsonl", "{\"s\": \"" + big + "\"}\n{\"s\": \"y\"}\n");
  for (size_t limit : {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 2}) {
    JsonlReader r(p, limit);
    nlohmann::json j;
    REQUIRE(r.next(j));
    CHECK(j["s"].get_ref<const std::string&>() == big);
    REQUIRE(r.next(j));
    CHECK(j["s"] == "y");
    CHECK_FALSE(r.next(j));
  }
}
