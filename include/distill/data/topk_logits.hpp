// Offline teacher logits (issue 10): per generated position, the teacher's top-K log-probabilities and the log of
// the probability mass left outside them, stored beside the traces JSONL so that logit distillation can train
// without the teacher in memory (`gsm8k_distill generate --save-logits K` writes it, `train --kd ...` reads it).
//
// File layout (little-endian), "<traces stem>.topk.bin":
//   header   8 bytes "DSTLTOPK", u32 version (2), u32 K, u32 vocab (the teacher's logits width), u32 reserved (0)
//   records  appended as traces finish, each:
//              u32 magic 0x314B5054 ("TPK1"), u32 id_len, u32 positions, u32 reserved (0),
//              id bytes [id_len] (the trace record's "id"),
//              i32 token ids [positions * K]  (row-major; each row sorted by log-prob, highest first),
//              f32 log-probs [positions * K]  (log_softmax of the logits at T = 1),
//              f32 tail      [positions]      (log(1 - sum of the row's K probabilities); -inf when nothing is left)
//              i32 tokens    [positions]      (the token the teacher emitted at each position: the rows' text, which
//                                                training aligns with the student's tokens)
// Version 1 (no tokens) is refused with a message: regenerate with --save-logits.
// A record is complete when all its bytes are present. A writer killed mid-record leaves a torn tail, which
// repair_topk_tail() cuts (the trace's JSONL line is written after its record, so a resumed generate redoes that
// trace). The reader maps the file, indexes the records by id, and reports any malformed byte range as a
// distill::Error naming the file, the byte offset and the record; a cut-off file is "truncated".
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "distill/core/error.hpp"
#include "distill/io/file.hpp"

namespace distill::data {

inline constexpr char kTopkMagic[8] = {'D', 'S', 'T', 'L', 'T', 'O', 'P', 'K'};
inline constexpr uint32_t kTopkVersion = 2;
inline constexpr uint32_t kTopkRecordMagic = 0x314B5054u;  // "TPK1"
inline constexpr size_t kTopkHeaderBytes = 24, kTopkRecordHeaderBytes = 16;

// One trace's teacher distribution: rows of K (id, log-prob) pairs plus the tail mass.
struct TopkRecord {
  std::string id;
  int64_t positions = 0, k = 0;
  std::vector<int32_t> ids;     // [positions * k]
  std::vector<float> logprobs;  // [positions * k]
  std::vector<float> tail;      // [positions]
  std::vector<int32_t> tokens;  // [positions]: the token emitted at each position (set by the caller)

  // The top-k of one row of logits (any length V >= k): log_softmax at T = 1, highest first (ties: lower id first).
  void append_row(const float* logits, int64_t V) {
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(logits[v]));
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(logits[v]) - m);
    const double lz = m + std::log(z);
    std::vector<int32_t> idx(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) idx[static_cast<size_t>(v)] = static_cast<int32_t>(v);
    const int64_t kk = std::min(k, V);
    std::partial_sort(idx.begin(), idx.begin() + kk, idx.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    double kept = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (j < kk) {
        const double lp = static_cast<double>(logits[idx[static_cast<size_t>(j)]]) - lz;
        ids.push_back(idx[static_cast<size_t>(j)]);
        logprobs.push_back(static_cast<float>(lp));
        kept += std::exp(lp);
      } else {  // V < K: pad with impossible entries
        ids.push_back(-1);
        logprobs.push_back(-std::numeric_limits<float>::infinity());
      }
    }
    const double rest = 1.0 - kept;
    tail.push_back(rest > 1e-12 ? static_cast<float>(std::log(rest)) : -std::numeric_limits<float>::infinity());
    ++positions;
  }
};

namespace detail_topk {

inline void put_u32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
inline uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}
template <class T>
void put_array(std::string& s, const std::vector<T>& v) {
  const size_t at = s.size();
  s.resize(at + v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(s.data() + at, v.data(), v.size() * sizeof(T));
}

inline std::string header(uint32_t k, uint32_t vocab) {
  std::string s(kTopkMagic, 8);
  put_u32(s, kTopkVersion);
  put_u32(s, k);
  put_u32(s, vocab);
  put_u32(s, 0);
  return s;
}

}  // namespace detail_topk

// The bytes of one record (what the writer appends).
inline std::string serialize_topk_record(const TopkRecord& r, uint32_t k) {
  DISTILL_CHECK(static_cast<uint32_t>(r.k) == k, "top-k record ", r.id, ": k is ", r.k, ", the file's is ", k);
  DISTILL_CHECK(r.ids.size() == static_cast<size_t>(r.positions * r.k) && r.logprobs.size() == r.ids.size() &&
                    r.tail.size() == static_cast<size_t>(r.positions) &&
                    r.tokens.size() == static_cast<size_t>(r.positions),
                "top-k record ", r.id, ": arrays do not match ", r.positions, " positions x ", r.k, " (",
                r.tokens.size(), " emitted tokens)");
  std::string s;
  detail_topk::put_u32(s, kTopkRecordMagic);
  detail_topk::put_u32(s, static_cast<uint32_t>(r.id.size()));
  detail_topk::put_u32(s, static_cast<uint32_t>(r.positions));
  detail_topk::put_u32(s, 0);
  s += r.id;
  detail_topk::put_array(s, r.ids);
  detail_topk::put_array(s, r.logprobs);
  detail_topk::put_array(s, r.tail);
  detail_topk::put_array(s, r.tokens);
  return s;
}

// Parses a whole top-k file held in memory: the header and every record's extent, checked. `where` names the
// file in errors. Returns (K, vocab) and fills `extents` with (id, byte offset of the record, positions).
struct TopkIndexEntry {
  size_t offset = 0;  // of the record header
  size_t bytes = 0;   // the whole record, header included
  int64_t positions = 0;
};
struct TopkIndex {
  uint32_t k = 0, vocab = 0;
  std::map<std::string, TopkIndexEntry, std::less<>> records;
  size_t complete_bytes = 0;  // the header plus every complete record
};

inline TopkIndex index_topk(std::span<const uint8_t> b, const std::string& where, bool allow_torn_tail = false) {
  using detail_topk::get_u32;
  auto fail = [&](size_t at, const std::string& what) {
    throw Error(where + ": byte " + std::to_string(at) + ": " + what);
  };
  if (b.size() < kTopkHeaderBytes) fail(0, "truncated: " + std::to_string(b.size()) + " bytes, a header needs 24");
  if (std::memcmp(b.data(), kTopkMagic, 8) != 0) fail(0, "not a Distill top-k logits file (no DSTLTOPK magic)");
  TopkIndex ix;
  const uint32_t version = get_u32(b.data() + 8);
  if (version != kTopkVersion)
    fail(8, "version " + std::to_string(version) + " (this build reads version 2" +
                (version == 1 ? "; version 1 files lack the emitted tokens: rerun generate --save-logits)" : ")"));
  ix.k = get_u32(b.data() + 12);
  ix.vocab = get_u32(b.data() + 16);
  if (ix.k == 0 || ix.k > 4096) fail(12, "K = " + std::to_string(ix.k) + " (expected 1..4096)");
  if (ix.vocab == 0) fail(16, "vocab = 0");
  size_t at = kTopkHeaderBytes;
  int64_t n = 0;
  while (at < b.size()) {
    ++n;
    const std::string rec = "record " + std::to_string(n);
    auto torn = [&](const std::string& what) {
      if (allow_torn_tail) return true;
      fail(at, "truncated inside " + rec + " (" + what + "); the writer was stopped: rerun generate to complete it");
      return false;
    };
    if (b.size() - at < kTopkRecordHeaderBytes) {
      if (torn("its header")) break;
    }
    if (get_u32(b.data() + at) != kTopkRecordMagic) fail(at, rec + ": bad record magic");
    const uint64_t id_len = get_u32(b.data() + at + 4), positions = get_u32(b.data() + at + 8);
    if (get_u32(b.data() + at + 12) != 0) fail(at + 12, rec + ": reserved field is not 0");
    if (id_len == 0 || id_len > 4096) fail(at + 4, rec + ": id length " + std::to_string(id_len));
    const uint64_t body = id_len + positions * ix.k * 8 + positions * 8;
    if (b.size() - at - kTopkRecordHeaderBytes < body) {
      if (torn(std::to_string(body) + " bytes of body declared")) break;
    }
    const std::string id(reinterpret_cast<const char*>(b.data() + at + kTopkRecordHeaderBytes), id_len);
    if (!ix.records.emplace(id, TopkIndexEntry{at, kTopkRecordHeaderBytes + body, static_cast<int64_t>(positions)})
             .second)
      fail(at, rec + ": id \"" + id + "\" appears twice");
    at += kTopkRecordHeaderBytes + body;
    ix.complete_bytes = at;
  }
  if (ix.complete_bytes == 0) ix.complete_bytes = kTopkHeaderBytes;
  return ix;
}

// Decodes the record at an index entry (ids checked against the vocabulary, log-probs <= 0 or -inf).
inline TopkRecord read_topk_record(std::span<const uint8_t> b, const TopkIndex& ix, const std::string& id,
                                   const TopkIndexEntry& e, const std::string& where) {
  TopkRecord r;
  r.id = id;
  r.positions = e.positions;
  r.k = ix.k;
  const size_t n = static_cast<size_t>(e.positions) * ix.k;
  const uint8_t* p = b.data() + e.offset + kTopkRecordHeaderBytes + id.size();
  r.ids.resize(n);
  r.logprobs.resize(n);
  r.tail.resize(static_cast<size_t>(e.positions));
  r.tokens.resize(static_cast<size_t>(e.positions));
  if (n) std::memcpy(r.ids.data(), p, n * 4);
  if (n) std::memcpy(r.logprobs.data(), p + n * 4, n * 4);
  if (e.positions) std::memcpy(r.tail.data(), p + n * 8, static_cast<size_t>(e.positions) * 4);
  if (e.positions)
    std::memcpy(r.tokens.data(), p + n * 8 + static_cast<size_t>(e.positions) * 4,
                static_cast<size_t>(e.positions) * 4);
  for (const int32_t t : r.tokens)
    if (t < 0 || static_cast<uint32_t>(t) >= ix.vocab)
      throw Error(where + ": record \"" + id + "\": emitted token " + std::to_string(t) +
                  " outside the vocabulary of " + std::to_string(ix.vocab));
  for (size_t i = 0; i < n; ++i) {
    const bool pad = r.ids[i] == -1 && std::isinf(r.logprobs[i]) && r.logprobs[i] < 0;
    if (!pad && (r.ids[i] < 0 || static_cast<uint32_t>(r.ids[i]) >= ix.vocab))
      throw Error(where + ": record \"" + id + "\": token id " + std::to_string(r.ids[i]) +
                  " outside the vocabulary of " + std::to_string(ix.vocab));
    if (!pad && !(r.logprobs[i] <= 0.0f))
      throw Error(where + ": record \"" + id + "\": log-prob " + std::to_string(r.logprobs[i]) + " is not <= 0");
  }
  for (float t : r.tail)
    if (!(t <= 0.0f))
      throw Error(where + ": record \"" + id + "\": tail log-mass " + std::to_string(t) + " is not <= 0");
  return r;
}

// Reads a top-k file (mapped): records by id.
class TopkReader {
 public:
  explicit TopkReader(const std::string& path)
      : f_(std::make_unique<io::MappedFile>(path)), ix_(index_topk(f_->bytes(), path)) {}
  uint32_t k() const { return ix_.k; }
  uint32_t vocab() const { return ix_.vocab; }
  size_t size() const { return ix_.records.size(); }
  bool contains(std::string_view id) const { return ix_.records.find(id) != ix_.records.end(); }
  TopkRecord get(const std::string& id) const {
    const auto it = ix_.records.find(id);
    if (it == ix_.records.end()) throw Error(f_->path() + ": no teacher logits for trace \"" + id + "\"");
    return read_topk_record(f_->bytes(), ix_, id, it->second, f_->path());
  }
  std::vector<std::string> ids() const {
    std::vector<std::string> v;
    for (const auto& [id, e] : ix_.records) v.push_back(id);
    return v;
  }

 private:
  std::unique_ptr<io::MappedFile> f_;
  TopkIndex ix_;
};

// Cuts a torn last record (a writer killed mid-record) so that appending can continue; returns the number of
// bytes removed. A missing file is left alone (0).
inline size_t repair_topk_tail(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return 0;
  size_t keep = 0, size = 0;
  {
    io::MappedFile f(path);
    size = f.size();
    if (size < kTopkHeaderBytes) {
      keep = 0;
    } else {
      keep = index_topk(f.bytes(), path, /*allow_torn_tail=*/true).complete_bytes;
    }
  }
  if (keep < size) std::filesystem::resize_file(path, keep);
  return size - keep;
}

// Appends records to a top-k file (creating it with its header); each append is one write + flush.
class TopkWriter {
 public:
  // `keep` (optional): the ids whose records an existing file may keep -- a resumed generate passes the traces
  // already in its JSONL; records of other ids (a trace whose JSONL line was never written) are dropped, since
  // that trace is generated again.
  TopkWriter(const std::string& path, uint32_t k, uint32_t vocab, const std::unordered_set<std::string>* keep = nullptr)
      : path_(path), k_(k) {
    repair_topk_tail(path);
    std::error_code ec;
    const bool fresh = !std::filesystem::exists(path, ec) || std::filesystem::file_size(path, ec) == 0;
    if (!fresh) {
      std::string kept;
      bool drop = false;
      {
        const io::MappedFile f(path);
        const TopkIndex ix = index_topk(f.bytes(), path);
        DISTILL_CHECK(ix.k == k && ix.vocab == vocab, path, ": holds K = ", ix.k, " over ", ix.vocab,
                      " tokens; this run asks for K = ", k, " over ", vocab, " (use another --out, or the same K)");
        if (keep) {
          kept = detail_topk::header(k, vocab);
          std::vector<std::pair<size_t, size_t>> spans;  // kept records, in file order
          for (const auto& [id, e] : ix.records) {
            if (keep->count(id))
              spans.emplace_back(e.offset, e.bytes);
            else
              drop = true;
          }
          std::sort(spans.begin(), spans.end());
          for (const auto& [off, len] : spans) kept.append(reinterpret_cast<const char*>(f.data() + off), len);
        }
      }
      if (drop) io::atomic_write(path, std::string_view(kept));
    }
    f_ = std::fopen(path.c_str(), "ab");
    if (!f_) throw Error(path + ": cannot open for appending");
    if (fresh) write(detail_topk::header(k, vocab));
  }
  ~TopkWriter() {
    if (f_) std::fclose(f_);
  }
  TopkWriter(const TopkWriter&) = delete;
  TopkWriter& operator=(const TopkWriter&) = delete;
  void append(const TopkRecord& r) { write(serialize_topk_record(r, k_)); }

 private:
  void write(const std::string& s) {
    if (std::fwrite(s.data(), 1, s.size(), f_) != s.size() || std::fflush(f_) != 0)
      throw Error(path_ + ": write failed");
  }
  std::string path_;
  uint32_t k_;
  std::FILE* f_ = nullptr;
};

}  // namespace distill::data
