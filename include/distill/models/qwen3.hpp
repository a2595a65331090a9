// Qwen3 (Qwen3ForCausalLM, SPEC §1): the family spec (any size, dimensions from config.json), the exact spec of
// Qwen3-4B-Thinking-2507 (the reference recipe's teacher), and the Hugging Face tensor names.
#pragma once
#include "distill/models/spec.hpp"

namespace distill::models::qwen3 {

// Any Qwen3ForCausalLM checkpoint (0.6B ... 8B dense): structure fixed, numbers from config.json.
inline constexpr TransformerSpec kFamily{.family = Family::Qwen3,
                                         .norm = RmsNormStyle::Weight,
                                         .sandwich_norms = false,
                                         .qk_norm = true,
                                         .embed_scale = false,
                                         .act = Activation::Silu,
                                         .sliding_window = kFromConfig,
                                         .final_softcap = kNoCap};

// Qwen/Qwen3-4B-Thinking-2507 (SPEC §1.7): every number fixed; a config.json that differs is refused.
inline constexpr TransformerSpec k4B_Thinking_2507{.family = Family::Qwen3,
                                                   .layers = 36,
                                                   .hidden = 2560,
                                                   .heads = 32,
                                                   .kv_heads = 8,
                                                   .head_dim = 128,
                                                   .ffn = 9728,
                                                   .vocab = 151936,
                                                   .norm = RmsNormStyle::Weight,
                                                   .sandwich_norms = false,
                                                   .qk_norm = true,
                                                   .embed_scale = false,
                                                   .act = Activation::Silu,
                                                   .rope_theta = 5000000.0,
                                                   .query_pre_attn_scalar = 128.0,
                                                   .final_softcap = kNoCap,
                                                   .tied = Tied::Yes,
                                                   .eps = 1e-6};

// Tensor name of a role, after the "model." prefix (block roles after "model.layers.N."); nullptr: Qwen3 has
// no such weight (no sandwich norms). LmHead is the top-level "lm_head.weight".
inline constexpr const char* hf_name(Role r) {
  return r == Role::MlpNorm ? "post_attention_layernorm.weight" : shared_hf_name(r);
}

}  // namespace distill::models::qwen3
