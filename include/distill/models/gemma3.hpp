// Gemma3 text models (Gemma3ForCausalLM, and the text half of Gemma3ForConditionalGeneration; SPEC §2): the
// family spec (270m ... 4B text and larger, dimensions from config.json), the exact spec of gemma-3-1b-it (the
// reference recipe's student), and the Hugging Face tensor names.
#pragma once
#include "distill/models/spec.hpp"

namespace distill::models::gemma3 {

// Any Gemma3 text checkpoint: sandwich norms, (1 + w) RMSNorm, gelu_tanh, scaled embeddings; numbers (window,
// both rope bases, query_pre_attn_scalar, softcap, layer pattern) from config.json.
inline constexpr TransformerSpec kFamily{.family = Family::Gemma3,
                                         .norm = RmsNormStyle::OnePlusWeight,
                                         .sandwich_norms = true,
                                         .qk_norm = true,
                                         .embed_scale = true,
                                         .act = Activation::GeluTanh};

// google/gemma-3-1b-it (SPEC §2.7): every number fixed.
inline constexpr TransformerSpec k1B_it{.family = Family::Gemma3,
                                        .layers = 26,
                                        .hidden = 1152,
                                        .heads = 4,
                                        .kv_heads = 1,
                                        .head_dim = 256,
                                        .ffn = 6912,
                                        .vocab = 262144,
                                        .norm = RmsNormStyle::OnePlusWeight,
                                        .sandwich_norms = true,
                                        .qk_norm = true,
                                        .embed_scale = true,
                                        .act = Activation::GeluTanh,
                                        .rope_theta = 1000000.0,
                                        .rope_local_theta = 10000.0,
                                        .sliding_window = 512,
                                        .sliding_pattern = 6,
                                        .query_pre_attn_scalar = 256.0,
                                        .final_softcap = kNoCap,
                                        .tied = Tied::Yes,
                                        .eps = 1e-6};

// Tensor name of a role, after the model prefix (block roles after "<prefix>layers.N."). Gemma3 ties the head
// to the embeddings; LmHead only appears in untied conversions.
inline constexpr const char* hf_name(Role r) {
  switch (r) {
    case Role::AttnPostNorm:
      return "post_attention_layernorm.weight";
    case Role::MlpNorm:
      return "pre_feedforward_layernorm.weight";
    case Role::MlpPostNorm:
      return "post_feedforward_layernorm.weight";
    default:
      return shared_hf_name(r);
  }
}

}  // namespace distill::models::gemma3
