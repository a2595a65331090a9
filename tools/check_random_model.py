#!/usr/bin/env python3
"""Checks a `distill random-model` checkpoint against transformers: it loads with no missing or unexpected
tensors, the weights have the stated distribution, and transformers' f32 logits equal `distill logits`.

    tools/.venv/bin/python tools/check_random_model.py --distill build/dev/apps/distill/distill

Writes small versions (1-2 layers, vocabulary 512, real hidden sizes) of both presets into a temp dir.
"""
import argparse
import json
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM


def check(distill, preset, layers, tmp):
    out = f"{tmp}/{preset}"
    subprocess.run([distill, "random-model", "--preset", preset, "--out", out, "--layers", str(layers),
                    "--vocab", "512", "--seed", "3"], check=True)
    model, info = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"{preset}: transformers reports {bad}")
    w = model.model.layers[0].mlp.up_proj.weight
    print(f"{preset}: loaded by transformers; up_proj mean {w.mean().item():.2e} std {w.std().item():.5f}")
    ids = [2, 17, 300, 511, 42, 7]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    ours = subprocess.run([distill, "logits", "--model", out], input=json.dumps(ids), capture_output=True,
                          text=True, check=True).stdout
    got = torch.tensor(json.loads(ours)["logits"])
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    print(f"{preset}: logits [{len(ids)}, 512], max |ours - transformers| / max |logit| = {err:.2e}")
    if err > 1e-4:
        sys.exit(f"{preset}: logits differ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distill", required=True, help="path of the distill binary")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        check(a.distill, "qwen3-4b-thinking-2507", 1, tmp)
        check(a.distill, "gemma-3-1b-it", 2, tmp)
    print("ok")


if __name__ == "__main__":
    main()
