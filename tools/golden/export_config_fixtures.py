#!/usr/bin/env python3
"""Exports config.json fixtures and the values transformers (5.24) resolves from them.

Reads  tests/golden/configs/hub/*.json       the hub config.json files of Qwen/Qwen3-4B-Thinking-2507 and
                                             google/gemma-3-1b-it (SPEC §1.7, §2.7; copied by hand)
Writes tests/golden/configs/variants/*.json  small configs that exercise defaults, legacy keys, linear RoPE,
                                             Qwen3 sliding layers, Gemma3 patterns and a Gemma3ForConditional-
                                             Generation text_config
       tests/golden/configs/v5/*.json        each of the above loaded by AutoConfig and saved by save_pretrained
                                             (transformers v5's form: rope_parameters, layer_types, dtype)
       tests/golden/configs/resolved.json    what transformers resolves for each: sizes, layer types, RoPE per
                                             layer type, eos ids, attention scale, ... (checked to be identical
                                             when the v5 file is loaded again)

Usage: tools/.venv/bin/python tools/golden/export_config_fixtures.py
"""
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import transformers
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "configs"

VARIANTS = {
    # Every Qwen3Config default.
    "qwen3-defaults": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"},
    # Every Gemma3TextConfig default (no architectures key at all).
    "gemma3-defaults": {"model_type": "gemma3_text"},
    # Qwen3 with sliding layers from max_window_layers, legacy rope_scaling with the old "type" key, kv heads null,
    # an eos list and transformers v5's "dtype".
    "qwen3-sliding-linear": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 1000, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": None,
        "head_dim": 16, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "use_sliding_window": True,
        "sliding_window": 64, "max_window_layers": 3, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "linear", "factor": 2.0}, "eos_token_id": [7, 8], "bos_token_id": 1,
        "pad_token_id": 0, "tie_word_embeddings": False, "dtype": "float32",
    },
    # Qwen3 in the new form written by hand: rope_parameters only, explicit layer_types with the legacy name.
    "qwen3-rope-parameters": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 500, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "layer_types": ["full_attention", "attention", "full_attention"], "torch_dtype": "bfloat16",
    },
    # Gemma3 with another pattern, legacy linear scaling (global layers only), other local base, softcaps.
    "gemma3-pattern-linear": {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 300, "hidden_size": 48,
        "intermediate_size": 96, "num_hidden_layers": 7, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 32, "sliding_window": 16, "sliding_window_pattern": 3, "rope_theta": 2000000.0,
        "rope_local_base_freq": 5000.0, "rope_scaling": {"rope_type": "linear", "factor": 4.0},
        "query_pre_attn_scalar": 24, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
        "eos_token_id": 1, "tie_word_embeddings": False,
    },
    # The layout of google/gemma-3-4b-it's config.json (Gemma3ForConditionalGeneration): the text model lives in
    # text_config and takes Gemma3TextConfig defaults for what it omits; the vision tower is irrelevant here.
    "gemma3-4b-conditional": {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "boi_token_index": 255999,
        "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
        "initializer_range": 0.02, "mm_tokens_per_image": 256,
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                        "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                        "sliding_window": 1024},
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
        "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                          "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                          "patch_size": 14, "vision_use_head": False},
    },
}


def resolve(config):
    """The values the C++ ModelConfig must match, as transformers resolves them."""
    top = config
    text = config.text_config if config.model_type == "gemma3" else config
    gemma = text.model_type == "gemma3_text"
    rp = text.rope_parameters
    per = {k: rp[k] for k in ("full_attention", "sliding_attention")} if gemma else {
        "full_attention": rp, "sliding_attention": rp}
    rope = {}
    for k, v in per.items():
        assert v["rope_type"] in ("default", "linear"), v
        rope[k] = {"rope_type": v["rope_type"], "rope_theta": float(v["rope_theta"]),
                   "factor": float(v["factor"]) if v["rope_type"] == "linear" else 1.0}
    eos = text.eos_token_id
    eos = [] if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])
    dtype = getattr(text, "dtype", None) or getattr(top, "dtype", None)
    return {
        "architecture": top.architectures[0] if top.architectures else None,
        "model_type": text.model_type,
        "nested_text_config": top is not text,
        "vocab_size": text.vocab_size, "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "head_dim": text.head_dim, "max_position_embeddings": text.max_position_embeddings,
        "rms_norm_eps": text.rms_norm_eps,
        "hidden_act": text.hidden_activation if gemma else text.hidden_act,
        "tie_word_embeddings": top.tie_word_embeddings, "attention_bias": text.attention_bias,
        "dtype": str(dtype) if dtype is not None else "",
        "bos_token_id": text.bos_token_id, "pad_token_id": text.pad_token_id, "eos_token_ids": eos,
        "layer_types": list(text.layer_types), "sliding_window": text.sliding_window,
        # Gemma3Attention: query_pre_attn_scalar ** -0.5; Qwen3Attention: head_dim ** -0.5.
        "attention_scale": (text.query_pre_attn_scalar if gemma else text.head_dim) ** -0.5,
        "query_pre_attn_scalar": float(text.query_pre_attn_scalar) if gemma else float(text.head_dim),
        "final_logit_softcapping": getattr(text, "final_logit_softcapping", None),
        "attn_logit_softcapping": getattr(text, "attn_logit_softcapping", None),
        "rope": rope,
    }


def compact_lists(text):
    """Puts each innermost JSON list on one line (small diffs, small files)."""
    return re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def main():
    shutil.rmtree(OUT / "variants", ignore_errors=True)
    shutil.rmtree(OUT / "v5", ignore_errors=True)
    (OUT / "variants").mkdir(parents=True)
    (OUT / "v5").mkdir()
    inputs = {}
    for f in sorted((OUT / "hub").glob("*.json")):
        inputs[f.stem] = f
    for name, cfg in VARIANTS.items():
        p = OUT / "variants" / f"{name}.json"
        p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        inputs[name] = p

    resolved = {"transformers_version": transformers.__version__, "configs": {}}
    for name, path in inputs.items():
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(path, Path(d) / "config.json")
            config = AutoConfig.from_pretrained(d)
            values = resolve(config)
            config.save_pretrained(Path(d) / "out")
            v5 = (Path(d) / "out" / "config.json").read_text()
            again = resolve(AutoConfig.from_pretrained(Path(d) / "out"))
        assert again == values, (name, again, values)
        (OUT / "v5" / f"{name}.json").write_text(v5)
        resolved["configs"][name] = {"input": str(path.relative_to(OUT)), "v5": f"v5/{name}.json", "values": values}
        print(f"{name}: {values['architecture']} layers={values['num_hidden_layers']} rope={values['rope']}")
    (OUT / "resolved.json").write_text(compact_lists(json.dumps(resolved, indent=1)) + "\n")


if __name__ == "__main__":
    sys.exit(main())
