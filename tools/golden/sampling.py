#!/usr/bin/env python3
"""Export sampling-warper fixtures: what HF transformers' `generate` does to fp32 logits before it samples.

    tools/.venv/bin/python tools/golden/sampling.py [--out tests/golden/sampling/warpers.json]

Reference: transformers 5.24 (torch CPU). The processors are not built by hand: the script asks
`GenerationMixin._get_logits_processor` itself (on a stub object; with these settings it reads only the
GenerationConfig) for the list `generate(do_sample=True, ...)` would use, so the fixture also pins the order
(temperature -> top-k -> top-p -> min-p) and the on/off rules (temperature 1, top_k 0, top_p 1 and min_p None add
no warper). Every parameter is a float32 value, passed to HF as that exact value, because the C++
`SamplingParams` holds floats (top_p's threshold `1 - top_p` depends on the low bits).

Writes one JSON file (values are float32, written as their shortest decimal; null = -inf):
  cases:       small logit vectors (V = 12..50) with the processor names HF chose and HF's output logits.
  large_cases: V = 5000 logits from an integer formula both sides compute exactly,
                 k = (i * 7919) % V;  q = k + (k * k) // V;  logit[i] = q / 1024 - 5   (exact in float32)
               with HF's surviving set as a hex bit mask (bit i of the mask = token i kept; hex digit j holds
               tokens 4j..4j+3, least significant bit first), the kept count and the sum of kept outputs.
  argmax:      torch.argmax of vectors with ties (the first maximal index) for the greedy path.

Checks made here so that the fixture does not hang on float rounding that the C++ side may legitimately do
differently (its exp and its summation order are not torch's):
  - top-p: every cumulative probability is at least 1e-6 away from the threshold 1 - top_p, unless the case is
    marked exact (all probabilities are powers of two, so every implementation computes the same numbers);
  - min-p: every probability is at least 1e-5 (relative) away from min_p * max_prob, except the maximum itself;
  - tied logits split between kept and removed (only top-p can do that, via torch.sort's order among ties) occur
    only for V <= 16, where torch's CPU sort is an insertion sort and therefore stable: among tied logits the lower
    index comes first in the ascending order and is removed first.
"""
import argparse
import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import GenerationConfig
from transformers.generation.utils import GenerationMixin

ROOT = pathlib.Path(__file__).resolve().parents[2]
F32 = np.float32


def f32(x):
    """The float32 value of x, as a Python float (exactly what the C++ float holds)."""
    return float(F32(x))


def short(x):
    """Shortest decimal that reads back as the same float32 (as a Python float, so json writes it short)."""
    return float(str(F32(x)))


class _Stub(GenerationMixin):
    """Enough of a model for _get_logits_processor when only sampling warpers are configured."""


def hf_processors(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    gc = GenerationConfig(
        do_sample=True,
        temperature=f32(temperature),
        top_k=int(top_k),  # GenerationConfig's default is 50: pass 0 to switch top-k off
        top_p=f32(top_p),
        min_p=f32(min_p) if min_p > 0 else None,
    )
    stub = _Stub.__new__(_Stub)
    return stub._get_logits_processor(gc, device="cpu")


def run_hf(logits, params, exact=False):
    """HF's processed logits plus the self-checks described in the module docstring."""
    procs = hf_processors(**params)
    scores = torch.tensor(np.asarray(logits, dtype=F32)).reshape(1, -1)
    ids = torch.zeros((1, 1), dtype=torch.long)
    names = []
    for p in procs:
        name = type(p).__name__
        names.append(name)
        if name == "TopPLogitsWarper" and not exact:
            s, _ = torch.sort(scores, descending=False)
            cum = s.softmax(-1).cumsum(-1).double()
            thr = float(torch.tensor(1 - p.top_p, dtype=torch.float32))
            margin = (cum - thr).abs()
            margin[..., -1] = 1.0  # the last (largest) token is always kept
            assert margin.min() > 1e-6, f"top-p threshold too close to a cumulative prob: {margin.min()}"
        if name == "MinPLogitsWarper":
            probs = scores.softmax(-1)
            top = probs.amax(-1, keepdim=True)
            thr = (p.min_p * top).double()
            rel = ((probs.double() - thr).abs() / thr).squeeze(0)
            rel[probs.squeeze(0) == top.squeeze(0)] = 1.0
            assert rel.min() > 1e-5, f"min-p threshold too close to a probability: {rel.min()}"
        scores = p(ids, scores)
        names[-1] += f"({int(torch.isfinite(scores).sum())})"  # survivors after this warper, for the log only
    out = scores.squeeze(0).numpy()
    # A tie split between kept and removed is only allowed where torch's CPU sort is stable (V <= 16).
    inp = np.asarray(logits, dtype=F32)
    kept = np.isfinite(out)
    removed = ~kept & np.isfinite(inp)
    split = set(inp[kept].tolist()) & set(inp[removed].tolist())
    assert not split or len(inp) <= 16, f"tie split at logits {split} with V={len(inp)} (unstable torch.sort)"
    return [n.split("(")[0] for n in names], out, names


def enc(v):
    return [None if np.isneginf(x) else short(x) for x in np.asarray(v, dtype=F32)]


def grid(rng, n, scale, step=1 / 512):
    """Distinct random logits on a 1/512 grid (exact in float32, short in JSON); ties are added on purpose."""
    while True:
        v = (np.round(rng.normal(0.0, scale, n) / step) * step).astype(F32)
        if len(set(v.tolist())) == n:
            return v


def small_cases():
    rng = np.random.default_rng(20240607)
    ninf = -np.inf
    cases = []

    def add(name, logits, exact=False, **params):
        names, out, log = run_hf(logits, params, exact)
        print(f"{name:32s} V={len(logits):<3d} {' '.join(log) or '-'}")
        prm = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        prm.update(params)
        prm = {k: (int(v) if k == "top_k" else short(v)) for k, v in prm.items()}
        cases.append({"name": name, "params": prm, "processors": names, "logits": enc(logits), "expected": enc(out)})

    base12 = grid(rng, 12, 2.0)
    add("no_warpers", base12)
    add("top_p_one_is_off", base12, top_p=1.0)
    add("temperature_0.7", base12, temperature=0.7)
    # Ties at the k-th value survive: three copies of the 5th largest value.
    t = grid(rng, 20, 1.0)
    t[[3, 9, 14]] = 4.5
    t[[1, 7, 11, 17]] = [6.0, 5.5, 5.25, 5.0]
    add("top_k_5_ties_at_kth", t, top_k=5)
    add("top_k_1", t, top_k=1)
    t2 = t.copy()
    t2[[2, 8]] = 6.0  # the maximum three times: top-1 keeps all three
    add("top_k_1_tied_max", t2, top_k=1)
    m = grid(rng, 16, 2.0)
    m[[0, 5, 6, 12]] = ninf
    add("top_k_3_with_neg_inf", m, top_k=3)
    add("top_k_above_finite_count", m, top_k=14)  # 12 finite: the 14th value is -inf, nothing is removed
    add("top_k_above_vocab", base12, top_k=100)
    add("top_p_0.9", grid(rng, 30, 2.0), top_p=0.9)
    add("top_p_0.5", grid(rng, 40, 1.5), top_p=0.5)
    add("top_p_tiny", grid(rng, 24, 1.0), top_p=1e-6)  # only the most likely token survives
    add("top_p_0.999", grid(rng, 32, 2.5), top_p=0.999)
    # Exact case: 16 equal logits, every probability 1/16: cumsum k/16 <= 0.5 removes the 8 lowest indices.
    add("top_p_0.5_all_tied", np.full(16, 0.75, dtype=F32), exact=True, top_p=0.5)
    add("top_p_0.75_all_tied", np.full(16, -1.25, dtype=F32), exact=True, top_p=0.75)
    # Finite logits whose probability underflows to 0 are removed by top-p (cumsum 0 <= 1 - top_p) as are -inf.
    u = grid(rng, 14, 1.0)
    u[[2, 4, 9]] = [-150.0, -200.0, -120.0]
    u[[6, 11]] = ninf
    add("top_p_underflow_and_neg_inf", u, top_p=0.97)
    add("min_p_0.1", grid(rng, 40, 2.0), min_p=0.1)
    add("min_p_1.0_tied_max", t2, min_p=1.0)
    add("min_p_0.05_temperature_1.5", grid(rng, 36, 2.0), temperature=1.5, min_p=0.05)
    add("min_p_underflow", u, min_p=1e-3)
    add("combined_all_four", grid(rng, 50, 2.0), temperature=0.8, top_k=10, top_p=0.9, min_p=0.25)
    add("combined_k20_p0.95_t1.3", grid(rng, 50, 2.0), temperature=1.3, top_k=20, top_p=0.95)
    add("combined_k8_minp_0.2", grid(rng, 28, 2.0), top_k=8, min_p=0.2)
    add("combined_p0.8_minp_0.3_t1.4", grid(rng, 26, 1.0), temperature=1.4, top_p=0.8, min_p=0.3)
    return cases


def large_logits(v):
    k = (np.arange(v, dtype=np.int64) * 7919) % v
    q = k + (k * k) // v
    return (q.astype(np.float64) / 1024.0 - 5.0).astype(F32)


def large_cases():
    out = []
    v = 5000
    x = large_logits(v)
    for name, params in [
        ("large_top_p_0.95_t1.5", {"temperature": 1.5, "top_p": 0.95}),  # keeps a few thousand tokens
        ("large_all_four", {"temperature": 1.2, "top_k": 3000, "top_p": 0.97, "min_p": 0.05}),
    ]:
        names, res, log = run_hf(x, params)
        print(f"{name:32s} V={v} {' '.join(log)}")
        kept = np.isfinite(res)
        bits = np.zeros(((v + 3) // 4) * 4, dtype=np.int64)
        bits[:v] = kept
        nib = bits.reshape(-1, 4) @ np.array([1, 2, 4, 8])
        prm = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        prm.update(params)
        prm = {k: (int(val) if k == "top_k" else short(val)) for k, val in prm.items()}
        out.append({
            "name": name, "V": v, "params": prm, "processors": names, "kept_count": int(kept.sum()),
            "kept_hex": "".join("0123456789abcdef"[d] for d in nib),
            "kept_sum": float(res[kept].astype(np.float64).sum()),
        })
    return out


def argmax_cases():
    vecs = [
        [1.0, 3.0, 3.0, 2.0],
        [5.0, 5.0, 5.0],
        [-np.inf, -2.0, -1.0, -1.0, -7.0],
        [0.0, -0.0, 0.0],
        [-np.inf, -np.inf, -3.5, 2.25, 2.25, -np.inf],
        [1.0, np.inf, 2.0, np.inf],
    ]
    return [{"logits": [None if np.isneginf(a) else ("inf" if np.isposinf(a) else a) for a in v],
             "argmax": int(torch.argmax(torch.tensor(v, dtype=torch.float32)))} for v in vecs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests" / "golden" / "sampling" / "warpers.json"))
    a = ap.parse_args()
    doc = {
        "generator": "tools/golden/sampling.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "cases": small_cases(),
        "large_cases": large_cases(),
        "argmax": argmax_cases(),
    }
    path = pathlib.Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, separators=(",", ":"))
    # One case per line keeps diffs readable without pretty-printing every number.
    text = text.replace('},{"name"', '},\n{"name"').replace('"large_cases"', '\n"large_cases"')
    text = text.replace('"argmax":[{', '\n"argmax":[{')
    path.write_text(text + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
