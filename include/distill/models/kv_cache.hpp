// KV cache for incremental decoding: per layer, keys and values of every cached row, [rows, cap, KV, Dh].
//
// Full-attention layers keep every position (cap = the cache's max length). Sliding-window layers keep only
// their window: cap = min(window, max length), used as a ring (position p lives in slot p % cap). A query at
// position p on a sliding layer sees positions p - window + 1 .. p, which are exactly the ring's contents once
// p's key is written, so a one-token decode step attends to the whole ring with no mask (softmax does not
// care about the order of the keys).
//
// Rows are independent sequences (their own lengths); a row is reused for a new sequence after reset(row).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "distill/models/spec.hpp"
#include "distill/tensor/tensor.hpp"

namespace distill::models {

template <class T, class D = Cpu>
class KvCache {
 public:
  struct Layer {
    Tensor<T, D> k, v;  // [rows, cap, KV, Dh]
    int64_t cap = 0;
    int64_t window = 0;  // 0: full attention
    bool ring() const { return window > 0 && cap == window; }
  };

  KvCache() = default;
  // `max_len`: the most positions any row will hold (prompt + generated tokens).
  KvCache(const ModelDims& d, int64_t rows, int64_t max_len) : max_len_(max_len), len_(static_cast<size_t>(rows), 0) {
    DISTILL_CHECK(rows > 0 && max_len > 0, "KvCache: rows (", rows, ") and max_len (", max_len, ") must be positive");
    DISTILL_CHECK(d.max_positions <= 0 || max_len <= d.max_positions, "KvCache: ", max_len,
                  " positions exceed the model's context of ", d.max_positions, " (max_position_embeddings)");
    layers_.resize(static_cast<size_t>(d.layers));
    for (int64_t l = 0; l < d.layers; ++l) {
      Layer& L = layers_[static_cast<size_t>(l)];
      const LayerPlan& p = d.layer[static_cast<size_t>(l)];
      L.window = p.sliding ? p.window : 0;
      L.cap = p.sliding ? std::min(p.window, max_len) : max_len;
      L.k = Tensor<T, D>::zeros({rows, L.cap, d.kv_heads, d.head_dim});
      L.v = Tensor<T, D>::zeros({rows, L.cap, d.kv_heads, d.head_dim});
    }
  }

  int64_t rows() const { return static_cast<int64_t>(len_.size()); }
  int64_t max_len() const { return max_len_; }
  int64_t length(int64_t row) const { return len_.at(static_cast<size_t>(row)); }
  void set_length(int64_t row, int64_t n) { len_.at(static_cast<size_t>(row)) = n; }
  void reset(int64_t row) { set_length(row, 0); }
  Layer& layer(int64_t l) { return layers_.at(static_cast<size_t>(l)); }
  const Layer& layer(int64_t l) const { return layers_.at(static_cast<size_t>(l)); }
  // Bytes held (keys and values of all layers).
  int64_t bytes() const {
    int64_t b = 0;
    for (const auto& L : layers_) b += 2 * L.k.numel() * static_cast<int64_t>(sizeof(T));
    return b;
  }

 private:
  int64_t max_len_ = 0;
  std::vector<int64_t> len_;
  std::vector<Layer> layers_;
};

// Bytes one KvCache row holds for `max_len` positions with `elem_bytes`-byte elements: keys and values of every
// layer, a sliding layer keeping at most its window (Gemma3's 512) -- what KvCache(d, rows, max_len) allocates
// per row.
inline int64_t kv_cache_row_bytes(const ModelDims& d, int64_t max_len, int64_t elem_bytes) {
  int64_t positions = 0;
  for (const LayerPlan& p : d.layer) positions += p.sliding ? std::min(p.window, max_len) : max_len;
  return positions * 2 * d.kv_heads * d.head_dim * elem_bytes;
}

// How many rows a generation runs together when the KV cache is sized from free memory: the rows of `max_len`
// positions that fit in `free_bytes` after `headroom_bytes` are set aside and with each row's decode-step
// workspace (its f32 logits twice: the model's output and the sampler's copy), at most `max_rows`; 0 when not
// even one row fits (the caller says how much memory one row needs).
struct KvPlan {
  int64_t rows = 0;
  int64_t row_bytes = 0;      // KV cache per row
  int64_t per_row_bytes = 0;  // KV cache + step workspace per row
  int64_t budget_bytes = 0;   // free_bytes - headroom_bytes
};
inline KvPlan plan_kv_cache(const ModelDims& d, int64_t max_len, int64_t elem_bytes, int64_t free_bytes,
                            int64_t max_rows, int64_t headroom_bytes = int64_t{1} << 30) {
  KvPlan p;
  p.row_bytes = kv_cache_row_bytes(d, max_len, elem_bytes);
  p.per_row_bytes = p.row_bytes + 2 * d.vocab * static_cast<int64_t>(sizeof(float));
  p.budget_bytes = std::max<int64_t>(0, free_bytes - headroom_bytes);
  p.rows = std::min(max_rows, p.budget_bytes / p.per_row_bytes);
  return p;
}

}  // namespace distill::models
