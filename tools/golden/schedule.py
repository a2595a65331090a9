#!/usr/bin/env python3
"""Export LR-schedule and gradient-clipping fixtures from transformers / torch (CPU).

    tools/.venv/bin/python tools/golden/schedule.py [--out tests/golden/schedule]

Reference: transformers 5.24 `get_scheduler(name, optimizer, num_warmup_steps, num_training_steps)` stepped as the
Trainer steps it (optimizer.step() then scheduler.step()), and torch 2.15 `torch.nn.utils.clip_grad_norm_` /
`clip_grads_with_norm_`. Writes:

  schedules.json  for each schedule name (linear, cosine, constant, constant_with_warmup), warmup W and total T
                  (W = 0, W > T, T = 0, ...) and base lr (1.0, 2e-4): the lr of the update after k optimizer steps,
                  k = 0 .. T + extra (past the end of training), as scheduler.get_last_lr() reports it;
                  plus TrainingArguments(warmup_steps=w).get_warmup_steps(T) for a few (w, T).
  clip.json       per gradient set: max_norm, the returned total norm (float32 value), which parameters have no
                  gradient; and a table of (total_norm, max_norm) -> torch's clip_coef_clamped, obtained as the
                  value a gradient of ones takes after clip_grads_with_norm_(params, max_norm, total_norm).
  clip.safetensors  the float32 gradients of each set before (`<set>.before.<i>`) and after (`<set>.after.<i>`)
                  clip_grad_norm_ (foreach default, CPU). Set "exact" has per-parameter norms 3, 4, 12 and total
                  13, all squares and sums exact in float32, so every implementation gets torch's norm to the bit.
Floats are written as the shortest decimal that round-trips their float32 (or float64) value.
"""
import argparse
import json
import math
import pathlib

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import TrainingArguments, get_scheduler

ROOT = pathlib.Path(__file__).resolve().parents[2]

COMBOS = [(0, 10), (5, 60), (3, 3), (10, 5), (0, 1), (1, 1), (0, 0), (7, 100), (2, 9)]
NAMES = ["linear", "cosine", "constant", "constant_with_warmup"]


def schedules():
    out = []
    for name in NAMES:
        for w, t in COMBOS:
            for base in (1.0, 2e-4):
                p = torch.nn.Parameter(torch.zeros(1))
                opt = torch.optim.SGD([p], lr=base)
                sched = get_scheduler(name, opt, num_warmup_steps=w, num_training_steps=t)
                lrs = []
                for _ in range(t + max(6, t // 2 + 1) + 1):
                    lrs.append(sched.get_last_lr()[0])
                    opt.step()
                    sched.step()
                out.append({"name": name, "warmup": w, "total": t, "base_lr": base, "lr": [float(x) for x in lrs]})
    warm = []
    for w, t in [(0, 100), (0.03, 100), (0.1, 55), (0.5, 7), (5, 60), (1, 10), (2, 3), (0.999, 1000)]:
        args = TrainingArguments(output_dir="/tmp/distill_schedule_golden", warmup_steps=w, report_to=[])
        warm.append({"warmup": w, "total": t, "steps": args.get_warmup_steps(t)})
    return out, warm


def f32(x):
    return float(np.float32(x))


def clip_sets():
    g = torch.Generator().manual_seed(1234)

    def rnd(shape, scale):
        return (torch.randn(shape, generator=g) * scale).float()

    # per-parameter norms 3, 4, 12 and total 13, every square and sum exact in float32
    exact = [
        torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 2.0]]),
        torch.tensor([0.0, -4.0, 0.0, 0.0]),
        torch.tensor([[[4.0]], [[-8.0]], [[8.0]]]),
    ]
    sets = [
        ("exact", exact, [True, True, True], 1.0),
        ("random_clipped", [rnd([16, 8], 0.3), rnd([8], 0.3), rnd([5, 3], 1.0), rnd([33], 0.05)], [True] * 4, 1.0),
        ("random_qlora", [rnd([24, 4], 0.5), rnd([4, 24], 0.5), rnd([24, 4], 0.1), rnd([4, 24], 0.1)], [True] * 4, 0.3),
        ("random_unclipped", [rnd([16, 8], 0.01), rnd([40], 0.01)], [True] * 2, 1.0),
        (
            "some_without_grad",
            [rnd([12, 6], 0.7), rnd([9], 0.7), rnd([6, 6], 0.7), rnd([3], 2.0)],
            [True, False, True, False],
            0.5,
        ),
        ("large", [rnd([60, 20], 3.0), rnd([20], 3.0)], [True, True], 1.0),
        ("zero", [torch.zeros(7), torch.zeros(2, 2)], [True, True], 1.0),
        ("no_grads", [rnd([5], 1.0)], [False], 1.0),
    ]
    tensors, meta = {}, []
    for name, grads, has, max_norm in sets:
        params = []
        for gr, h in zip(grads, has):
            p = torch.nn.Parameter(torch.zeros_like(gr))
            if h:
                p.grad = gr.clone()
            params.append(p)
        for i, (gr, h) in enumerate(zip(grads, has)):
            if h:
                tensors[f"{name}.before.{i}"] = gr.contiguous()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        for i, (p, h) in enumerate(zip(params, has)):
            if h:
                tensors[f"{name}.after.{i}"] = p.grad.detach().clone().contiguous()
        meta.append(
            {
                "name": name,
                "max_norm": max_norm,
                "has_grad": has,
                "shapes": [list(x.shape) for x in grads],
                "total_norm": float(total),
                "total_norm_f64": math.sqrt(sum(float((x.double() ** 2).sum()) for x, h in zip(grads, has) if h)),
            }
        )
    # clip_coef_clamped through torch's own code, for totals around the thresholds and across magnitudes
    rng = np.random.default_rng(7)
    totals = [0.0, 1e-7, 1e-6, 0.3, 0.2999999, 0.3000001, 0.29999, 1.0, 0.999999, 1.000001, 0.9999990463256836,
              1.0000009536743164, 2.0, 3.7, 1e3, 1e10, 3.4e38, float("inf"), float("nan")]
    totals += [f32(x) for x in np.exp(rng.uniform(-12, 12, 40))]
    coefs = []
    for mx in (1.0, 0.3, 0.5, 2.5):
        for t in totals:
            p = torch.nn.Parameter(torch.zeros(1))
            p.grad = torch.ones(1)
            torch.nn.utils.clip_grads_with_norm_([p], mx, torch.tensor(t, dtype=torch.float32))
            c = float(p.grad[0])
            coefs.append({"total_norm": f32(t), "max_norm": mx, "coef": c})
    return tensors, meta, coefs


def jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [jsonable(v) for v in x]
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests" / "golden" / "schedule"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sch, warm = schedules()
    versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    (out / "schedules.json").write_text(
        json.dumps({"generator": "tools/golden/schedule.py", **versions, "schedules": sch, "warmup_steps": warm}) + "\n"
    )
    tensors, meta, coefs = clip_sets()
    save_file(tensors, str(out / "clip.safetensors"))
    doc = {"generator": "tools/golden/schedule.py", **versions, "sets": meta, "coefs": coefs}
    (out / "clip.json").write_text(json.dumps(jsonable(doc), indent=1) + "\n")
    (out / "clip.safetensors").chmod(0o644)
    print(f"wrote {len(sch)} schedules, {len(meta)} clip sets, {len(coefs)} coefficients to {out}")


if __name__ == "__main__":
    main()
