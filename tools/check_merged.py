#!/usr/bin/env python3
"""Check a `distill merge` output against PEFT's merge_and_unload.

    tools/.venv/bin/python tools/check_merged.py --model BASE_DIR --adapter ADAPTER_DIR --merged OUR_DIR

Reference: transformers 5.24 loads BASE_DIR in f32, peft 0.21 attaches ADAPTER_DIR and merge_and_unload()
(W + scaling * B @ A in f32), then every weight is cast to bf16 (what `distill merge` writes). Checks:
  1. our model.safetensors holds the reference's tensors (names, shapes, bf16), each element equal or one bf16
     rounding step apart (B @ A sums r products in f32 in another order than torch: a last-bit difference can
     move a bf16 rounding), in at most 0.1% of a tensor's elements;
  2. transformers loads OUR_DIR (AutoModelForCausalLM) and, both upcast to f32, its logits are within 1e-3 of
     the largest |logit| of the reference's.
Exit 0 on success, 1 on a mismatch. Only a dense (bf16/f32) base is supported here: for a 4-bit base PEFT
re-quantizes on merge, while `distill merge` writes the dequantized, merged weights in bf16.
"""
import argparse
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged", required=True)
    ap.add_argument("--ids", default="1,5,9,200,17")
    a = ap.parse_args()
    base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    ref = PeftModel.from_pretrained(base, a.adapter).merge_and_unload().to(torch.bfloat16).eval()
    want = dict(ref.state_dict().items())
    got = load_file(f"{a.merged}/model.safetensors")
    bad = 0
    ulp_elems = 0
    for k, v in want.items():
        if k not in got:
            if k == "lm_head.weight" and ref.config.tie_word_embeddings:
                continue
            print(f"missing in ours: {k}")
            bad += 1
            continue
        g = got[k]
        if g.dtype != torch.bfloat16 or g.shape != v.shape:
            print(f"differs: {k} {tuple(g.shape)} {g.dtype} vs {tuple(v.shape)} {v.dtype}")
            bad += 1
            continue
        gf, vf = g.float(), v.float()
        diff = (gf - vf).abs()
        n_off = int((diff > 0).sum())
        ulp_elems += n_off
        # More than one bf16 step at the element's magnitude, or at 1e-6 of the tensor's largest value (elements
        # near zero, where a last f32 bit of W + delta is many bf16 ulps)
        step = torch.maximum(gf.abs(), vf.abs()) * 2.0**-7
        far = diff > torch.maximum(step, torch.full_like(step, 1e-6 * float(vf.abs().max())))
        if int(far.sum()) or n_off > 1e-3 * g.numel():
            print(f"differs: {k}: {n_off} of {g.numel()} elements differ, {int(far.sum())} by more than one bf16 step")
            bad += 1
    for k in sorted(set(got) - set(want)):
        print(f"extra in ours: {k}")
        bad += 1
    ours = AutoModelForCausalLM.from_pretrained(a.merged, attn_implementation="eager").eval()
    loaded_as = ours.dtype
    ours, ref = ours.float(), ref.float()
    ids = torch.tensor([[int(x) for x in a.ids.split(",")]])
    with torch.no_grad():
        lo, lr = ours(ids).logits, ref(ids).logits
    d = (lo - lr).abs().max().item() / lr.abs().max().item()
    print(f"{len(want)} reference tensors, {bad} problem(s), {ulp_elems} elements a bf16 rounding apart; logits max "
          f"|diff| / max |logit| {d:.3g} (ours loads as {loaded_as})")
    if bad or d > 1e-3:
        print("MISMATCH")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
