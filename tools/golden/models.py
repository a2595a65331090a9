"""Tiny random Qwen3ForCausalLM and Gemma3ForCausalLM checkpoints with reference logits and greedy generations,
for the C++ model templates (issue 5). Reference: transformers 5.24 + torch (eager attention).

    tools/.venv/bin/python tools/golden/models.py      # -> tests/golden/models/<name>/

Each model directory is what `save_pretrained` writes (config.json, model.safetensors in bf16,
generation_config.json) plus:
  - reference.safetensors: for every prompt i, `logits_f32.<i>` [T, V] (weights upcast to f32, f32 eager
    forward) and `logits_bf16.<i>` [T, V] (bf16 weights and activations, eager, logits upcast to f32);
    `prompt.<i>` (I64 ids); `hidden_f32.<i>.<layer>` [T, H] the hidden states HF returns per layer.
  - reference.json: prompts, greedy generations (ids, f32 and bf16, with the stop ids used), and the versions.

The weights are random with a larger spread than HF's init (std 0.02 would make every logit ~0 and the test
weak); every value is a bf16 number, so the f32 and bf16 loads hold the same weights. The shapes exercise
grouped-query heads, q/k norms, an untied (Qwen3) and a tied (Gemma3) head, and — for Gemma3 — a sliding
window shorter than the longest prompt, both rope bases, query_pre_attn_scalar != head_dim and a final logit
softcap on a second variant.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "golden", "models")

PROMPTS = [[1, 5, 9, 200, 17], list(range(3, 16)), [7, 7, 7, 250, 3, 100, 42, 42, 9, 11, 60, 61, 62, 63, 1, 2, 90, 91, 92, 93]]
MAX_NEW = 12


def qwen3_config():
    return Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, bos_token_id=1,
                       eos_token_id=[2, 3], pad_token_id=0, attention_bias=False, hidden_act="silu")


def gemma3_config(softcap=None):
    return Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                            rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                            sliding_window=6, sliding_window_pattern=2, query_pre_attn_scalar=24,
                            final_logit_softcapping=softcap, attn_logit_softcapping=None,
                            tie_word_embeddings=True, bos_token_id=2, eos_token_id=[1, 106 % 256], pad_token_id=0,
                            hidden_activation="gelu_pytorch_tanh")


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    gemma = "gemma" in type(model).__name__.lower()
    # Gemma3 scales embeddings by sqrt(hidden) (8 here) and its post-norms bring each block's output to ~unit
    # RMS: a smaller embedding spread keeps the blocks' contribution visible in the logits (with 0.5 the tied
    # head just repeats the last input token).
    embed_std = 0.08 if gemma else 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norm weights: Qwen3 multiplies by w (around 1), Gemma3 by 1 + w (around 0)
                v = (0.0 if gemma else 1.0) + 0.2 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) * (0.6 / p.shape[-1] ** 0.5 if "embed" not in name else embed_std)
            p.copy_(v.to(torch.bfloat16).to(p.dtype))


def export(name, cls, cfg, seed):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = cls(cfg).to(torch.float32).eval()
    randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    ref = {"name": name, "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
           "prompts": PROMPTS, "generate": []}
    tensors = {}
    for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        m = cls.from_pretrained(d, dtype=dtype, attn_implementation="eager").eval()
        for i, p in enumerate(PROMPTS):
            ids = torch.tensor([p])
            with torch.no_grad():
                out = m(ids, output_hidden_states=True)
            tensors[f"logits_{tag}.{i}"] = out.logits[0].float().contiguous()
            if tag == "f32":
                tensors[f"prompt.{i}"] = ids[0].to(torch.int64).contiguous()
                for layer, h in enumerate(out.hidden_states):
                    tensors[f"hidden_f32.{i}.{layer}"] = h[0].float().contiguous()
            with torch.no_grad():
                gen = m.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=cfg.eos_token_id,
                                 pad_token_id=cfg.pad_token_id, attention_mask=torch.ones_like(ids))
            ref["generate"].append({"dtype": tag, "prompt": i, "eos_token_id": cfg.eos_token_id,
                                    "max_new_tokens": MAX_NEW, "output": gen[0, len(p):].tolist()})
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(name, "params", sum(p.numel() for p in model.parameters()))


def main():
    export("qwen3_tiny", Qwen3ForCausalLM, qwen3_config(), 1)
    export("gemma3_tiny", Gemma3ForCausalLM, gemma3_config(), 2)
    export("gemma3_tiny_softcap", Gemma3ForCausalLM, gemma3_config(softcap=5.0), 3)


if __name__ == "__main__":
    sys.exit(main())
