"""Check that a bitsandbytes 4-bit checkpoint directory (e.g. what `distill quantize` writes) loads in
transformers on the CPU and gives the logits of a reference model for one prompt.

    tools/.venv/bin/python tools/check_bnb_load.py QUANT_DIR --ref REF_DIR [--quantize-ref] [--prompt 1,5,9]
        [--atol A] [--max-rel-rms R] [--cpu-gemv]

QUANT_DIR must hold config.json with a bitsandbytes "quantization_config" and the safetensors weights. It is
loaded with AutoModelForCausalLM.from_pretrained(device_map="cpu", eager attention); every weight of the
checkpoint must be used (no missing, unexpected or mismatched keys) and at least one Linear4bit created.

REF_DIR is one of:
  - another 4-bit checkpoint (e.g. tests/golden/nf4/qwen3_bnb, which transformers saved): exact agreement is
    expected — every Linear4bit's quant state and dequantized weight, and the logits (default --atol 0);
  - a bf16/f32 model with --quantize-ref: transformers quantizes it on load with QUANT_DIR's
    quantization_config, so the same exact agreement is expected;
  - a bf16/f32 model without --quantize-ref: compared as is; only quantization error separates the two, so
    the check is the relative RMS difference of the logits (default --max-rel-rms 0.4: NF4 gives ~0.12 and
    FP4 ~0.25 on the tiny Qwen3, swapped nibbles ~0.86) unless --atol is given. transformers quantizes on
    load with blocksize 64 only, so a QUANT_DIR with another blocksize never matches --quantize-ref exactly.

The CPU forward uses bnb's dequantize-then-matmul path: on AVX512-BF16 CPUs bnb would otherwise repack each
weight with bf16 scales for its CPU GEMM kernel (--cpu-gemv keeps that). Prints the comparison; exits 0 when
it passes, 1 on a mismatch, 2 when a checkpoint does not load as expected.
"""
import argparse
import json
import os
import sys

import torch


def load(path, quantization_config=None):
    from transformers import AutoModelForCausalLM

    kw = {"device_map": "cpu", "attn_implementation": "eager", "output_loading_info": True}
    if quantization_config is not None:
        kw["quantization_config"] = quantization_config
    model, info = AutoModelForCausalLM.from_pretrained(path, **kw)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    return model.eval(), problems


def linear4bit(model):
    import bitsandbytes as bnb

    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def dequantized(mod):
    import bitsandbytes.functional as F

    st = mod.weight.quant_state
    absmax = st.absmax
    if st.nested:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    # The formula (bnb's default backend): its native CPU kernel mis-indexes scales when the last dimension is
    # not a multiple of blocksize.
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    fn = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)
    return fn(mod.weight.data.reshape(-1), absmax.float(), _get_4bit_code(st.quant_type, "cpu"), st.blocksize,
              st.shape, torch.float32)


def state_summary(mod):
    st = mod.weight.quant_state
    return {"quant_type": st.quant_type, "blocksize": st.blocksize, "dtype": str(st.dtype), "shape": list(st.shape),
            "nested": bool(st.nested), "offset": float(st.offset) if st.nested else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("quant_dir")
    ap.add_argument("--ref", required=True, help="reference model directory")
    ap.add_argument("--quantize-ref", action="store_true", help="quantize REF with QUANT_DIR's quantization_config")
    ap.add_argument("--prompt", default="1,5,9,200,17", help="comma-separated token ids")
    ap.add_argument("--atol", type=float, default=None, help="max |logit difference| allowed")
    ap.add_argument("--max-rel-rms", type=float, default=0.4, help="for a non-quantized reference")
    ap.add_argument("--cpu-gemv", action="store_true", help="keep bnb's AVX512-BF16 CPU weight repacking")
    args = ap.parse_args(argv)

    with open(os.path.join(args.quant_dir, "config.json")) as f:
        qcfg = json.load(f).get("quantization_config")
    if not qcfg or qcfg.get("quant_method") != "bitsandbytes" or not qcfg.get("load_in_4bit"):
        print(f"FAIL: {args.quant_dir}/config.json has no bitsandbytes 4-bit quantization_config: {qcfg}")
        return 2
    try:
        model, problems = load(args.quant_dir)
    except Exception as e:  # transformers raises many kinds for a broken checkpoint
        print(f"FAIL: {args.quant_dir} does not load: {type(e).__name__}: {e}")
        return 2
    q_mods = linear4bit(model)
    if problems or not q_mods:
        print(f"FAIL: {args.quant_dir} did not load as a 4-bit model: {problems or 'no Linear4bit modules'}")
        return 2
    print(f"{args.quant_dir}: {len(q_mods)} Linear4bit modules, quantization_config {json.dumps(qcfg)}")

    ref_qc = None
    if args.quantize_ref:
        from transformers import BitsAndBytesConfig

        ref_qc = BitsAndBytesConfig.from_dict(dict(qcfg))
    try:
        ref, problems = load(args.ref, ref_qc)
    except Exception as e:
        print(f"FAIL: reference {args.ref} does not load: {type(e).__name__}: {e}")
        return 2
    if problems:
        print(f"FAIL: reference {args.ref} did not load cleanly: {problems}")
        return 2
    r_mods = linear4bit(ref)
    ref_quantized = bool(r_mods)
    if not args.cpu_gemv:
        for m in list(q_mods.values()) + list(r_mods.values()):
            m.support_avx512bf16_for_cpu = False

    failed = False
    if ref_quantized:
        if set(q_mods) != set(r_mods):
            print(f"FAIL: Linear4bit modules differ: only here {sorted(set(q_mods) - set(r_mods))}, "
                  f"only in the reference {sorted(set(r_mods) - set(q_mods))}")
            failed = True
        bad = 0
        for name in sorted(set(q_mods) & set(r_mods)):
            a, b = state_summary(q_mods[name]), state_summary(r_mods[name])
            wa, wb = dequantized(q_mods[name]), dequantized(r_mods[name])
            if a != b or not torch.equal(wa, wb):
                bad += 1
                if bad <= 5:
                    print(f"  mismatch {name}: {a} vs {b}; max |dw| {float((wa - wb).abs().max()):.3g}")
        print(f"dequantized Linear4bit weights: {len(q_mods) - bad}/{len(q_mods)} identical to the reference")
        failed |= bad > 0
        # Everything else (embeddings, norms, lm_head) must match too.
        rs = ref.state_dict()
        for k, v in model.state_dict().items():
            if any(k.startswith(n + ".weight") for n in q_mods) or k not in rs or not isinstance(v, torch.Tensor):
                continue
            if v.dtype != rs[k].dtype or v.shape != rs[k].shape or not torch.equal(v, rs[k]):
                print(f"  mismatch {k}")
                failed = True

    ids = torch.tensor([[int(t) for t in args.prompt.split(",")]])
    with torch.no_grad():
        lq = model(ids).logits[0].float()
        lr = ref(ids).logits[0].float()
    diff = (lq - lr).abs()
    rel_rms = float(((lq - lr) ** 2).mean().sqrt() / (lr ** 2).mean().sqrt().clamp(min=1e-30))
    agree = float((lq.argmax(-1) == lr.argmax(-1)).float().mean())
    print(f"logits {tuple(lq.shape)}: max |diff| {float(diff.max()):.6g}, relative RMS {rel_rms:.4g}, "
          f"argmax agreement {agree:.0%} (reference {'4-bit' if ref_quantized else 'not quantized'})")
    if args.atol is not None or ref_quantized:
        atol = 0.0 if args.atol is None else args.atol
        if float(diff.max()) > atol:
            print(f"FAIL: max |logit difference| {float(diff.max()):.6g} > {atol}")
            failed = True
    elif rel_rms > args.max_rel_rms:
        print(f"FAIL: relative RMS difference {rel_rms:.4g} > {args.max_rel_rms}")
        failed = True
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
