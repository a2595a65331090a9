// Next-token selection as Hugging Face transformers (5.24) `generate` does it, for one sequence's fp32 logits.
//
// Contract (SPEC §5.3; tests/golden/sampling/warpers.json holds HF's own outputs):
//   - do_sample = false: greedy, argmax of the raw logits (first index on ties, like torch.argmax); the warper
//     settings are ignored, as in HF.
//   - do_sample = true: the warpers in HF's order, temperature -> top-k -> top-p -> min-p, each writing -inf into
//     what it removes and always keeping the most likely token; then softmax and one categorical draw.
//       temperature  x / T in fp32 (skipped at T = 1).
//       top-k        remove x < (k-th largest value); ties at the k-th value survive; k >= #finite is a no-op.
//       top-p        softmax (fp32), ascending order, cumulative sum (accumulated in double and rounded to fp32,
//                    as torch's CPU cumsum does); remove every token whose cumulative probability is
//                    <= fp32(1 - top_p). Finite logits whose probability underflows to 0 are removed too.
//                    Among tied logits the lower index counts as smaller (a stable ascending sort; torch's CPU
//                    sort is stable for V <= 16, implementation-defined beyond, so HF itself is not
//                    deterministic for ties that straddle the cut).
//       min-p        softmax (fp32); remove p < fp32(min_p) * max_p.
//   - The RNG is ours (std::mt19937_64 per sequence), not torch's: a draw matches HF in distribution, not in value.
//
// Complexity for V logits with n finite ones (per call; the candidates are kept as arrays so passes vectorise):
//   temperature, the NaN/+inf/-inf check and the max: O(V), vectorised. top-k: the k-th value by a size-k heap
//   fed only by blocks whose max beats its minimum (k <= 4096) or by nth_element (O(V)), then one pass that
//   masks and collects the ~k survivors; without top-k the n finite logits are collected (a copy when there
//   is no -inf). top-p over the n' candidates left: softmax O(n'); a pre-filter drops every token with
//   p <= (1 - top_p) / (2 n'), which cannot survive (usually most of a vocabulary), then the rest is partially
//   sorted in chunks of 1024, 4096, ... until the cut is found: O(n' + m log m) for m kept tokens, a full sort
//   only when nearly all are kept. min-p O(n'). The draw O(n'), reusing top-p's / min-p's probabilities.
//   The softmaxes' exp is the dominant cost when top-k is off. Greedy: one vectorised pass plus a short search.
//   A Sampler reuses its buffers, so steady-state calls do not allocate. Measured (V = 262144, one core, SSE2
//   build): ~0.3 ms per token with top-k 20..50, ~1 ms with no warper, a few ms for top-p alone.
//
// ref:: holds a plain transliteration of the HF code (full stable sort) that the tests check the fast path
// against on large vocabularies.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "distill/core/error.hpp"

namespace distill::generate {

struct SamplingParams {
  bool do_sample = false;    // false: greedy (argmax; first index on ties, like torch.argmax)
  float temperature = 1.0f;  // > 0; 1 = no-op
  int64_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off; (0, 1]
  float min_p = 0.0f;        // 0 = off; [0, 1]
  uint64_t seed = 0;

  // Throws distill::Error naming the field, its value and the allowed range. The negated comparisons also
  // reject NaN.
  void validate() const {
    DISTILL_CHECK(temperature > 0.0f && std::isfinite(temperature),
                  "SamplingParams: temperature must be a finite value > 0, got ", temperature,
                  " (for greedy decoding set do_sample = false instead)");
    DISTILL_CHECK(top_k >= 0, "SamplingParams: top_k must be >= 0 (0 switches top-k off), got ", top_k);
    DISTILL_CHECK(top_p > 0.0f && top_p <= 1.0f, "SamplingParams: top_p must be in (0, 1] (1 switches top-p off), got ",
                  top_p);
    DISTILL_CHECK(min_p >= 0.0f && min_p <= 1.0f,
                  "SamplingParams: min_p must be in [0, 1] (0 switches min-p off), got ", min_p);
  }
};

namespace detail {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();
inline constexpr float kPosInf = std::numeric_limits<float>::infinity();
inline constexpr size_t kTopPChunk = 1024;  // first partial-sort size of top-p; grows 4x per round
inline constexpr int64_t kHeapTopK = 4096;  // top-k up to this uses a size-k heap, beyond it nth_element

inline constexpr int64_t kBlock = 256;  // block of logits for the vectorised block-max scans

// exp(x) for x <= 0 (softmax's x - max), within 1 ulp of the correctly rounded fp32 value over [-87.3, 0]
// (checked for every float there), 0 below (where expf is subnormal; torch keeps those, which only matters
// for probabilities under 1e-38). Cephes' polynomial; plain arithmetic, so `omp simd` loops vectorise it,
// about 4x faster than a libm call per element. torch itself uses Sleef's 1-ulp vector exp, so bitwise
// equality with torch was never on offer; every path here (ref:: too) uses this one function.
inline float exp_nonpos(float x) {
  const float xc = x > -88.0f ? x : -88.0f;  // keeps the float -> int conversion defined (x = -inf too)
  // round(x / ln 2): for t <= 0, truncating t - 0.5 rounds to nearest (cvttps2dq, vectorises without SSE4.1)
  const auto n = static_cast<int32_t>(xc * 1.44269504088896341f - 0.5f);  // in [-127, 0]
  const float fn = static_cast<float>(n);
  const float r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;  // x - n ln 2, ln 2 in two parts
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(n + 127) << 23);  // 2^n
  return x < -87.33654f ? 0.0f : y * scale;
}

// Max of p[0..n). `omp simd` lets the compiler vectorise the max reduction without -ffast-math (distill links
// OpenMP); the NaN rules of max do not matter because NaN is tracked apart (scan_row) or already excluded.
inline float block_max(const float* p, int64_t n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = p[i] > m ? p[i] : m;
  return m;
}

// The row's maximum, the first block that holds it, and whether the row holds a NaN or a -inf, in one vectorised
// pass.
struct RowScan {
  float max;
  int64_t max_block;
  bool nan, neg_inf;
};
inline RowScan scan_row(std::span<const float> x) {
  const float* p = x.data();
  const auto n = static_cast<int64_t>(x.size());
  RowScan r{kNegInf, 0, false, false};
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    float m = kNegInf;
    int nan = 0, ninf = 0;
#pragma omp simd reduction(max : m) reduction(| : nan, ninf)
    for (int64_t i = 0; i < len; ++i) {
      m = p[b + i] > m ? p[b + i] : m;
      nan |= static_cast<int>(p[b + i] != p[b + i]);
      ninf |= static_cast<int>(p[b + i] == kNegInf);
    }
    r.nan = r.nan || nan != 0;
    r.neg_inf = r.neg_inf || ninf != 0;
    if (m > r.max) r.max = m, r.max_block = b;  // strictly greater: the first block holding the max wins
  }
  return r;
}

[[noreturn]] inline void throw_nan(const char* what, std::span<const float> x) {
  size_t i = 0;
  while (i < x.size() && !std::isnan(x[i])) ++i;
  DISTILL_CHECK(false, what, ": logit ", i, " of ", x.size(), " is NaN (the model produced NaN)");
  std::abort();  // unreachable
}

}  // namespace detail

// Argmax of one row of logits: the first index on ties (torch.argmax). A NaN is an error, not a winner.
// O(V): one vectorised pass for the maximum and the first block holding it, then a search in that block.
inline int64_t argmax(std::span<const float> logits) {
  DISTILL_CHECK(!logits.empty(), "argmax: empty logits");
  const auto r = detail::scan_row(logits);
  if (r.nan) detail::throw_nan("argmax", logits);
  return std::find(logits.begin() + r.max_block, logits.end(), r.max) - logits.begin();
}

namespace detail {

// A token in top-p's sort (the survivors of its pre-filter only).
struct Cand {
  float logit;
  float prob;
  uint32_t index;
};

// Descending logit; among ties the higher index first, i.e. the reverse of a stable ascending sort.
struct ByLogitDesc {
  bool operator()(const Cand& a, const Cand& b) const {
    return a.logit > b.logit || (a.logit == b.logit && a.index > b.index);
  }
};

// The candidates (tokens with a finite logit) as three arrays, so that the softmax passes vectorise. The arrays
// only grow (to V once), and n says how many slots are live: steady-state calls neither allocate nor zero.
struct Workspace {
  std::vector<float> logit, prob;  // prob: exp(logit - max), then the fp32 probability
  std::vector<uint32_t> index;
  size_t n = 0;
  std::vector<Cand> sorted;    // top-p: its survivors, partially sorted
  std::vector<float> kth;      // top-k: the heap, or the copy for nth_element
  std::vector<float> scratch;  // Sampler: the copy of the caller's logits

  void reserve(size_t V) {
    if (logit.size() < V) logit.resize(V), prob.resize(V), index.resize(V);
    n = 0;
  }
};

// fp32 softmax over the candidates as torch computes it: p = exp(x - max) * (1 / sum). The sum is taken in
// double and rounded, which is within an ulp of torch's vectorised fp32 sum. Returns max p (= 1 / sum).
inline float softmax_probs(Workspace& ws) {
  const float* x = ws.logit.data();
  float* pr = ws.prob.data();
  const auto n = static_cast<int64_t>(ws.n);
  float mx = kNegInf;
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    pr[i] = exp_nonpos(x[i] - mx);
    sum += pr[i];
  }
  const float inv = 1.0f / static_cast<float>(sum);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) pr[i] *= inv;
  return inv;  // exp(0) = 1 exactly, so the maximum probability is inv
}

inline double sum_probs(const Workspace& ws) {
  const float* pr = ws.prob.data();
  const auto n = static_cast<int64_t>(ws.n);
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += pr[i];
  return sum;
}

// Keeps the candidates i with keep(i) (in order) and writes -inf into the logits of the others. Branch-free: the
// predicate is often a coin flip per token (top-p's pre-filter), and every slot is written either way.
template <class Keep>
inline void compact(std::span<float> logits, Workspace& ws, Keep keep) {
  size_t m = 0;
  for (size_t i = 0; i < ws.n; ++i) {
    const bool k = keep(i);
    const float lg = ws.logit[i], pr = ws.prob[i];
    const uint32_t ix = ws.index[i];
    logits[ix] = k ? lg : kNegInf;
    ws.logit[m] = lg, ws.prob[m] = pr, ws.index[m] = ix;
    m += k;
  }
  ws.n = m;
}

// The k-th largest value of the row (with multiplicity, -inf included), 1 <= k < V. Small k: a size-k min-heap;
// a block whose vectorised max does not beat the heap's minimum is skipped whole, so on typical rows the cost is
// one vector pass, O(V + k log k log(V/k)). Large k: nth_element on a copy, O(V).
inline float kth_largest(std::span<const float> x, size_t k, std::vector<float>& heap) {
  const auto greater = std::greater<float>();
  if (static_cast<int64_t>(k) > kHeapTopK) {
    heap.assign(x.begin(), x.end());
    std::nth_element(heap.begin(), heap.begin() + static_cast<int64_t>(k - 1), heap.end(), greater);
    return heap[k - 1];
  }
  heap.assign(x.begin(), x.begin() + static_cast<int64_t>(k));
  std::make_heap(heap.begin(), heap.end(), greater);
  const auto n = static_cast<int64_t>(x.size());
  for (auto b = static_cast<int64_t>(k); b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    if (!(block_max(x.data() + b, len) > heap.front())) continue;
    for (int64_t i = b; i < b + len; ++i)
      if (x[i] > heap.front()) {
        std::pop_heap(heap.begin(), heap.end(), greater);
        heap.back() = x[i];
        std::push_heap(heap.begin(), heap.end(), greater);
      }
  }
  return heap.front();
}

// Every finite logit becomes a candidate; with top-k only those >= its threshold, the rest turning -inf
// (HF: remove x < k-th largest, so ties at the k-th value survive).
inline void collect(std::span<float> logits, const SamplingParams& p, bool any_neg_inf, Workspace& ws) {
  const auto V = static_cast<int64_t>(logits.size());
  ws.reserve(logits.size());
  float* lg = ws.logit.data();
  uint32_t* ix = ws.index.data();
  size_t n = 0;
  float thr = kNegInf;
  if (p.top_k > 0 && p.top_k < V) thr = kth_largest(logits, static_cast<size_t>(p.top_k), ws.kth);
  if (thr == kNegInf && !any_neg_inf) {  // nothing to remove, nothing to skip: copy (vectorised)
    std::copy(logits.begin(), logits.end(), lg);
#pragma omp simd
    for (int64_t i = 0; i < V; ++i) ix[i] = static_cast<uint32_t>(i);
    ws.n = logits.size();
    return;
  }
  if (thr == kNegInf) {                // no top-k, or k reaches into the -inf entries: nothing is removed
    for (int64_t i = 0; i < V; ++i) {  // branch-free: write always, advance when finite
      lg[n] = logits[i], ix[n] = static_cast<uint32_t>(i);
      n += logits[i] != kNegInf;
    }
    ws.n = n;
    return;
  }
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t len = std::min(kBlock, V - b);
    float* x = logits.data() + b;
    if (block_max(x, len) < thr) {  // the usual case: the whole block is masked
      std::fill(x, x + len, kNegInf);
      continue;
    }
    for (int64_t i = 0; i < len; ++i) {
      if (x[i] < thr) {
        x[i] = kNegInf;
      } else {
        lg[n] = x[i], ix[n] = static_cast<uint32_t>(b + i);
        ++n;
      }
    }
  }
  ws.n = n;
}

inline void top_p(std::span<float> logits, Workspace& ws, float p) {
  // HF: cumsum(ascending) <= 1 - top_p is removed; torch casts the Python-double threshold to fp32.
  const float thr = static_cast<float>(1.0 - static_cast<double>(p));
  softmax_probs(ws);
  const double total = sum_probs(ws);
  // In descending order d_0 >= d_1 >= ..., token d_k's ascending cumulative sum is total - (d_0 + ... + d_{k-1}).
  // It only shrinks with k, so the kept set is a prefix d_0..d_{K-1}; d_0 is always kept (min_tokens_to_keep).
  //
  // Pre-filter without sorting: a token with p <= eps = thr / (2n) has only tokens with p <= eps at or below it,
  // so its cumulative sum is <= n * eps = thr / 2 and it is removed whatever the order. On LLM rows that is most
  // of the vocabulary. The maximum (p >= 1/n > eps) always stays.
  const double eps = static_cast<double>(thr) / (2.0 * static_cast<double>(ws.n));
  if (eps > 0.0) compact(logits, ws, [&](size_t i) { return static_cast<double>(ws.prob[i]) > eps; });
  auto& c = ws.sorted;
  const size_t n = ws.n;
  c.resize(n);
  for (size_t i = 0; i < n; ++i) c[i] = {ws.logit[i], ws.prob[i], ws.index[i]};
  const ByLogitDesc desc;
  size_t sorted = 0, chunk = kTopPChunk, keep = n;
  double prefix = 0.0;
  for (size_t k = 0; k < n && keep == n; ++k) {
    if (k == sorted) {  // sort the next chunk: the largest of the unsorted rest, in order
      const size_t end = std::min(n, sorted + chunk);
      const auto first = c.begin() + static_cast<int64_t>(sorted), last = c.begin() + static_cast<int64_t>(end);
      if (end < n) std::nth_element(first, last, c.end(), desc);
      std::sort(first, last, desc);
      sorted = end;
      chunk *= 4;
    }
    if (k > 0 && static_cast<float>(total - prefix) <= thr) keep = k;
    prefix += c[k].prob;
  }
  for (size_t i = keep; i < n; ++i) logits[c[i].index] = kNegInf;
  for (size_t i = 0; i < keep; ++i) ws.logit[i] = c[i].logit, ws.prob[i] = c[i].prob, ws.index[i] = c[i].index;
  ws.n = keep;
}

inline void min_p(std::span<float> logits, Workspace& ws, float mp) {
  const float thr = mp * softmax_probs(ws);
  compact(logits, ws, [&](size_t i) { return !(ws.prob[i] < thr); });
}

// The warpers on `logits` in place; afterwards ws lists exactly the finite entries as candidates. Returns
// whether ws.prob holds their probabilities up to a common factor (top-p or min-p ran), which the draw reuses.
inline bool warp(std::span<float> logits, const SamplingParams& p, Workspace& ws) {
  p.validate();
  DISTILL_CHECK(!logits.empty(), "apply_warpers: empty logits");
  DISTILL_CHECK(logits.size() <= std::numeric_limits<uint32_t>::max(), "apply_warpers: ", logits.size(),
                " logits is more than 2^32 - 1 tokens");
  if (p.temperature != 1.0f) {
    float* x = logits.data();
    const auto n = static_cast<int64_t>(logits.size());
    const float t = p.temperature;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] /= t;  // a division, as torch does: x * (1 / t) rounds differently
  }
  const auto r = scan_row(logits);
  if (r.nan) throw_nan("apply_warpers", logits);
  DISTILL_CHECK(r.max != kPosInf, "apply_warpers: a logit is +inf (after temperature ", p.temperature,
                "); softmax is undefined");
  if (r.max == kNegInf) {  // all -inf: HF leaves the row as it is (its softmax is NaN everywhere)
    ws.n = 0;
    return false;
  }
  collect(logits, p, r.neg_inf, ws);
  bool probs = false;
  if (p.top_p < 1.0f) {
    top_p(logits, ws, p.top_p);
    probs = true;
  }
  if (p.min_p > 0.0f) {
    min_p(logits, ws, p.min_p);
    probs = true;
  }
  return probs;
}

}  // namespace detail

// Applies temperature -> top-k -> top-p -> min-p (HF order) to fp32 logits in place; masked entries become -inf.
// Throws on invalid params, an empty row, NaN or +inf logits.
inline void apply_warpers(std::span<float> logits, const SamplingParams& p) {
  detail::Workspace ws;
  detail::warp(logits, p, ws);
}

// One per sequence: its own RNG, seeded from params.seed, and reusable buffers.
class Sampler {
 public:
  explicit Sampler(SamplingParams p) : params_(p), rng_(p.seed) { params_.validate(); }

  // Greedy when !do_sample; else warpers, softmax and one inverse-CDF draw with a uniform double in [0, 1).
  // The caller's logits are copied, never modified.
  int64_t next(std::span<const float> logits) {
    if (!params_.do_sample) return argmax(logits);
    ws_.scratch.assign(logits.begin(), logits.end());
    const bool have_probs = detail::warp(ws_.scratch, params_, ws_);
    DISTILL_CHECK(ws_.n > 0, "Sampler::next: every one of the ", logits.size(),
                  " logits is -inf; there is nothing to sample");
    if (!have_probs) detail::softmax_probs(ws_);  // temperature / top-k only ran; any common factor would do
    const double target = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * detail::sum_probs(ws_);  // u in [0, 1)
    // A token with weight 0 (underflow) can never make the running sum exceed target, so it is never drawn;
    // if rounding leaves target unreached, the last token with weight > 0 takes it.
    const float* pr = ws_.prob.data();
    double run = 0.0;
    size_t last = 0;
    for (size_t i = 0; i < ws_.n; ++i) {
      if (pr[i] <= 0.0f) continue;
      run += pr[i];
      last = i;
      if (run > target) return ws_.index[i];
    }
    return ws_.index[last];
  }

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  detail::Workspace ws_;
};

namespace ref {

// The HF warpers line by line, on the whole row with a full stable sort: the baseline the tests hold the
// candidate-based path above against. Same fp32 formulas; O(V log V).
inline void apply_warpers(std::span<float> x, const SamplingParams& p) {
  p.validate();
  const size_t V = x.size();
  constexpr float ninf = detail::kNegInf;
  if (p.temperature != 1.0f)
    for (float& v : x) v /= p.temperature;
  auto softmax = [&](std::span<const float> s) {
    std::vector<float> pr(s.size());
    float mx = *std::max_element(s.begin(), s.end());
    double sum = 0.0;
    for (size_t i = 0; i < s.size(); ++i) sum += (pr[i] = detail::exp_nonpos(s[i] - mx));
    const float inv = 1.0f / static_cast<float>(sum);
    for (float& v : pr) v *= inv;
    return pr;
  };
  if (p.top_k > 0) {
    std::vector<float> s(x.begin(), x.end());
    std::sort(s.begin(), s.end(), std::greater<float>());
    const float kth = s[std::min<size_t>(static_cast<size_t>(p.top_k), V) - 1];
    for (float& v : x)
      if (v < kth) v = ninf;
  }
  if (p.top_p < 1.0f) {
    std::vector<size_t> order(V);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
    std::vector<float> sorted(V);
    for (size_t i = 0; i < V; ++i) sorted[i] = x[order[i]];
    const auto pr = softmax(sorted);
    const float thr = static_cast<float>(1.0 - static_cast<double>(p.top_p));
    double cum = 0.0;
    std::vector<char> remove(V, 0);
    for (size_t i = 0; i < V; ++i) {
      cum += pr[i];
      remove[i] = static_cast<float>(cum) <= thr && i + 1 < V;
    }
    for (size_t i = 0; i < V; ++i)
      if (remove[i]) x[order[i]] = ninf;
  }
  if (p.min_p > 0.0f) {
    const auto pr = softmax(x);
    const float thr = p.min_p * *std::max_element(pr.begin(), pr.end());
    for (size_t i = 0; i < V; ++i)
      if (pr[i] < thr) x[i] = ninf;
  }
}

}  // namespace ref

}  // namespace distill::generate
