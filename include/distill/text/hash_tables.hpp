// Hash tables of the tokenizer, built once and then read from many threads: the BPE merge table (pair of ids
// -> rank and merged id), a string -> id table over one byte blob (vocabularies), and the bounded per-thread
// cache of encoded words.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/core/error.hpp"

namespace distill::text {

namespace detail {

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 29;
  }
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return h | 1;  // 0 marks an empty slot
}

// Pair of symbol ids -> (rank, merged id): open addressing, linear probing, built once. Key and value
// share a 16-byte slot so a lookup touches one cache line.
class MergeTable {
 public:
  void build(const std::vector<std::pair<uint64_t, std::pair<uint32_t, int32_t>>>& entries) {
    size_t cap = 16;
    while (cap < entries.size() * 2 + 1) cap <<= 1;
    mask_ = cap - 1;
    slots_.assign(cap, Slot{});
    for (const auto& [k, v] : entries) {
      size_t i = slot(k);
      while (slots_[i].key != kEmpty && slots_[i].key != k) i = (i + 1) & mask_;
      slots_[i] = {k, v.first, v.second};  // a repeated pair keeps the later rank, like model.rs's HashMap
    }
  }
  // rank and merged id of (a, b), or false.
  bool find(int32_t a, int32_t b, uint32_t& rank, int32_t& id) const {
    if (slots_.empty()) return false;
    const uint64_t k = key(a, b);
    size_t i = slot(k);
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == k) {
        rank = s.rank;
        id = s.id;
        return true;
      }
      if (s.key == kEmpty) return false;
      i = (i + 1) & mask_;
    }
  }
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    uint32_t rank = 0;
    int32_t id = 0;
  };
  size_t slot(uint64_t k) const { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 24) & mask_; }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// String -> int32 map over one byte blob (token vocabularies): open addressing with a hash tag per slot.
class StringTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2 + 1) cap <<= 1;
    rehash(cap);
    offs_.reserve(n + 1);
    vals_.reserve(n);
  }
  size_t size() const { return vals_.size(); }
  // Inserts or overwrites; returns false when the key was already present.
  bool set(std::string_view k, int32_t v) {
    if ((vals_.size() + 1) * 2 > slots_.size()) rehash(std::max<size_t>(16, slots_.size() * 2));
    const uint64_t h = hash_bytes(k.data(), k.size());
    size_t i = static_cast<size_t>(h) & mask_;
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    while (slots_[i].idx != 0) {
      const uint32_t e = slots_[i].idx - 1;
      if (slots_[i].tag == tag && key(e) == k) {
        vals_[e] = v;
        return false;
      }
      i = (i + 1) & mask_;
    }
    if (offs_.empty()) offs_.push_back(0);
    if (blob_.size() + k.size() >= UINT32_MAX) throw Error("string table larger than 4 GiB");
    blob_.append(k);
    offs_.push_back(static_cast<uint32_t>(blob_.size()));
    vals_.push_back(v);
    slots_[i] = {tag, static_cast<uint32_t>(vals_.size())};
    return true;
  }
  const int32_t* find(std::string_view k) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = hash_bytes(k.data(), k.size());
    size_t i = static_cast<size_t>(h) & mask_;
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    while (slots_[i].idx != 0) {
      const uint32_t e = slots_[i].idx - 1;
      if (slots_[i].tag == tag && key(e) == k) return &vals_[e];
      i = (i + 1) & mask_;
    }
    return nullptr;
  }
  std::string_view key(size_t e) const { return std::string_view(blob_).substr(offs_[e], offs_[e + 1] - offs_[e]); }
  int32_t value(size_t e) const { return vals_[e]; }

 private:
  struct Slot {
    uint32_t tag = 0, idx = 0;  // idx = entry + 1, 0 = empty
  };
  void rehash(size_t cap) {
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (size_t e = 0; e < vals_.size(); ++e) {
      const std::string_view k = key(e);
      const uint64_t h = hash_bytes(k.data(), k.size());
      size_t i = static_cast<size_t>(h) & mask_;
      while (slots_[i].idx != 0) i = (i + 1) & mask_;
      slots_[i] = {static_cast<uint32_t>(h >> 32), static_cast<uint32_t>(e + 1)};
    }
  }
  std::string blob_;
  std::vector<uint32_t> offs_;
  std::vector<int32_t> vals_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Words already encoded by this thread: a bounded open-addressing table, emptied when half full.
class WordCache {
 public:
  static constexpr size_t kSlots = size_t{1} << 15;
  static constexpr size_t kMaxWord = 256;  // like Hugging Face, only words shorter than this are cached

  const int32_t* find(std::string_view w, uint64_t h, uint32_t& n) const {
    if (slots_.empty()) return nullptr;
    size_t i = h & (kSlots - 1);
    while (true) {
      const Slot& s = slots_[i];
      if (s.h == 0) return nullptr;
      if (s.h == h && s.klen == w.size() && std::memcmp(keys_.data() + s.koff, w.data(), w.size()) == 0) {
        n = s.vlen;
        return vals_.data() + s.voff;
      }
      i = (i + 1) & (kSlots - 1);
    }
  }
  void insert(std::string_view w, uint64_t h, const int32_t* ids, uint32_t n) {
    if (slots_.empty()) slots_.resize(kSlots);
    if (count_ >= kSlots / 2) {
      std::fill(slots_.begin(), slots_.end(), Slot{});
      keys_.clear();
      vals_.clear();
      count_ = 0;
    }
    size_t i = h & (kSlots - 1);
    while (slots_[i].h != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = {h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(w.size()),
                 static_cast<uint32_t>(vals_.size()), n};
    keys_.append(w);
    vals_.insert(vals_.end(), ids, ids + n);
    ++count_;
  }

 private:
  struct Slot {
    uint64_t h = 0;
    uint32_t koff = 0, klen = 0, voff = 0, vlen = 0;
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> vals_;
  size_t count_ = 0;
};

}  // namespace detail

}  // namespace distill::text
