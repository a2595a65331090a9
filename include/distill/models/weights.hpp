// The weights of a Transformer (frozen Vars, so gradients still flow through them to their inputs), and
// loading them from a Hugging Face checkpoint (config.json + safetensors, sharded or not, tied or untied).
//
// Loading is strict: every tensor the spec needs must be present with exactly the expected shape, and every
// tensor in the checkpoint must be one the model uses (a Gemma3ForConditionalGeneration's vision tower and
// projector, and an lm_head.weight next to tied embeddings, are the only ones passed over). Each problem is one
// distill::Error naming the tensor, its shape and the checkpoint. Weights are converted to T once (bf16 stays
// bf16 in memory: T = bf16 copies the bytes' values without a detour through f32).
#pragma once
#include <set>
#include <string>
#include <vector>

#include "distill/autograd/var.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/models/spec.hpp"
#include "distill/nn/linear.hpp"
#include "distill/quant/bnb.hpp"

namespace distill::models {

// Whether a role is one of the seven projections (the rest are norms).
inline constexpr bool is_projection(Role r) {
  return r == Role::Q || r == Role::K || r == Role::V || r == Role::O || r == Role::Gate || r == Role::Up ||
         r == Role::Down;
}

template <class T, class D = Cpu>
struct BlockWeights {
  Var<T, D> attn_norm, attn_post_norm, mlp_norm, mlp_post_norm;  // post norms: sandwich specs only
  Var<T, D> q_norm, k_norm;                                      // q/k norms: qk_norm specs only
  nn::Linear<T, D> q, k, v, o, gate, up, down;                   // dense or 4-bit, with optional LoRA

  Var<T, D>& norm(Role r) {
    switch (r) {
      case Role::AttnNorm:
        return attn_norm;
      case Role::AttnPostNorm:
        return attn_post_norm;
      case Role::MlpNorm:
        return mlp_norm;
      case Role::MlpPostNorm:
        return mlp_post_norm;
      case Role::QNorm:
        return q_norm;
      case Role::KNorm:
        return k_norm;
      default:
        throw Error("BlockWeights::norm: role is a projection, not a norm");
    }
  }
  nn::Linear<T, D>& proj(Role r) {
    switch (r) {
      case Role::Q:
        return q;
      case Role::K:
        return k;
      case Role::V:
        return v;
      case Role::O:
        return o;
      case Role::Gate:
        return gate;
      case Role::Up:
        return up;
      case Role::Down:
        return down;
      default:
        throw Error("BlockWeights::proj: role is a norm, not a projection");
    }
  }
  const nn::Linear<T, D>& proj(Role r) const { return const_cast<BlockWeights*>(this)->proj(r); }
};

template <class T, class D = Cpu>
struct ModelWeights {
  Var<T, D> embed;       // [vocab, hidden]
  Var<T, D> final_norm;  // [hidden]
  Var<T, D> lm_head;     // [vocab, hidden]; the same Var as embed when tied
  std::vector<BlockWeights<T, D>> blocks;
  std::string prefix = "model.";  // the checkpoint's prefix of "layers.N..." (adapters and exports reuse it)
};

// How projections are loaded: as stored (dense, or 4-bit when the checkpoint is bitsandbytes-quantized), or
// quantized on load (QLoRA: a bf16 checkpoint becomes NF4 with double quant, as transformers'
// BitsAndBytesConfig(load_in_4bit=True) does; the lm_head, embeddings and norms stay in T).
struct LoadOptions {
  bool quantize = false;
  quant::QuantType qtype = quant::QuantType::Nf4;
  int64_t blocksize = 64;
  bool double_quant = true;
};

// The Hugging Face name of a role (nullptr: the family has no such weight).
inline const char* hf_name(Family f, Role r) { return f == Family::Qwen3 ? qwen3::hf_name(r) : gemma3::hf_name(r); }

// Whether a spec's block has a weight for this role.
inline bool block_has(const TransformerSpec& s, Role r) {
  if (r == Role::AttnPostNorm || r == Role::MlpPostNorm) return s.sandwich_norms;
  if (r == Role::QNorm || r == Role::KNorm) return s.qk_norm;
  return true;
}

// Expected shape of a role's weight.
inline Shape role_shape(const ModelDims& d, Role r) {
  switch (r) {
    case Role::AttnNorm:
    case Role::AttnPostNorm:
    case Role::MlpNorm:
    case Role::MlpPostNorm:
    case Role::FinalNorm:
      return {d.hidden};
    case Role::QNorm:
    case Role::KNorm:
      return {d.head_dim};
    case Role::Q:
      return {d.q_dim(), d.hidden};
    case Role::K:
    case Role::V:
      return {d.kv_dim(), d.hidden};
    case Role::O:
      return {d.hidden, d.q_dim()};
    case Role::Gate:
    case Role::Up:
      return {d.ffn, d.hidden};
    case Role::Down:
      return {d.hidden, d.ffn};
    case Role::Embed:
    case Role::LmHead:
      return {d.vocab, d.hidden};
  }
  return {};
}

namespace detail {

inline std::string shape_str(const std::vector<int64_t>& s) { return Shape::from_range(s.begin(), s.end()).str(); }

// The prefix in front of "embed_tokens.weight": "model." (CausalLM), or the language model's inside a
// Gemma3ForConditionalGeneration ("model.language_model." from transformers 5, "language_model.model." before).
inline std::string find_prefix(const io::Checkpoint& ck) {
  for (const char* p : {"model.", "model.language_model.", "language_model.model."})
    if (ck.find(std::string(p) + "embed_tokens.weight")) return p;
  throw Error(ck.path() + ": no embed_tokens.weight under model., model.language_model. or language_model.model. — " +
              "not a Qwen3/Gemma3 causal-LM checkpoint");
}

// Tensors a checkpoint may hold that the text model does not use.
inline bool ignorable(const std::string& name, bool tied) {
  if (tied && (name == "lm_head.weight" || name == "language_model.lm_head.weight")) return true;
  for (const char* p :
       {"vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."})
    if (name.rfind(p, 0) == 0) return true;
  return name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
}

}  // namespace detail

// Loads the weights `Spec` needs from a checkpoint whose config resolved to `d`.
template <TransformerSpec Spec, FloatingDtype T, class D = Cpu>
ModelWeights<T, D> load_weights(const io::Checkpoint& ck, const ModelDims& d, const LoadOptions& opt = {}) {
  const std::string prefix = detail::find_prefix(ck);
  std::set<std::string> used;
  auto check = [&](const std::string& name, const Shape& want) {
    const io::TensorInfo* info = ck.find(name);
    if (!info)
      throw Error(ck.path() + ": missing tensor " + name + " (expected shape " + want.str() + ", " +
                  family_name(d.family) + " with " + std::to_string(d.layers) + " layers)");
    const Shape got = Shape::from_range(info->shape.begin(), info->shape.end());
    if (got != want)
      throw Error(ck.path() + ": tensor " + name + " has shape " + got.str() + ", expected " + want.str() +
                  " from config.json");
    used.insert(name);
  };
  auto take = [&](const std::string& name, const Shape& want) -> Var<T, D> {
    check(name, want);
    Tensor<T> host = ck.template load<T>(name);
    if constexpr (std::is_same_v<D, Cpu>)
      return Var<T, D>(host, false);
    else
      return Var<T, D>(host.template to<D>(), false);
  };
  // A projection: bitsandbytes 4-bit as stored, dense, or quantized here from the stored values.
  auto take_proj = [&](const std::string& name, const Shape& want) -> nn::Linear<T, D> {
    if (quant::is_bnb_quantized(ck, name)) {
      auto q = std::make_shared<quant::Quant4>(quant::load_bnb(ck, name));
      const Shape got = Shape::from_range(q->shape.begin(), q->shape.end());
      if (got != want)
        throw Error(ck.path() + ": 4-bit tensor " + name + " has shape " + got.str() + ", expected " + want.str() +
                    " from config.json");
      for (const io::TensorInfo* t : ck.tensors())
        if (t->name == name || t->name.rfind(name + ".", 0) == 0) used.insert(t->name);
      return nn::Linear<T, D>(std::shared_ptr<const quant::Quant4>(std::move(q)));
    }
    if (!opt.quantize) return nn::Linear<T, D>(take(name, want));
    check(name, want);
    const io::StDtype stored = ck.info(name).dtype;
    DISTILL_CHECK(stored == io::StDtype::BF16 || stored == io::StDtype::F16 || stored == io::StDtype::F32, ck.path(),
                  ": cannot quantize ", name, " stored as ", io::dtype_name(stored), " (need BF16, F16 or F32)");
    // transformers quantizes the weight as loaded in the model's dtype, and bitsandbytes dequantizes back to it:
    // the quant state's dtype is T's (f32 for an f32 model of a bf16 checkpoint).
    const Tensor<float> src = ck.template load<T>(name).template cast<float>();
    const io::StDtype dtype = std::is_same_v<T, bf16>  ? io::StDtype::BF16
                              : std::is_same_v<T, f16> ? io::StDtype::F16
                                                       : io::StDtype::F32;
    return nn::Linear<T, D>(std::make_shared<const quant::Quant4>(
        quant::quantize_4bit(src.data(), {want[0], want[1]}, opt.qtype, opt.blocksize, opt.double_quant, dtype)));
  };
  ModelWeights<T, D> w;
  w.prefix = prefix;
  w.embed = take(prefix + hf_name(Spec.family, Role::Embed), role_shape(d, Role::Embed));
  w.final_norm = take(prefix + hf_name(Spec.family, Role::FinalNorm), role_shape(d, Role::FinalNorm));
  w.blocks.resize(static_cast<size_t>(d.layers));
  for (int64_t l = 0; l < d.layers; ++l) {
    const std::string lp = prefix + "layers." + std::to_string(l) + ".";
    for (Role r : kBlockRoles) {
      if (!block_has(Spec, r)) continue;
      auto& b = w.blocks[static_cast<size_t>(l)];
      if (is_projection(r))
        b.proj(r) = take_proj(lp + hf_name(Spec.family, r), role_shape(d, r));
      else
        b.norm(r) = take(lp + hf_name(Spec.family, r), role_shape(d, r));
    }
  }
  if (d.tied) {
    w.lm_head = w.embed;
  } else {
    // transformers 5 keeps lm_head at the top level for both layouts; older multimodal files nest it.
    const std::string head = ck.find("lm_head.weight") || prefix != "language_model.model."
                                 ? "lm_head.weight"
                                 : "language_model.lm_head.weight";
    w.lm_head = take(head, role_shape(d, Role::LmHead));
  }
  for (const io::TensorInfo* t : ck.tensors())
    if (!used.count(t->name) && !detail::ignorable(t->name, d.tied))
      throw Error(ck.path() + ": unexpected tensor " + t->name + " " + detail::shape_str(t->shape) + " — the " +
                  family_name(d.family) + " model with " + std::to_string(d.layers) +
                  " layers from config.json does not use it (config and weights disagree?)");
  return w;
}

}  // namespace distill::models
