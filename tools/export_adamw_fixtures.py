"""Exports golden AdamW trajectories from torch.optim.AdamW (single-tensor path, foreach=False) for
tests/test_optim_adamw.cpp and tests/test_cuda_adamw.cpp.

One parameter of 37 elements (seeded, float32 values) takes 5 steps with given float32 gradients, lr 1e-2
for steps 1-3 and 5e-3 for steps 4-5 (set between steps, as a schedule does), weight_decay 0.1, default betas
and eps. Element 3's gradient is 0 in every step (decay only); element 5's is tiny (1e-7 scale, where eps
matters). The same trajectory is run in float32 (what our f32 master weights do) and in float64 (for ref::).
Written to tests/golden/adamw/adamw_torch.txt in the format of tests/golden.hpp:
    tensor <name> <rank> <dims...>
    <values>
  p0, g1..g5        the start and each step's gradient
  lr                the learning rate of each step
  hyper             beta1, beta2, eps, weight_decay
  p1..p5            the float32 parameter after each step
  m5, v5            torch's float32 exp_avg / exp_avg_sq after step 5
  p1_f64..p5_f64    the same trajectory in float64

Run: tools/.venv/bin/python tools/export_adamw_fixtures.py
"""
import pathlib

import torch

torch.manual_seed(20261128)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "adamw"
OUT.mkdir(parents=True, exist_ok=True)

N, STEPS = 37, 5
LRS = [1e-2, 1e-2, 1e-2, 5e-3, 5e-3]
BETAS, EPS, WD = (0.9, 0.999), 1e-8, 0.1

p0 = torch.randn(N, dtype=torch.float32)
grads = [torch.randn(N, dtype=torch.float32) * (0.5 + k) for k in range(STEPS)]
for g in grads:
    g[3] = 0.0
    g[5] = g[5] * 1e-7


def run(dtype):
    p = p0.to(dtype).clone().requires_grad_()
    opt = torch.optim.AdamW([p], lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=WD, foreach=False)
    out = []
    for k in range(STEPS):
        opt.param_groups[0]["lr"] = LRS[k]
        p.grad = grads[k].to(dtype).clone()
        opt.step()
        out.append(p.detach().clone())
    st = opt.state[p]
    return out, st["exp_avg"].clone(), st["exp_avg_sq"].clone()


p32, m5, v5 = run(torch.float32)
p64, _, _ = run(torch.float64)

tensors = {"p0": p0}
tensors.update({f"g{k + 1}": g for k, g in enumerate(grads)})
tensors["lr"] = torch.tensor(LRS, dtype=torch.float64)
tensors["hyper"] = torch.tensor([BETAS[0], BETAS[1], EPS, WD], dtype=torch.float64)
tensors.update({f"p{k + 1}": t for k, t in enumerate(p32)})
tensors["m5"] = m5
tensors["v5"] = v5
tensors.update({f"p{k + 1}_f64": t for k, t in enumerate(p64)})

path = OUT / "adamw_torch.txt"
with open(path, "w") as f:
    f.write(f"# adamw_torch: made by tools/export_adamw_fixtures.py with torch {torch.__version__} "
            f"(torch.optim.AdamW, foreach=False)\n")
    for name, t in tensors.items():
        t = t.detach().to(torch.float64).contiguous()
        f.write(f"tensor {name} {t.dim()} {' '.join(str(d) for d in t.shape)}\n")
        f.write(" ".join(f"{v:.17g}" for v in t.flatten().tolist()) + "\n")
print("wrote", path)
