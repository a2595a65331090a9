#!/usr/bin/env python3
"""Export logit-distillation fixtures: loss values and gradients of every KD loss on random logits (issue 10).

    tools/.venv/bin/python tools/golden/kd.py [--out tests/golden/kd]

Reference: PyTorch (float64 autograd) with TRL's / Liger's definitions. With p_S = softmax(student / T),
p_T = softmax(teacher / T), per position:
  fkl:   KL(p_T || p_S)                     = torch.nn.functional.kl_div(log p_S, log p_T, log_target=True)
  rkl:   KL(p_S || p_T)                     = kl_div(log p_T, log p_S, log_target=True)
  jsd:   beta KL(p_T || M) + (1 - beta) KL(p_S || M),  M = beta p_T + (1 - beta) p_S   (0 < beta < 1;
         trl.GKDTrainer.generalized_jsd_loss's mixture, computed here with logsumexp exactly as there)
  uld:   sum_i |sort_desc(p_S)_i - sort_desc(p_T)_i|, the shorter vocabulary padded with zeros (Boizard et al.
         2024, Universal Logit Distillation: the teacher's vocabulary differs; no T^2 scale)
loss = scale * sum over valid positions / norm, scale = T^2 when t2 (Hinton et al.'s gradient scaling; TRL
leaves it out), norm = the number of valid positions unless the case gives one (a global count across
accumulation steps / processes). Gradients are with respect to the student's logits (the teacher is frozen),
and for the "linear" cases (student logits = hidden @ weight^T) with respect to the hidden states.

Feature distillation: proj = hidden @ W^T + b (W [CT, C]); mse = mean over features of (proj - teacher)^2,
cosine = 1 - cosine_similarity(proj, teacher, eps=1e-8); both averaged over valid positions.

Top-K rows (offline teacher logits; a teacher seen through the shared vocabulary): the teacher's top-K log-probs
and tail mass as K + 1 buckets of the student's vocabulary; the student's bucket masses are sums of p_S (the
tail: every unlisted token); fkl/rkl/jsd between the two bucket distributions (teacher log-masses floored at -69
and renormalized); a duplicated id merges, an id outside the vocabulary adds to the tail, -1 pads.

Writes tests/golden/kd/kd.json: {"N", "V", "C", "student" [N*V], "teacher" [N*V], "valid" [N] (0/1),
"hidden" [N*C], "weight" [V*C], "cases": [{"name", "div", "beta", "T", "t2", "norm", "linear", "loss",
"grad" [N*V or N*C]}], "VT", "teacher_uld" [N*VT], "CT", "teacher_hidden" [N*CT], "proj_w" [CT*C], "proj_b" [CT],
"features": [{"kind", "loss", "grad_hidden", "grad_w", "grad_b"}], "K", "topk_ids" [N*K], "topk_logprobs" [N*K],
"topk_tail" [N] (null = -inf), "topk_cases": [{"name", "div", "beta", "T", "t2", "norm", "loss", "grad" [N*C]}]}, read by tests/test_train_kd.cpp.
"""
import argparse
import json
import pathlib

import torch
import torch.nn.functional as F

N, V, C = 12, 50, 16


def divergence(s, t, div, beta, T):
    ls = F.log_softmax(s / T, dim=-1)
    lt = F.log_softmax(t / T, dim=-1)
    if div == "fkl":
        return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    if div == "rkl":
        return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta, dtype=s.dtype)
    lm = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
    kl_t = F.kl_div(lm, lt, reduction="none", log_target=True).sum(-1)
    kl_s = F.kl_div(lm, ls, reduction="none", log_target=True).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/kd")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(20261203)
    # Logits with a realistic spread (a few large ones per row); the teacher is correlated with the student.
    student = torch.randn(N, V, generator=g, dtype=torch.float64) * 2.0
    teacher = 0.6 * student + torch.randn(N, V, generator=g, dtype=torch.float64) * 2.5
    teacher[:, 7] += 6.0  # a confident teacher token
    valid = torch.ones(N, dtype=torch.bool)
    valid[[1, 5, 6, 11]] = False  # prompt / padding positions
    hidden = torch.randn(N, C, generator=g, dtype=torch.float64)
    weight = torch.randn(V, C, generator=g, dtype=torch.float64) * 0.5
    # float32-representable inputs, so the C++ side starts from exactly these values
    student, teacher, hidden, weight = (x.float().double() for x in (student, teacher, hidden, weight))

    cases = []
    grid = [("fkl", 0.0), ("rkl", 0.0), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)]
    for div, beta in grid:
        for T in (1.0, 2.5):
            for t2 in (True, False):
                for linear in (False, True):
                    for norm in (0.0, 20.0):
                        if (not t2 or norm) and (linear or T == 1.0):
                            continue  # keep the file small: the variations on the plain logits case only
                        if linear:
                            h = hidden.clone().requires_grad_(True)
                            s = h @ weight.T
                            leaf = h
                        else:
                            s = student.clone().requires_grad_(True)
                            leaf = s
                        d = divergence(s, teacher if not linear else teacher, div, beta, T)
                        count = float(valid.sum()) if norm == 0.0 else norm
                        loss = (T * T if t2 else 1.0) * d[valid].sum() / count
                        loss.backward()
                        cases.append({
                            "name": f"{div}{'' if div != 'jsd' else beta} T={T} t2={t2} norm={norm} "
                                    f"{'linear' if linear else 'logits'}",
                            "div": div, "beta": beta, "T": T, "t2": t2, "norm": norm, "linear": linear,
                            "loss": loss.item(), "grad": leaf.grad.flatten().tolist(),
                        })
    # ULD: a teacher with a different (larger) vocabulary; sorted probability vectors, the shorter padded with 0.
    VT = 64
    teacher_uld = torch.randn(N, VT, generator=g, dtype=torch.float64) * 2.5
    teacher_uld[:, 3] += 5.0
    teacher_uld = teacher_uld.float().double()
    for T in (1.0, 2.0):
        for norm in (0.0, 20.0):
            s = student.clone().requires_grad_(True)
            ps = torch.sort(F.softmax(s / T, dim=-1), dim=-1, descending=True).values
            pt = torch.sort(F.softmax(teacher_uld / T, dim=-1), dim=-1, descending=True).values
            ps = F.pad(ps, (0, VT - V))
            d = (ps - pt).abs().sum(-1)
            count = float(valid.sum()) if norm == 0.0 else norm
            loss = d[valid].sum() / count
            loss.backward()
            cases.append({"name": f"uld T={T} norm={norm}", "div": "uld", "beta": 0.0, "T": T, "t2": False,
                          "norm": norm, "linear": False, "loss": loss.item(), "grad": s.grad.flatten().tolist()})

    # Top-K teacher rows (offline logits / a teacher seen through the shared vocabulary): the teacher's top-K
    # log-probs at T = 1 and the tail mass; the divergence between bucket distributions (kd.hpp, ref::topk_kd_row).
    # Row 2 lists one id twice and row 3 an id outside the student's vocabulary (V + 3) and a padding id (-1).
    K = 8
    lt_full = F.log_softmax(teacher, dim=-1)
    top = torch.topk(lt_full, K, dim=-1)
    tk_ids = top.indices.clone().double()
    tk_lp = top.values.clone()
    tk_ids[2, 5] = tk_ids[2, 1]
    tk_ids[3, 6] = V + 3
    tk_ids[3, 7] = -1
    tk_lp[3, 7] = float("-inf")
    kept = torch.logsumexp(tk_lp[:, :K], dim=-1)
    tk_tail = torch.log1p(-torch.exp(kept).clamp(max=1 - 1e-12))
    tk_lp, tk_tail = tk_lp.float().double(), tk_tail.float().double()

    def topk_div(s, div, beta, T):
        ls = F.log_softmax(s / T, dim=-1)
        out = []
        for i in range(N):
            order, mass, rest = [], {}, [tk_tail[i]]
            for k in range(K):
                idf, lp = int(tk_ids[i, k]), tk_lp[i, k]
                if lp == float("-inf") or idf < 0:
                    continue
                if idf >= V:
                    rest.append(lp)
                    continue
                if idf not in mass:
                    order.append(idf)
                    mass[idf] = []
                mass[idf].append(lp)
            lt = torch.stack([torch.logsumexp(torch.stack(mass[v]), 0) for v in order])
            lq = torch.stack([ls[i, v] for v in order])
            member = torch.zeros(V, dtype=torch.bool)
            member[order] = True
            if (~member).any():
                lt = torch.cat([lt, torch.logsumexp(torch.stack(rest), 0).reshape(1)])
                lq = torch.cat([lq, torch.logsumexp(ls[i, ~member], 0).reshape(1)])
            lt = lt.clamp(min=-69.0)
            lt = lt - torch.logsumexp(lt, 0)
            if div == "fkl":
                d = (lt.exp() * (lt - lq)).sum()
            elif div == "rkl":
                d = (lq.exp() * (lq - lt)).sum()
            else:
                b = torch.tensor(beta, dtype=s.dtype)
                lm = torch.logsumexp(torch.stack([lt + torch.log(b), lq + torch.log(1 - b)]), 0)
                d = beta * (lt.exp() * (lt - lm)).sum() + (1 - beta) * (lq.exp() * (lq - lm)).sum()
            out.append(d)
        return torch.stack(out)

    topk_cases = []
    for div, beta in [("fkl", 0.0), ("rkl", 0.0), ("jsd", 0.5)]:
        for T in (1.0, 2.0):
            h = hidden.clone().requires_grad_(True)
            d = topk_div(h @ weight.T, div, beta, T)
            loss = T * T * d[valid].sum() / 20.0
            loss.backward()
            topk_cases.append({"name": f"topk {div} T={T}", "div": div, "beta": beta, "T": T, "t2": True,
                               "norm": 20.0, "loss": loss.item(), "grad": h.grad.flatten().tolist()})

    # Feature distillation: student hidden [N, C] -> teacher hidden [N, CT] through a learned W [CT, C] + b [CT];
    # MSE: mean over valid positions and features of (proj - teacher)^2; cosine: mean over valid positions of
    # 1 - cos(proj, teacher). Gradients for the student hidden, W and b.
    CT = 24
    th = torch.randn(N, CT, generator=g, dtype=torch.float64).float().double()
    W = (torch.randn(CT, C, generator=g, dtype=torch.float64) * 0.3).float().double()
    bias = (torch.randn(CT, generator=g, dtype=torch.float64) * 0.1).float().double()
    features = []
    for kind in ("mse", "cosine"):
        h = hidden.clone().requires_grad_(True)
        w = W.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)
        proj = h @ w.T + b
        if kind == "mse":
            per = ((proj - th) ** 2).mean(-1)
        else:
            per = 1 - F.cosine_similarity(proj, th, dim=-1, eps=1e-8)
        loss = per[valid].sum() / float(valid.sum())
        loss.backward()
        features.append({"kind": kind, "loss": loss.item(), "grad_hidden": h.grad.flatten().tolist(),
                         "grad_w": w.grad.flatten().tolist(), "grad_b": b.grad.flatten().tolist()})

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fl = lambda x: [float(v) for v in x.flatten().tolist()]  # noqa: E731
    fl_inf = lambda x: [None if v == float("-inf") else v for v in fl(x)]  # noqa: E731  (JSON has no -inf)
    doc = {"N": N, "V": V, "C": C, "student": fl(student), "teacher": fl(teacher),
           "valid": [int(v) for v in valid.tolist()], "hidden": fl(hidden), "weight": fl(weight), "cases": cases,
           "VT": VT, "teacher_uld": fl(teacher_uld),
           "CT": CT, "teacher_hidden": fl(th), "proj_w": fl(W), "proj_b": fl(bias), "features": features,
           "K": K, "topk_ids": fl(tk_ids), "topk_logprobs": fl_inf(tk_lp), "topk_tail": fl_inf(tk_tail),
           "topk_cases": topk_cases}
    (out / "kd.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {out / 'kd.json'}: {len(cases)} cases, torch {torch.__version__}")


if __name__ == "__main__":
    main()
