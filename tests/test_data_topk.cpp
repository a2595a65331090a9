// Offline teacher logits (data/topk_logits.hpp): records written and read back bit for bit; the top-k and the tail
// mass against an independent double-precision log-softmax; a file cut at any byte is a clear "truncated" error
// (or, cut at a record boundary, a shorter valid file); a torn tail is repaired and appending continues; every
// malformed field is an error naming the file and the byte.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "distill/data/topk_logits.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::data;
namespace fs = std::filesystem;

namespace {

std::vector<float> random_logits(int64_t V, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(V));
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = static_cast<float>(static_cast<double>(s % 100000) / 100000.0 * 12.0 - 6.0);
  }
  return v;
}

TopkRecord make_record(const std::string& id, int64_t positions, int64_t k, int64_t V, uint64_t seed) {
  TopkRecord r;
  r.id = id;
  r.k = k;
  for (int64_t p = 0; p < positions; ++p) {
    const auto l = random_logits(V, seed * 1000 + static_cast<uint64_t>(p));
    r.append_row(l.data(), V);
    r.tokens.push_back(static_cast<int32_t>((seed * 7 + static_cast<uint64_t>(p) * 3) % static_cast<uint64_t>(V)));
  }
  return r;
}

std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::string& b) { std::ofstream(path, std::ios::binary) << b; }

}  // namespace

TEST_CASE("top-k rows: the k largest log-probs, highest first, and the log of the mass left") {
  const int64_t V = 300, K = 10;
  const auto l = random_logits(V, 7);
  TopkRecord r;
  r.k = K;
  r.append_row(l.data(), V);
  double m = -INFINITY, z = 0;
  for (float x : l) m = std::max(m, static_cast<double>(x));
  for (float x : l) z += std::exp(x - m);
  std::vector<int> order(V);
  for (int i = 0; i < V; ++i) order[static_cast<size_t>(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  double kept = 0;
  for (int64_t j = 0; j < K; ++j) {
    const int id = order[static_cast<size_t>(j)];
    CHECK(r.ids[static_cast<size_t>(j)] == id);
    const double lp = l[id] - m - std::log(z);
    CHECK(r.logprobs[static_cast<size_t>(j)] == doctest::Approx(lp).epsilon(1e-6));
    kept += std::exp(lp);
  }
  CHECK(r.tail[0] == doctest::Approx(std::log(1 - kept)).epsilon(1e-5));
  // A vocabulary smaller than K: padded with (-1, -inf), nothing left in the tail.
  TopkRecord small;
  small.k = 4;
  const float three[3] = {1.0f, 2.0f, 0.5f};
  small.append_row(three, 3);
  CHECK(small.ids == std::vector<int32_t>{1, 0, 2, -1});
  CHECK(std::isinf(small.logprobs[3]));
  CHECK(std::isinf(small.tail[0]));
}

TEST_CASE("written and read back exactly; cut at any byte: truncated, or a shorter valid file") {
  test::TempDir dir("topk");
  const std::string path = dir / "traces.topk.bin";
  const int64_t K = 5, V = 64;
  std::vector<TopkRecord> recs = {make_record("0", 3, K, V, 1), make_record("17", 1, K, V, 2),
                                  make_record("5", 4, K, V, 3)};
  {
    TopkWriter w(path, K, V);
    for (const auto& r : recs) w.append(r);
  }
  {
    const TopkReader r(path);
    CHECK(r.k() == K);
    CHECK(r.vocab() == V);
    CHECK(r.size() == 3);
    for (const auto& want : recs) {
      const TopkRecord got = r.get(want.id);
      CHECK(got.positions == want.positions);
      CHECK(got.ids == want.ids);
      CHECK(std::memcmp(got.logprobs.data(), want.logprobs.data(), want.logprobs.size() * 4) == 0);
      CHECK(std::memcmp(got.tail.data(), want.tail.data(), want.tail.size() * 4) == 0);
      CHECK(got.tokens == want.tokens);
    }
    CHECK_THROWS_WITH_AS(r.get("99"), doctest::Contains("no teacher logits for trace \"99\""), Error);
  }
  const std::string full = bytes_of(path);
  std::vector<size_t> boundaries = {kTopkHeaderBytes};
  for (const auto& r : recs) boundaries.push_back(boundaries.back() + serialize_topk_record(r, K).size());
  REQUIRE(boundaries.back() == full.size());
  const std::string cut = dir / "cut.bin";
  for (size_t n = 0; n < full.size(); ++n) {
    CAPTURE(n);
    write_bytes(cut, full.substr(0, n));
    const auto b = std::find(boundaries.begin(), boundaries.end(), n);
    if (b != boundaries.end()) {
      CHECK(TopkReader(cut).size() == static_cast<size_t>(b - boundaries.begin()));
    } else {
      CHECK_THROWS_WITH_AS(TopkReader{cut}, doctest::Contains("truncated"), Error);
    }
  }
}

TEST_CASE("a torn tail is cut and appending continues; a different K is refused") {
  test::TempDir dir("topk_resume");
  const std::string path = dir / "t.topk.bin";
  {
    TopkWriter w(path, 4, 50);
    w.append(make_record("a", 2, 4, 50, 1));
    w.append(make_record("b", 2, 4, 50, 2));
  }
  const std::string full = bytes_of(path);
  write_bytes(path, full.substr(0, full.size() - 7));  // killed mid-record
  CHECK(repair_topk_tail(path) ==
        full.size() - 7 - (kTopkHeaderBytes + serialize_topk_record(make_record("a", 2, 4, 50, 1), 4).size()));
  {
    TopkWriter w(path, 4, 50);  // resumes: the torn "b" is gone, "c" follows "a"
    w.append(make_record("c", 1, 4, 50, 3));
  }
  const TopkReader r(path);
  CHECK(r.ids() == std::vector<std::string>{"a", "c"});
  CHECK(repair_topk_tail(dir / "missing.bin") == 0);
  // A resumed generate keeps only the traces its JSONL has: "c" was never written there, so it goes.
  const std::unordered_set<std::string> done{"a"};
  { TopkWriter w(path, 4, 50, &done); }
  CHECK(TopkReader(path).ids() == std::vector<std::string>{"a"});
  CHECK(TopkReader(path).get("a").ids == make_record("a", 2, 4, 50, 1).ids);
  CHECK_THROWS_WITH_AS(TopkWriter(path, 8, 50), doctest::Contains("holds K = 4"), Error);
}

TEST_CASE("malformed top-k files: every field is checked, with the byte offset") {
  test::TempDir dir("topk_bad");
  const std::string path = dir / "x.bin";
  std::string good = detail_topk::header(2, 10) + serialize_topk_record(make_record("r", 1, 2, 10, 4), 2);
  auto expect = [&](std::string b, const char* what) {
    CAPTURE(what);
    write_bytes(path, b);
    CHECK_THROWS_WITH_AS(TopkReader{path}, doctest::Contains(what), Error);
  };
  auto corrupt = [&](size_t at, char v, const char* what) {  // one byte of the good file changed
    std::string b = good;
    b[at] = v;
    expect(b, what);
  };
  corrupt(0, 'X', "no DSTLTOPK magic");
  corrupt(8, 3, "version 3");
  corrupt(8, 1, "version 1 files lack the emitted tokens");
  corrupt(12, 0, "K = 0");
  corrupt(24, 0, "byte 24: record 1: bad record magic");
  corrupt(36, 1, "reserved field is not 0");
  expect(good + serialize_topk_record(make_record("r", 1, 2, 10, 5), 2), "appears twice");
  // A token id outside the vocabulary and a positive log-prob are found when the record is read.
  std::string b = good;
  b[24 + 16 + 1] = 20;  // first token id := 20 >= vocab 10
  write_bytes(path, b);
  CHECK_THROWS_WITH_AS(TopkReader(path).get("r"), doctest::Contains("outside the vocabulary"), Error);
  b = good;
  const float pos = 0.5f;
  std::memcpy(b.data() + 24 + 16 + 1 + 2 * 4, &pos, 4);
  write_bytes(path, b);
  CHECK_THROWS_WITH_AS(TopkReader(path).get("r"), doctest::Contains("is not <= 0"), Error);
  b = good;  // the emitted token (the record's last 4 bytes) outside the vocabulary
  b[b.size() - 4] = 10;
  write_bytes(path, b);
  CHECK_THROWS_WITH_AS(TopkReader(path).get("r"), doctest::Contains("emitted token 10"), Error);
  // A record whose arrays disagree is refused by the writer's serializer.
  TopkRecord r = make_record("q", 2, 2, 10, 6);
  r.tokens.pop_back();
  CHECK_THROWS_WITH_AS(serialize_topk_record(r, 2), doctest::Contains("arrays do not match"), Error);
}

TEST_CASE("a file written from the format description alone (Python struct, the fuzz seed) reads") {
  const TopkReader r(std::string(DISTILL_SOURCE_DIR) + "/fuzz/corpus/topk_logits/two_records.bin");
  CHECK(r.k() == 3);
  CHECK(r.vocab() == 20);
  CHECK(r.ids() == std::vector<std::string>{"0", "12"});
  const TopkRecord a = r.get("0");
  CHECK(a.positions == 2);
  for (int64_t p = 0; p < 2; ++p) {  // each row: sorted, and probabilities + tail sum to 1
    double mass = std::exp(static_cast<double>(a.tail[static_cast<size_t>(p)]));
    for (int64_t j = 0; j < 3; ++j) {
      mass += std::exp(static_cast<double>(a.logprobs[static_cast<size_t>(p * 3 + j)]));
      if (j) CHECK(a.logprobs[static_cast<size_t>(p * 3 + j)] <= a.logprobs[static_cast<size_t>(p * 3 + j - 1)]);
    }
    CHECK(mass == doctest::Approx(1.0).epsilon(1e-5));
  }
}
