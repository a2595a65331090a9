// TransformerBlock<Spec> and Transformer<Spec, T, Device>: the decoder-only model of SPEC §1 (Qwen3) and §2
// (Gemma3), one template for both, the differences being spec values resolved with `if constexpr`.
//
//   Transformer<gemma3::kFamily, bf16>::load(dir)    any Gemma3 text checkpoint, bf16 weights and activations
//   Transformer<qwen3::k4B_Thinking_2507, float>     the exact teacher; a different config.json is refused
//
// forward(ids, attention_mask) runs a batch through the model on the tape (a Var: training records, a
// NoGradGuard makes it inference) and returns logits [B, T, V]. step(cache, ids, rows) appends tokens to rows
// of a KvCache and returns the logits of each row's last new token [A, V] (inference only).
//
// Padding: attention_mask [B, T] (1 = token, 0 = padding) with one run of ones per row. Right padding costs
// nothing: the causal mask already hides later positions, and every real token keeps positions 0, 1, 2, ...
// Left padding (HF's default for generation) is moved to the right internally, so a row's logits do not depend
// on how much padding it got (HF's left-padded eager forward shifts position ids the same way); under grad mode
// it is refused, pad on the right for training. Logits at padded positions are unspecified.
//
// Numerics follow HF's eager path (SPEC §1–§2): RMSNorm and RoPE with HF's rounding points, the embedding scale
// rounded to T, silu/gelu rounded to T before the gate product; matmuls and attention accumulate in f32 and
// round once (HF bf16 rounds the attention scores and probabilities to bf16 as well: tolerances in the tests).
#pragma once
#include <map>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "distill/autograd/checkpoint.hpp"
#include "distill/io/hf_config.hpp"
#include "distill/models/kv_cache.hpp"
#include "distill/models/weights.hpp"
#include "distill/ops.hpp"

namespace distill::models {

// Points where hidden states can be captured; block points carry a layer, Embed and FinalNorm use layer -1.
enum class Hook : uint8_t {
  Embed,      // embedding output (scaled for Gemma3): HF hidden_states[0]
  AttnNorm,   // input of the attention projections
  AttnOut,    // attention sublayer output before the residual add (after the post norm for Gemma3)
  MlpNorm,    // input of the MLP
  MlpOut,     // MLP sublayer output before the residual add (after the post norm for Gemma3)
  Block,      // the residual stream after the block: HF hidden_states[layer + 1]
  FinalNorm,  // the final norm's output (the lm head's input)
};
inline constexpr const char* kHookNames[] = {"embed",   "attn_norm", "attn_out",  "mlp_norm",
                                             "mlp_out", "block",     "final_norm"};

inline const char* hook_name(Hook h) { return kHookNames[static_cast<int>(h)]; }
inline Hook parse_hook(std::string_view name) {
  for (int i = 0; i < 7; ++i)
    if (name == kHookNames[i]) return static_cast<Hook>(i);
  throw Error("unknown hidden-state name \"" + std::string(name) +
              "\"; expected embed, attn_norm, attn_out, mlp_norm, mlp_out, block or final_norm");
}

// Hidden states to keep from a forward: request (name, layer) pairs, or all of them.
template <class T, class D = Cpu>
struct Capture {
  using Key = std::pair<Hook, int64_t>;
  std::set<Key> want;
  bool all = false;
  std::map<Key, Var<T, D>> got;

  void request(Hook h, int64_t layer = -1) { want.insert({h, layer}); }
  bool wants(Hook h, int64_t layer) const { return all || want.count({h, layer}) > 0; }
  void put(Hook h, int64_t layer, const Var<T, D>& v) {
    if (wants(h, layer)) got[{h, layer}] = v;
  }
  const Var<T, D>& at(Hook h, int64_t layer = -1) const {
    auto it = got.find({h, layer});
    if (it == got.end())
      throw Error(std::string("hidden state (") + hook_name(h) + ", " + std::to_string(layer) +
                  ") was not captured (request it before the forward; block points need a layer in [0, layers))");
    return it->second;
  }
};

namespace detail {

// x [..., in] · Wᵀ with W [out, in] (nn.Linear layout), as one GEMM over all rows.
template <class T, class D>
Var<T, D> linear(const Var<T, D>& x, const Var<T, D>& w) {
  const Shape s = x.shape();
  Var<T, D> y = matmul(reshape(x, {s.rows(), s.back()}), w, false, true);
  return reshape(y, s.with(-1, w.dim(0)));
}

// RoPE tables of the layers' (at most two) rope configs for one set of positions.
struct RopeSet {
  std::vector<std::pair<RopeConfig, RopeTables>> tables;
  const RopeTables& get(const Tensor<int32_t>& pos, int64_t head_dim, const RopeConfig& c) {
    for (auto& [k, t] : tables)
      if (k.theta == c.theta && k.linear_factor == c.linear_factor) return t;
    tables.emplace_back(c, rope_cos_sin(pos, head_dim, c));
    return tables.back().second;
  }
};

// Row layout of an attention mask: the first and one-past-last real token of each row.
inline std::vector<std::pair<int64_t, int64_t>> mask_runs(const Tensor<int32_t>& mask, int64_t B, int64_t T) {
  check_same_shape(mask.shape(), Shape{B, T}, "attention_mask vs ids");
  std::vector<std::pair<int64_t, int64_t>> runs(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    int64_t first = -1, last = -1;
    for (int64_t t = 0; t < T; ++t) {
      const int32_t m = mask(b, t);
      DISTILL_CHECK(m == 0 || m == 1, "attention_mask must hold 0 or 1, found ", m, " at [", b, ", ", t, "]");
      if (m) {
        DISTILL_CHECK(first < 0 || last == t - 1, "attention_mask row ", b,
                      " has more than one run of ones (padding must be at the left or right end)");
        if (first < 0) first = t;
        last = t;
      }
    }
    runs[static_cast<size_t>(b)] = first < 0 ? std::pair<int64_t, int64_t>{0, 0} : std::pair{first, last + 1};
  }
  return runs;
}

// Attention over packed rows: each row's examples (segments[b]) attend only within themselves; the positions
// after the last example (padding) attend among themselves. Split and concatenated on the tape.
template <class T, class D>
Var<T, D> packed_attention(const Var<T, D>& q, const Var<T, D>& k, const Var<T, D>& v, const AttentionOptions& o,
                           const std::vector<std::vector<int64_t>>& segments, int64_t Tn) {
  const int64_t B = q.dim(0);
  const std::vector<int64_t> ones(static_cast<size_t>(B), 1);
  const auto qs = split(q, ones, 0), ks = split(k, ones, 0), vs = split(v, ones, 0);
  std::vector<Var<T, D>> rows;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> sizes = segments[static_cast<size_t>(b)];
    int64_t used = 0;
    for (int64_t n : sizes) used += n;
    if (used < Tn) sizes.push_back(Tn - used);
    if (sizes.size() == 1) {
      rows.push_back(attention(qs[static_cast<size_t>(b)], ks[static_cast<size_t>(b)], vs[static_cast<size_t>(b)], o));
      continue;
    }
    const auto qq = split(qs[static_cast<size_t>(b)], sizes, 1), kk = split(ks[static_cast<size_t>(b)], sizes, 1),
               vv = split(vs[static_cast<size_t>(b)], sizes, 1);
    std::vector<Var<T, D>> parts;
    for (size_t i = 0; i < sizes.size(); ++i) parts.push_back(attention(qq[i], kk[i], vv[i], o));
    rows.push_back(concat(parts, 1));
  }
  return B == 1 ? rows[0] : concat(rows, 0);
}

}  // namespace detail

// Options of a forward pass beyond the inputs (training runs set them; inference leaves the defaults).
struct RunOptions {
  bool train = false;              // LoRA dropout on (masks drawn from `seed`)
  uint64_t seed = 0;               // dropout stream of this pass (the trainer derives it per step and micro-batch)
  bool checkpoint_blocks = false;  // activation checkpointing per block under grad mode: keep only block inputs,
                                   // recompute each block in backward
  // Packing: segments[b] = lengths of the examples laid one after another in row b (they need not fill the
  // row; the rest is padding). Positions restart at 0 for each example and no token attends across examples.
  // Empty: one sequence per row.
  std::vector<std::vector<int64_t>> segments;
};

// One decoder layer. `attend(q, k, v)` does the attention itself ([B, T, H, Dh], [B, T, KV, Dh] ×2 →
// [B, T, H, Dh]): plain masked attention in a full forward, the KV cache in a decode step.
template <TransformerSpec Spec>
struct TransformerBlock {
  template <class T, class D, class Attend>
  static Var<T, D> forward(const Var<T, D>& x, const BlockWeights<T, D>& w, const ModelDims& d, int64_t layer,
                           const RopeTables& rope_tab, Attend&& attend, Capture<T, D>* cap = nullptr,
                           bool train = false, uint64_t seed = 0) {
    auto linear = [&](const Var<T, D>& in, const nn::Linear<T, D>& p, Role r) {
      return nn::linear(in, p, nn::LinearRun{train, nn::derive_seed(seed, static_cast<uint64_t>(r))});
    };
    const int64_t B = x.dim(0), Tn = x.dim(1);
    auto keep = [&](Hook h, const Var<T, D>& v) {
      if (cap) cap->put(h, layer, v);
    };
    const Var<T, D> a = rms_norm(x, w.attn_norm, d.eps, Spec.norm);
    keep(Hook::AttnNorm, a);
    Var<T, D> q = reshape(linear(a, w.q, Role::Q), {B, Tn, d.heads, d.head_dim});
    Var<T, D> k = reshape(linear(a, w.k, Role::K), {B, Tn, d.kv_heads, d.head_dim});
    const Var<T, D> v = reshape(linear(a, w.v, Role::V), {B, Tn, d.kv_heads, d.head_dim});
    if constexpr (Spec.qk_norm) {
      q = rms_norm(q, w.q_norm, d.eps, Spec.norm);
      k = rms_norm(k, w.k_norm, d.eps, Spec.norm);
    }
    q = rope(q, rope_tab);
    k = rope(k, rope_tab);
    Var<T, D> o = linear(reshape(attend(q, k, v), {B, Tn, d.q_dim()}), w.o, Role::O);
    if constexpr (Spec.sandwich_norms) o = rms_norm(o, w.attn_post_norm, d.eps, Spec.norm);
    keep(Hook::AttnOut, o);
    const Var<T, D> h = x + o;

    const Var<T, D> m = rms_norm(h, w.mlp_norm, d.eps, Spec.norm);
    keep(Hook::MlpNorm, m);
    const Var<T, D> g = linear(m, w.gate, Role::Gate), u = linear(m, w.up, Role::Up);
    Var<T, D> p;
    if constexpr (is_floating_dtype_v<T> && sizeof(T) == 2) {
      // HF rounds the activation to the model dtype before the product.
      Var<T, D> act;
      if constexpr (Spec.act == Activation::Silu)
        act = silu(g);
      else
        act = gelu_tanh(g);
      p = act * u;
    } else if constexpr (Spec.act == Activation::Silu) {
      p = silu(g) * u;
    } else {
      p = gelu_tanh(g) * u;
    }
    Var<T, D> y = linear(p, w.down, Role::Down);
    if constexpr (Spec.sandwich_norms) y = rms_norm(y, w.mlp_post_norm, d.eps, Spec.norm);
    keep(Hook::MlpOut, y);
    Var<T, D> out = h + y;
    keep(Hook::Block, out);
    return out;
  }
};

template <TransformerSpec Spec, FloatingDtype T = bf16, class D = Cpu>
class Transformer {
 public:
  using value_type = T;
  using device_type = D;
  static constexpr TransformerSpec spec = Spec;
  using Block = TransformerBlock<Spec>;

  Transformer(ModelDims d, ModelWeights<T, D> w) : d_(std::move(d)), w_(std::move(w)) {
    DISTILL_CHECK(static_cast<int64_t>(w_.blocks.size()) == d_.layers, "Transformer: ", w_.blocks.size(),
                  " blocks of weights for ", d_.layers, " layers");
  }

  // A Hugging Face checkpoint directory: config.json (resolved against Spec) and its safetensors.
  // Projections load as stored (dense or bitsandbytes 4-bit) or are quantized on load (LoadOptions).
  static Transformer load(const std::string& dir, const char* spec_name = "model", const LoadOptions& lopt = {}) {
    const std::string cfg_path = (std::filesystem::path(dir) / "config.json").string();
    const ModelDims d = resolve<Spec>(io::load_model_config(dir), cfg_path, spec_name);
    const io::Checkpoint ck = io::Checkpoint::open(dir);
    return Transformer(d, load_weights<Spec, T, D>(ck, d, lopt));
  }

  const ModelDims& dims() const { return d_; }
  const ModelWeights<T, D>& weights() const { return w_; }

  // Logits [B, T, V] for ids [B, T] (int32); attention_mask [B, T] optional (see the file comment).
  Var<T, D> forward(const Tensor<int32_t>& ids, const Tensor<int32_t>& attention_mask = {},
                    Capture<T, D>* cap = nullptr, const RunOptions& opt = {}) const {
    std::vector<std::pair<int64_t, int64_t>> runs;
    const Var<T, D> h = hidden(ids, attention_mask, cap, opt, &runs);
    Var<T, D> logits = head(h);
    if (runs.empty()) return logits;
    // Back to the caller's layout; padded positions get zeros.
    const int64_t B = ids.dim(0);
    const Tensor<T, D> src = logits.value();
    auto out = Tensor<T, D>::zeros(src.shape());
    for (int64_t b = 0; b < B; ++b) {
      const auto [s, e] = runs[static_cast<size_t>(b)];
      if (e > s) out.slice(0, b, b + 1).slice(1, s, e).copy_from(src.slice(0, b, b + 1).slice(1, 0, e - s));
    }
    return Var<T, D>(out, false);
  }

  // The final norm's output [B, T, hidden] (the lm head's input; training feeds it to linear_cross_entropy so
  // the [B, T, V] logits never exist). Left-padded rows come back moved to the left (inference only): `shifted`
  // then receives each row's (first, end) run of real tokens, else stays empty.
  Var<T, D> hidden(const Tensor<int32_t>& ids, const Tensor<int32_t>& attention_mask = {}, Capture<T, D>* cap = nullptr,
                   const RunOptions& opt = {}, std::vector<std::pair<int64_t, int64_t>>* shifted_runs = nullptr) const {
    DISTILL_CHECK(ids.rank() == 2, "forward: ids must be [batch, seq], got ", ids.shape().str());
    const int64_t B = ids.dim(0), Tn = ids.dim(1);
    DISTILL_CHECK(d_.max_positions <= 0 || Tn <= d_.max_positions, "forward: a sequence of ", Tn,
                  " tokens exceeds the model's context of ", d_.max_positions, " positions (max_position_embeddings)");
    const bool ckpt = opt.checkpoint_blocks && autograd::grad_enabled();
    DISTILL_CHECK(!(ckpt && cap), "forward: hidden-state capture and activation checkpointing do not combine yet");
    Tensor<int32_t> run_ids = ids;
    std::vector<std::pair<int64_t, int64_t>> runs;
    bool shifted = false;
    if (attention_mask.defined()) {
      runs = detail::mask_runs(attention_mask, B, Tn);
      for (auto [s, e] : runs) shifted = shifted || (s > 0 && e > s);
      if (shifted) {
        DISTILL_CHECK(!autograd::grad_enabled(),
                      "forward: left padding is only taken for inference (under NoGradGuard); pad on the right to "
                      "train");
        DISTILL_CHECK(opt.segments.empty(), "forward: packed rows must be padded on the right");
        run_ids = Tensor<int32_t>::zeros({B, Tn});
        for (int64_t b = 0; b < B; ++b)
          for (int64_t t = runs[static_cast<size_t>(b)].first; t < runs[static_cast<size_t>(b)].second; ++t)
            run_ids(b, t - runs[static_cast<size_t>(b)].first) = ids(b, t);
        if (shifted_runs) *shifted_runs = runs;
      }
    }
    // Positions: 0, 1, 2, ... per row, or per packed example.
    Tensor<int32_t> pos;
    if (opt.segments.empty()) {
      pos = Tensor<int32_t>::empty({Tn});
      for (int64_t t = 0; t < Tn; ++t) pos.data()[t] = static_cast<int32_t>(t);
    } else {
      DISTILL_CHECK(static_cast<int64_t>(opt.segments.size()) == B, "forward: ", opt.segments.size(),
                    " segment lists for ", B, " rows");
      pos = Tensor<int32_t>::zeros({B, Tn});
      for (int64_t b = 0; b < B; ++b) {
        int64_t t = 0;
        for (int64_t len : opt.segments[static_cast<size_t>(b)]) {
          DISTILL_CHECK(len >= 1 && t + len <= Tn, "forward: row ", b, "'s packed lengths exceed its ", Tn,
                        " positions (or one is < 1)");
          for (int64_t i = 0; i < len; ++i) pos(b, t + i) = static_cast<int32_t>(i);
          t += len;
        }
        for (int64_t i = 0; t < Tn; ++t, ++i) pos(b, t) = static_cast<int32_t>(i);  // trailing padding
      }
    }
    detail::RopeSet ropes;
    Var<T, D> h = embed(run_ids);
    if (cap) cap->put(Hook::Embed, -1, h);
    for (int64_t l = 0; l < d_.layers; ++l) {
      const LayerPlan& p = d_.layer[static_cast<size_t>(l)];
      const AttentionOptions aopts{true, p.window, d_.attn_scale};
      const std::vector<std::vector<int64_t>>* segs = opt.segments.empty() ? nullptr : &opt.segments;
      // Captures by value: under checkpointing backward calls it again after this scope is gone.
      auto attend = [aopts, segs = segs ? *segs : std::vector<std::vector<int64_t>>{}, Tn](
                        const Var<T, D>& q, const Var<T, D>& k, const Var<T, D>& v) {
        if (segs.empty()) return attention(q, k, v, aopts);
        return detail::packed_attention(q, k, v, aopts, segs, Tn);
      };
      const uint64_t seed = nn::derive_seed(opt.seed, static_cast<uint64_t>(l));
      const RopeTables& rt = ropes.get(pos, d_.head_dim, p.rope);
      if (ckpt) {
        h = autograd::checkpoint(
            [blk = w_.blocks[static_cast<size_t>(l)], d = d_, l, rt, attend, train = opt.train,
             seed](const Var<T, D>& x) {
              return Block::forward(x, blk, d, l, rt, attend, static_cast<Capture<T, D>*>(nullptr), train, seed);
            },
            h);
      } else {
        h = Block::forward(h, w_.blocks[static_cast<size_t>(l)], d_, l, rt, attend, cap, opt.train, seed);
      }
    }
    h = rms_norm(h, w_.final_norm, d_.eps, Spec.norm);
    if (cap) cap->put(Hook::FinalNorm, -1, h);
    return h;
  }

  // The head on final-norm outputs (with the final softcap when the model has one).
  Var<T, D> head(const Var<T, D>& h) const {
    Var<T, D> logits = detail::linear(h, w_.lm_head);
    if (d_.final_softcap > 0) {
      const double c = d_.final_softcap;
      logits = tanh(logits / c) * c;
    }
    return logits;
  }

  ModelWeights<T, D>& mutable_weights() { return w_; }

  KvCache<T, D> make_cache(int64_t rows, int64_t max_len) const { return KvCache<T, D>(d_, rows, max_len); }

  // Appends ids [A, Tn] to cache rows `rows` (A of them; row i's first n_valid[i] tokens are real, the rest
  // right padding; empty n_valid: all Tn) and returns the logits of each row's last real token, [A, V].
  // Inference only (runs under its own NoGradGuard).
  Tensor<T, D> step(KvCache<T, D>& cache, const Tensor<int32_t>& ids, std::span<const int64_t> rows,
                    std::span<const int64_t> n_valid = {}) const {
    autograd::NoGradGuard no_grad;
    DISTILL_CHECK(ids.rank() == 2, "step: ids must be [rows, new tokens], got ", ids.shape().str());
    const int64_t A = ids.dim(0), Tn = ids.dim(1);
    DISTILL_CHECK(static_cast<int64_t>(rows.size()) == A, "step: ", rows.size(), " cache rows for ", A, " rows of ids");
    DISTILL_CHECK(n_valid.empty() || static_cast<int64_t>(n_valid.size()) == A, "step: ", n_valid.size(),
                  " lengths for ", A, " rows");
    std::vector<int64_t> L(static_cast<size_t>(A)), n(static_cast<size_t>(A));
    auto pos = Tensor<int32_t>::empty({A, Tn});
    for (int64_t i = 0; i < A; ++i) {
      const int64_t r = rows[static_cast<size_t>(i)];
      DISTILL_CHECK(r >= 0 && r < cache.rows(), "step: cache row ", r, " out of range [0, ", cache.rows(), ")");
      for (int64_t j = 0; j < i; ++j)
        DISTILL_CHECK(rows[static_cast<size_t>(j)] != r, "step: cache row ", r, " is listed twice");
      L[static_cast<size_t>(i)] = cache.length(r);
      n[static_cast<size_t>(i)] = n_valid.empty() ? Tn : n_valid[static_cast<size_t>(i)];
      DISTILL_CHECK(n[static_cast<size_t>(i)] >= 1 && n[static_cast<size_t>(i)] <= Tn, "step: row ", i, " has ",
                    n[static_cast<size_t>(i)], " real tokens of ", Tn);
      if (L[static_cast<size_t>(i)] + n[static_cast<size_t>(i)] > cache.max_len())
        throw Error("step: cache row " + std::to_string(r) + " holds " + std::to_string(L[static_cast<size_t>(i)]) +
                    " positions; " + std::to_string(n[static_cast<size_t>(i)]) + " more would exceed its max_len of " +
                    std::to_string(cache.max_len()) + " (prompt + new tokens must fit the context)");
      for (int64_t t = 0; t < Tn; ++t) pos(i, t) = static_cast<int32_t>(L[static_cast<size_t>(i)] + t);
    }
    detail::RopeSet ropes;
    Var<T, D> h = embed(ids);
    for (int64_t l = 0; l < d_.layers; ++l) {
      const LayerPlan& p = d_.layer[static_cast<size_t>(l)];
      auto& C = cache.layer(l);
      auto attend = [&](const Var<T, D>& q, const Var<T, D>& k, const Var<T, D>& v) {
        auto out = Tensor<T, D>::zeros(q.shape());
        for (int64_t i = 0; i < A; ++i) {
          const int64_t r = rows[static_cast<size_t>(i)], Li = L[static_cast<size_t>(i)],
                        ni = n[static_cast<size_t>(i)];
          const Tensor<T, D> qi = q.value().slice(0, i, i + 1).slice(1, 0, ni);
          const Tensor<T, D> ki = k.value().slice(0, i, i + 1).slice(1, 0, ni);
          const Tensor<T, D> vi = v.value().slice(0, i, i + 1).slice(1, 0, ni);
          const Tensor<T, D> Kr = C.k.slice(0, r, r + 1), Vr = C.v.slice(0, r, r + 1);
          Var<T, D> o;
          if (!C.ring()) {  // positions are slots
            Kr.slice(1, Li, Li + ni).copy_from(ki);
            Vr.slice(1, Li, Li + ni).copy_from(vi);
            o = attention(Var<T, D>(qi), Var<T, D>(Kr.slice(1, 0, Li + ni)), Var<T, D>(Vr.slice(1, 0, Li + ni)),
                          AttentionOptions{true, C.window, d_.attn_scale});
          } else if (ni == 1) {  // the ring after this write holds exactly the visible window
            const int64_t slot = Li % C.cap;
            Kr.slice(1, slot, slot + 1).copy_from(ki);
            Vr.slice(1, slot, slot + 1).copy_from(vi);
            const int64_t S = std::min(Li + 1, C.cap);
            o = attention(Var<T, D>(qi), Var<T, D>(Kr.slice(1, 0, S)), Var<T, D>(Vr.slice(1, 0, S)),
                          AttentionOptions{false, 0, d_.attn_scale});
          } else {  // several new tokens: the kept window in position order, then the new keys
            const int64_t m = std::min(Li, C.window - 1);
            auto Kc = Tensor<T, D>::empty({1, m + ni, d_.kv_heads, d_.head_dim});
            auto Vc = Tensor<T, D>::empty(Kc.shape());
            for (int64_t j = 0; j < m; ++j) {
              const int64_t slot = (Li - m + j) % C.cap;
              Kc.slice(1, j, j + 1).copy_from(Kr.slice(1, slot, slot + 1));
              Vc.slice(1, j, j + 1).copy_from(Vr.slice(1, slot, slot + 1));
            }
            Kc.slice(1, m, m + ni).copy_from(ki);
            Vc.slice(1, m, m + ni).copy_from(vi);
            o = attention(Var<T, D>(qi), Var<T, D>(Kc), Var<T, D>(Vc), AttentionOptions{true, C.window, d_.attn_scale});
            for (int64_t t = std::max<int64_t>(0, ni - C.cap); t < ni; ++t) {
              const int64_t slot = (Li + t) % C.cap;
              Kr.slice(1, slot, slot + 1).copy_from(ki.slice(1, t, t + 1));
              Vr.slice(1, slot, slot + 1).copy_from(vi.slice(1, t, t + 1));
            }
          }
          out.slice(0, i, i + 1).slice(1, 0, ni).copy_from(o.value());
        }
        return Var<T, D>(out, false);
      };
      h = Block::forward(h, w_.blocks[static_cast<size_t>(l)], d_, l, ropes.get(pos, d_.head_dim, p.rope), attend,
                         static_cast<Capture<T, D>*>(nullptr));
    }
    for (int64_t i = 0; i < A; ++i)
      cache.set_length(rows[static_cast<size_t>(i)], L[static_cast<size_t>(i)] + n[static_cast<size_t>(i)]);
    // Only each row's last real token reaches the norm and the head (V can be 262144).
    auto last = Tensor<T, D>::empty({A, d_.hidden});
    for (int64_t i = 0; i < A; ++i) {
      const int64_t t = n[static_cast<size_t>(i)] - 1;
      last.slice(0, i, i + 1).copy_from(h.value().slice(0, i, i + 1).slice(1, t, t + 1).reshape({1, d_.hidden}));
    }
    return head(rms_norm(Var<T, D>(last, false), w_.final_norm, d_.eps, Spec.norm)).value();
  }

 private:
  Var<T, D> embed(const Tensor<int32_t>& ids) const {
    Var<T, D> h = embedding(w_.embed, ids);
    if constexpr (Spec.embed_scale) {
      // The scale is rounded to T first (HF: embed_scale.to(weight.dtype)), then one rounded product.
      const auto s = to_compute<T>(static_cast<T>(static_cast<float>(d_.embed_scale)));
      h = h * s;
    }
    return h;
  }

  ModelDims d_;
  ModelWeights<T, D> w_;
};

}  // namespace distill::models
