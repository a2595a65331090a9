// TransformerSpec: the structure of a decoder-only transformer as a compile-time value (a structural type, so
// it is a template argument: Transformer<kGemma3_1B, bf16, Cuda>), and its resolution against a config.json.
//
// A spec fixes the *structure* (norm style, sandwich norms, q/k norms, embedding scale, activation) at compile
// time; the numbers (dimensions, rope bases, window, eps, ...) are either fixed too (the exact spec of one
// released model: a config.json that disagrees is an error naming the field) or kFromConfig (the family spec:
// any Qwen3ForCausalLM / Gemma3ForCausalLM size loads from its config.json). resolve<Spec>() turns a spec and
// a parsed config into ModelDims, the plain runtime description every layer reads.
//
// The Qwen3/Gemma3 difference is these fields (SPEC §1, §2), not two class hierarchies:
//   Qwen3:  Weight-style RMSNorm, pre-norm only, silu, no embedding scale, one rope base, untied or tied.
//   Gemma3: (1 + w) RMSNorm, sandwich norms, gelu_tanh, embeddings * T(sqrt(hidden)), local/global rope
//           bases with a sliding window on most layers, query_pre_attn_scalar, optional final softcap.
#pragma once
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "distill/io/hf_config.hpp"
#include "distill/ops/rmsnorm.hpp"
#include "distill/ops/rope.hpp"

namespace distill::models {

using io::Activation;

enum class Family : uint8_t { Qwen3, Gemma3 };

inline constexpr const char* family_name(Family f) { return f == Family::Qwen3 ? "Qwen3" : "Gemma3"; }

// Numbers that a spec leaves to config.json.
inline constexpr int64_t kFromConfig = 0;
inline constexpr double kFromConfigF = 0.0;
// Softcaps: a fixed spec says "none" with kNoCap; kFromConfigF reads the config.
inline constexpr double kNoCap = -1.0;

enum class Tied : uint8_t { FromConfig, Yes, No };

struct TransformerSpec {
  Family family = Family::Qwen3;
  // Dimensions (kFromConfig: read from config.json).
  int64_t layers = kFromConfig;
  int64_t hidden = kFromConfig;
  int64_t heads = kFromConfig;
  int64_t kv_heads = kFromConfig;
  int64_t head_dim = kFromConfig;
  int64_t ffn = kFromConfig;
  int64_t vocab = kFromConfig;
  // Structure (always fixed).
  RmsNormStyle norm = RmsNormStyle::Weight;
  bool sandwich_norms = false;  // a norm after attention and after the MLP as well as before (Gemma3)
  bool qk_norm = true;          // RMSNorm over head_dim on q and k before RoPE
  bool embed_scale = false;     // embeddings * T(sqrt(hidden)) (Gemma3; rounded to T first, SPEC §2.1)
  Activation act = Activation::Silu;
  // Numbers (kFromConfigF: read from config.json).
  double rope_theta = kFromConfigF;             // full-attention layers
  double rope_local_theta = kFromConfigF;       // sliding layers (Gemma3's rope_local_base_freq)
  int64_t sliding_window = kFromConfig;         // Gemma3 only; Qwen3 checkpoints with sliding windows are refused
  int64_t sliding_pattern = kFromConfig;        // every pattern-th layer is full attention; kFromConfig: layer_types
  double query_pre_attn_scalar = kFromConfigF;  // scores * qpas^-0.5 (Qwen3: head_dim)
  double final_softcap = kFromConfigF;          // logits = cap * tanh(logits / cap); kNoCap: none
  Tied tied = Tied::FromConfig;
  double eps = kFromConfigF;
};

// The weights of a block and of the model, by role; each family's header maps roles to Hugging Face names.
// Qwen3 and Gemma3 both call the pre-attention norm input_layernorm, but "post_attention_layernorm" is Qwen3's
// pre-MLP norm and Gemma3's norm of the attention output (Gemma3's pre-MLP norm is pre_feedforward_layernorm).
enum class Role : uint8_t {
  AttnNorm,      // before attention
  AttnPostNorm,  // on the attention output (sandwich)
  MlpNorm,       // before the MLP
  MlpPostNorm,   // on the MLP output (sandwich)
  Q,
  K,
  V,
  O,
  QNorm,
  KNorm,
  Gate,
  Up,
  Down,
  Embed,
  FinalNorm,
  LmHead  // model-level
};
inline constexpr Role kBlockRoles[] = {
    Role::AttnNorm, Role::AttnPostNorm, Role::MlpNorm, Role::MlpPostNorm, Role::Q,  Role::K,   Role::V,
    Role::O,        Role::QNorm,        Role::KNorm,   Role::Gate,        Role::Up, Role::Down};

// The tensor names both families share, after the model prefix (block roles after "<prefix>layers.N."); the
// norms around the sublayers differ and are named by each family's header. nullptr: not a shared name.
inline constexpr const char* shared_hf_name(Role r) {
  switch (r) {
    case Role::AttnNorm:
      return "input_layernorm.weight";
    case Role::Q:
      return "self_attn.q_proj.weight";
    case Role::K:
      return "self_attn.k_proj.weight";
    case Role::V:
      return "self_attn.v_proj.weight";
    case Role::O:
      return "self_attn.o_proj.weight";
    case Role::QNorm:
      return "self_attn.q_norm.weight";
    case Role::KNorm:
      return "self_attn.k_norm.weight";
    case Role::Gate:
      return "mlp.gate_proj.weight";
    case Role::Up:
      return "mlp.up_proj.weight";
    case Role::Down:
      return "mlp.down_proj.weight";
    case Role::Embed:
      return "embed_tokens.weight";
    case Role::FinalNorm:
      return "norm.weight";
    case Role::LmHead:
      return "lm_head.weight";
    default:
      return nullptr;
  }
}

// One layer's attention plan.
struct LayerPlan {
  bool sliding = false;
  int64_t window = 0;  // keys visible to a query (itself included) on a sliding layer; 0 on full layers
  RopeConfig rope{10000.0, 1.0};
};

// A spec resolved against one config.json: every number concrete.
struct ModelDims {
  Family family = Family::Qwen3;
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0;
  int64_t max_positions = 0;  // max_position_embeddings: prompts + generations longer than this are refused
  double eps = 1e-6;
  double attn_scale = 0;     // query_pre_attn_scalar^-0.5
  double final_softcap = 0;  // 0: none
  double embed_scale = 0;    // 0: none; else sqrt(hidden) (rounded to T when applied)
  bool tied = false;
  std::vector<LayerPlan> layer;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id, pad_token_id;

  int64_t q_dim() const { return heads * head_dim; }
  int64_t kv_dim() const { return kv_heads * head_dim; }
  // The widest sliding window (0 when no layer slides): what a KV cache of a sliding layer keeps.
  int64_t max_window() const {
    int64_t w = 0;
    for (const auto& l : layer) w = l.sliding && l.window > w ? l.window : w;
    return w;
  }
};

namespace detail {

inline std::string num_str(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

// A fixed spec value must equal the config's; kFromConfig takes the config's.
template <class V>
V pick(V spec, V cfg, V from_config, const char* key, std::string_view source, const char* spec_name) {
  if (spec == from_config) return cfg;
  if (spec != cfg)
    throw Error(std::string(source) + ": " + key + " is " + num_str(static_cast<double>(cfg)) + " but the compiled " +
                spec_name + " spec expects " + num_str(static_cast<double>(spec)) +
                " (load it with the family spec to take any size from config.json)");
  return spec;
}

}  // namespace detail

// Resolves `Spec` against a parsed config; `source` (the config's path) prefixes every error.
template <TransformerSpec Spec>
ModelDims resolve(const io::ModelConfig& c, std::string_view source, const char* spec_name = "model") {
  using detail::pick;
  const bool qwen = Spec.family == Family::Qwen3;
  if ((c.arch == io::ModelArch::Qwen3) != qwen)
    throw Error(std::string(source) + ": the checkpoint is " + c.architecture + " but the compiled " + spec_name +
                " spec is " + family_name(Spec.family));
  if (c.attention_bias) throw Error(std::string(source) + ": attention_bias = true is not supported");
  if (c.attn_logit_softcapping)
    throw Error(std::string(source) + ": attn_logit_softcapping is not supported (Gemma3 checkpoints leave it null)");
  if (c.hidden_act != Spec.act)
    throw Error(std::string(source) + ": hidden activation \"" + c.hidden_act_name + "\" does not match the " +
                spec_name + " spec (" + (Spec.act == Activation::Silu ? "silu" : "gelu_pytorch_tanh") + ")");
  ModelDims d;
  d.family = Spec.family;
  d.layers = pick(Spec.layers, c.num_hidden_layers, kFromConfig, "num_hidden_layers", source, spec_name);
  d.hidden = pick(Spec.hidden, c.hidden_size, kFromConfig, "hidden_size", source, spec_name);
  d.heads = pick(Spec.heads, c.num_attention_heads, kFromConfig, "num_attention_heads", source, spec_name);
  d.kv_heads = pick(Spec.kv_heads, c.num_key_value_heads, kFromConfig, "num_key_value_heads", source, spec_name);
  d.head_dim = pick(Spec.head_dim, c.head_dim, kFromConfig, "head_dim", source, spec_name);
  d.ffn = pick(Spec.ffn, c.intermediate_size, kFromConfig, "intermediate_size", source, spec_name);
  d.vocab = pick(Spec.vocab, c.vocab_size, kFromConfig, "vocab_size", source, spec_name);
  d.eps = pick(Spec.eps, c.rms_norm_eps, kFromConfigF, "rms_norm_eps", source, spec_name);
  d.max_positions = c.max_position_embeddings;
  DISTILL_CHECK(d.head_dim % 2 == 0, source, ": head_dim ", d.head_dim, " must be even for rotary embeddings");
  DISTILL_CHECK(d.kv_heads > 0 && d.heads % d.kv_heads == 0, source, ": num_attention_heads ", d.heads,
                " is not a multiple of num_key_value_heads ", d.kv_heads);
  const double qpas = qwen ? static_cast<double>(d.head_dim) : c.query_pre_attn_scalar;
  d.attn_scale =
      std::pow(pick(Spec.query_pre_attn_scalar, qpas, kFromConfigF, "query_pre_attn_scalar", source, spec_name), -0.5);
  const double cap = c.final_logit_softcapping.value_or(kNoCap);
  d.final_softcap = pick(Spec.final_softcap, cap, kFromConfigF, "final_logit_softcapping", source, spec_name);
  if (d.final_softcap == kNoCap) d.final_softcap = 0;
  if (Spec.tied == Tied::FromConfig)
    d.tied = c.tie_word_embeddings;
  else if ((Spec.tied == Tied::Yes) != c.tie_word_embeddings)
    throw Error(std::string(source) + ": tie_word_embeddings is " + (c.tie_word_embeddings ? "true" : "false") +
                " but the compiled " + spec_name + " spec expects " + (Spec.tied == Tied::Yes ? "true" : "false"));
  else
    d.tied = Spec.tied == Tied::Yes;
  d.embed_scale = Spec.embed_scale ? std::sqrt(static_cast<double>(d.hidden)) : 0.0;
  d.eos_token_ids = c.eos_token_ids;
  d.bos_token_id = c.bos_token_id;
  d.pad_token_id = c.pad_token_id;

  DISTILL_CHECK(static_cast<int64_t>(c.layer_types.size()) == d.layers, source, ": layer_types has ",
                c.layer_types.size(), " entries for ", d.layers, " layers");
  d.layer.resize(static_cast<size_t>(d.layers));
  for (int64_t i = 0; i < d.layers; ++i) {
    LayerPlan& p = d.layer[static_cast<size_t>(i)];
    p.sliding = c.is_sliding(i);
    if constexpr (Spec.sliding_pattern != kFromConfig) {
      if (p.sliding != ((i + 1) % Spec.sliding_pattern != 0))
        throw Error(std::string(source) + ": layer " + std::to_string(i) + " is " + (p.sliding ? "sliding" : "full") +
                    " attention, but the compiled " + spec_name + " spec puts a full-attention layer every " +
                    std::to_string(Spec.sliding_pattern) + " layers");
    }
    const io::RopeParams& r = c.rope(i);
    const double theta =
        p.sliding ? pick(Spec.rope_local_theta, r.theta, kFromConfigF, "rope_local_base_freq", source, spec_name)
                  : pick(Spec.rope_theta, r.theta, kFromConfigF, "rope_theta", source, spec_name);
    p.rope = RopeConfig{theta, r.type == io::RopeType::Linear ? r.factor : 1.0};
    if (p.sliding) {
      if constexpr (Spec.family == Family::Qwen3) {
        throw Error(std::string(source) + ": layer " + std::to_string(i) +
                    " uses sliding-window attention (use_sliding_window); Qwen3 sliding windows are not supported");
      } else {
        DISTILL_CHECK(c.sliding_window.has_value() && *c.sliding_window > 0, source,
                      ": sliding layers need a positive sliding_window");
        p.window = pick(Spec.sliding_window, *c.sliding_window, kFromConfig, "sliding_window", source, spec_name);
      }
    }
  }
  return d;
}

}  // namespace distill::models
