"""Checks logits produced with a LoRA adapter (e.g. by `distill logits --adapter`) against PEFT.

    tools/.venv/bin/python tools/check_peft_adapter.py --model DIR --adapter DIR --ids IDS --logits FILE
                                                      [--quantized] [--tol 1e-4]
    tools/.venv/bin/python tools/check_peft_adapter.py --model DIR --adapter DIR --ids IDS --self-test
                                                      [--quantized] [--write-logits FILE]

Reference: transformers 5.24 loads the base from --model in f32 with eager attention (with --quantized:
BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute dtype f32) on CPU, the QLoRA recipe of
tools/golden/lora.py), then peft.PeftModel.from_pretrained(base, --adapter) (adapter_model.safetensors +
adapter_config.json). Each row of ids is run on its own (batch 1, no padding, eval mode, no grad).

--adapter  a PEFT adapter dir, or a bare adapter .safetensors file (like tests/golden/lora/<case>/
           adapter_step<k>.safetensors) whose adapter_config.json is taken from --adapter-config DIR (default: the
           adapter_init/ dir beside the file).
--ids      JSON list of rows (lists of ints), inline or the path of a file holding it.
--logits   JSON file: {"logits": [[[V floats] per position] per row]}; a bare list instead of the object, and
           a single row given as [[V floats] per position], are accepted too.
Metric: max |ours - reference| over all rows/positions/vocab, divided by max |reference logit|; the check passes
when it is <= --tol (default 1e-4, for f32). Exit status 0 = match, 1 = mismatch, 2 = bad input.

--self-test computes the reference logits, writes them in the --logits format (to --write-logits or a temp
file), reads them back and checks that they pass, then perturbs one logit by 10*tol*max|logit| and checks that
the comparison fails. --write-logits also works without --self-test, to dump the reference logits.

bitsandbytes 0.50.2 switches Linear4bit, on CPUs with AVX512-BF16 in eval/no-grad forwards, to a repacked bf16
gemv; this script disables that (`support_avx512bf16_for_cpu = False`) so the base computes
F.linear(x, dequantize_4bit(W)) in f32, as in training.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch


def load_reference(model_dir, adapter_dir, quantized):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kw = {"dtype": torch.float32, "attn_implementation": "eager"}
    if quantized:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.float32)
        kw["device_map"] = "cpu"
    base = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    if quantized:
        import bitsandbytes as bnb

        n = 0
        for m in base.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = False
                n += 1
        if n == 0:
            raise SystemExit("--quantized: the base model has no bnb Linear4bit layer")
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return model


def resolve_adapter(adapter, config_dir, tmp):
    """Returns a directory PeftModel.from_pretrained can load."""
    if os.path.isdir(adapter):
        if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
            raise ValueError(f"--adapter {adapter}: no adapter_config.json in the directory")
        return adapter
    if not os.path.isfile(adapter) or not adapter.endswith(".safetensors"):
        raise ValueError(f"--adapter {adapter}: neither a directory nor a .safetensors file")
    config_dir = config_dir or os.path.join(os.path.dirname(adapter), "adapter_init")
    cfg = os.path.join(config_dir, "adapter_config.json")
    if not os.path.isfile(cfg):
        raise ValueError(f"--adapter {adapter} is a bare file and {cfg} does not exist (use --adapter-config DIR)")
    d = os.path.join(tmp, "adapter")
    os.makedirs(d)
    shutil.copyfile(cfg, os.path.join(d, "adapter_config.json"))
    shutil.copyfile(adapter, os.path.join(d, "adapter_model.safetensors"))
    return d


def reference_logits(model, rows):
    out = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row], dtype=torch.long)
            out.append(model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0].float())
    return out


def parse_ids(arg):
    text = arg
    if os.path.exists(arg):
        with open(arg) as f:
            text = f.read()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--ids: not JSON ({e})")
    if isinstance(rows, list) and rows and all(isinstance(x, int) for x in rows):
        rows = [rows]
    if not (isinstance(rows, list) and rows and all(isinstance(r, list) and r and
                                                    all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                                                    for r in rows)):
        raise ValueError("--ids: expected a non-empty list of non-empty lists of ints")
    return rows


def read_logits(path, rows, vocab):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read logits JSON ({e})")
    if isinstance(data, dict):
        if "logits" not in data:
            raise ValueError(f"{path}: object without a \"logits\" key")
        data = data["logits"]
    if isinstance(data, list) and data and isinstance(data[0], list) and data[0] and \
            not isinstance(data[0][0], list):
        data = [data]  # one row given as [T][V]
    if not isinstance(data, list) or len(data) != len(rows):
        raise ValueError(f"{path}: expected logits for {len(rows)} row(s), got "
                         f"{len(data) if isinstance(data, list) else type(data).__name__}")
    out = []
    for i, (got, row) in enumerate(zip(data, rows)):
        try:
            t = torch.tensor(got, dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: row {i}: not a rectangular list of numbers ({e})")
        if t.shape != (len(row), vocab):
            raise ValueError(f"{path}: row {i}: logits shape {tuple(t.shape)}, expected ({len(row)}, {vocab})")
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: row {i}: non-finite logits")
        out.append(t)
    return out


def write_logits(path, logits):
    with open(path, "w") as f:
        json.dump({"logits": [l.tolist() for l in logits]}, f)


def compare(ours, ref, tol):
    scale = max(float(r.abs().max()) for r in ref)
    worst, where = 0.0, None
    for i, (o, r) in enumerate(zip(ours, ref)):
        d = (o - r.double()).abs()
        m = float(d.max())
        if m > worst:
            flat = int(d.argmax())
            worst, where = m, (i, flat // d.shape[1], flat % d.shape[1])
    rel = worst / scale if scale > 0 else worst
    ok = rel <= tol
    msg = (f"{'MATCH' if ok else 'MISMATCH'}: max |diff| {worst:.3e} / max |logit| {scale:.4g} = {rel:.3e} "
           f"(tol {tol:g})")
    if where is not None:
        i, t, v = where
        msg += f"; worst at row {i} position {t} token {v}: ours {float(ours[i][t, v]):.7g} " \
               f"reference {float(ref[i][t, v]):.7g}"
    return ok, msg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--adapter-config")
    ap.add_argument("--ids", required=True)
    ap.add_argument("--logits")
    ap.add_argument("--quantized", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--write-logits")
    a = ap.parse_args(argv)
    if not a.self_test and not a.logits and not a.write_logits:
        ap.error("--logits FILE is required (or --self-test / --write-logits)")
    try:
        rows = parse_ids(a.ids)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            adapter = resolve_adapter(a.adapter, a.adapter_config, tmp)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        model = load_reference(a.model, adapter, a.quantized)
    vocab = model.get_output_embeddings().weight.shape[0]
    bad = [x for r in rows for x in r if not 0 <= x < vocab]
    if bad:
        print(f"error: --ids: id {bad[0]} outside the vocabulary [0, {vocab})", file=sys.stderr)
        return 2
    ref = reference_logits(model, rows)
    print(f"reference: {len(rows)} row(s), {sum(map(len, rows))} positions, vocab {vocab}, "
          f"{'nf4 ' if a.quantized else ''}base {a.model}, adapter {a.adapter}")

    if a.write_logits:
        write_logits(a.write_logits, ref)
        print(f"wrote reference logits to {a.write_logits}")

    if a.self_test:
        with tempfile.TemporaryDirectory() as tmp:
            path = a.write_logits or os.path.join(tmp, "logits.json")
            if not a.write_logits:
                write_logits(path, ref)
            ok, msg = compare(read_logits(path, rows, vocab), ref, a.tol)
            print("self-test, exact:", msg)
            if not ok:
                return 1
            bad_logits = [r.double().clone() for r in ref]
            scale = max(float(r.abs().max()) for r in ref)
            bad_logits[-1][-1, 0] += 10 * a.tol * scale
            ok2, msg2 = compare(bad_logits, ref, a.tol)
            print("self-test, perturbed:", msg2)
            if ok2:
                print("self-test FAILED: a perturbed logit was not detected", file=sys.stderr)
                return 1
            flat = os.path.join(tmp, "flat.json")
            with open(flat, "w") as f:
                json.dump(ref[0].tolist(), f)
            ok3, msg3 = compare(read_logits(flat, rows[:1], vocab), ref[:1], a.tol)
            print("self-test, flat one-row format:", msg3)
            if not ok3:
                return 1
        print("self-test passed")
        if not a.logits:
            return 0

    if a.logits:
        try:
            ours = read_logits(a.logits, rows, vocab)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ok, msg = compare(ours, ref, a.tol)
        print(msg)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
