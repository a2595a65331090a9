"""Exports golden op fixtures from PyTorch (and Hugging Face transformers' own modules where they exist).

Every case is computed in float64 by the reference implementation, forward and backward (autograd with a
fixed random upstream gradient g), and written to tests/golden/ops/<case>.txt:
    tensor <name> <rank> <dims...>
    <values>
The C++ test (tests/test_golden_ops.cpp) runs our ops on the same inputs and compares at named tolerances.

Run: tools/.venv/bin/python tools/export_op_fixtures.py
"""
import pathlib
import torch
import torch.nn.functional as F

torch.manual_seed(20261127)
torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "ops"
OUT.mkdir(parents=True, exist_ok=True)
VERSIONS = f"torch {torch.__version__}"
try:
    import transformers
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, apply_rotary_pos_emb
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    VERSIONS += f", transformers {transformers.__version__}"
except ImportError as e:  # the fixtures below need them
    raise SystemExit(f"pip install transformers first ({e})")


def write(case, **tensors):
    with open(OUT / f"{case}.txt", "w") as f:
        f.write(f"# {case}: made by tools/export_op_fixtures.py with {VERSIONS}\n")
        for name, t in tensors.items():
            t = t.detach().to(torch.float64).contiguous()
            f.write(f"tensor {name} {t.dim()} {' '.join(str(d) for d in t.shape)}\n")
            f.write(" ".join(f"{v:.17g}" for v in t.flatten().tolist()) + "\n")
    print("wrote", case)


def grads(y, inputs):
    g = torch.randn_like(y)
    gs = torch.autograd.grad(y, inputs, g)
    return g, gs


# --- element-wise activations: torch's own functions ---------------------------------------------
x = (torch.randn(97) * 3).requires_grad_()
for case, fn in [("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")), ("silu", F.silu),
                 ("sigmoid", torch.sigmoid), ("tanh", torch.tanh)]:
    y = fn(x)
    g, (dx,) = grads(y, [x])
    write(case, x=x, y=y, g=g, dx=dx)

# --- RMSNorm: the Hugging Face modules themselves ------------------------------------------------
for case, cls in [("rms_norm_qwen3", Qwen3RMSNorm), ("rms_norm_gemma3", Gemma3RMSNorm)]:
    m = cls(24, eps=1e-6).to(torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.randn(24) * 0.5)
    x = torch.randn(3, 5, 24, requires_grad=True)
    y = m(x)
    g, (dx, dw) = grads(y, [x, m.weight])
    write(case, x=x, w=m.weight, y=y, g=g, dx=dx, dw=dw)

# --- RoPE: HF's apply_rotary_pos_emb with cos/sin built as Qwen3RotaryEmbedding does ----------------
B, T, H, D, theta = 2, 7, 3, 16, 10000.0
inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).to(torch.float32) / D))  # float32, as HF
pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 7, 8, 9]])
freqs = pos[:, :, None].to(torch.float32) * inv_freq[None, None, :]
emb = torch.cat((freqs, freqs), dim=-1)
cos, sin = emb.cos().to(torch.float64), emb.sin().to(torch.float64)
q = torch.randn(B, T, H, D, requires_grad=True)
k = torch.randn(B, T, H, D)
# HF works on [B, H, T, D] and unsqueezes cos/sin at dim 1.
qr, _ = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
y = qr.transpose(1, 2)
g, (dq,) = grads(y, [q])
write("rope", x=q, positions=pos.to(torch.float64), y=y, g=g, dx=dq)

# --- softmax / log_softmax / cross-entropy: torch ---------------------------------------------------
z = (torch.randn(6, 33) * 4).requires_grad_()
for case, fn in [("softmax", lambda t: torch.softmax(t, -1)), ("log_softmax", lambda t: torch.log_softmax(t, -1))]:
    y = fn(z)
    g, (dz,) = grads(y, [z])
    write(case, x=z, y=y, g=g, dx=dz)
logits = (torch.randn(9, 50) * 3).requires_grad_()
targets = torch.randint(0, 50, (9,))
targets[2] = -100
targets[7] = -100
loss = F.cross_entropy(logits, targets, ignore_index=-100)
(dl,) = torch.autograd.grad(loss, [logits])
write("cross_entropy", logits=logits, targets=targets.to(torch.float64), loss=loss.reshape(1), dlogits=dl)


# --- attention: torch SDPA on [B, H, T, D] with GQA expanded by repeat_interleave ------------------
def sdpa_case(case, B, T, S, H, KV, D, causal, window):
    q = torch.randn(B, T, H, D, requires_grad=True)
    k = torch.randn(B, S, KV, D, requires_grad=True)
    v = torch.randn(B, S, KV, D, requires_grad=True)
    qp = torch.arange(T)[:, None] + (S - T)  # absolute query positions
    kp = torch.arange(S)[None, :]
    allowed = torch.ones(T, S, dtype=torch.bool)
    if causal:
        allowed &= kp <= qp
    if window:
        allowed &= kp > qp - window  # SPEC 2.4 sliding window
    kk = k.transpose(1, 2).repeat_interleave(H // KV, dim=1)
    vv = v.transpose(1, 2).repeat_interleave(H // KV, dim=1)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, attn_mask=allowed).transpose(1, 2)
    g, (dq, dk, dv) = grads(o, [q, k, v])
    write(case, q=q, k=k, v=v, out=o, g=g, dq=dq, dk=dk, dv=dv,
          meta=torch.tensor([float(causal), float(window)]))


sdpa_case("attention_causal_gqa", 2, 11, 11, 4, 2, 8, True, 0)
sdpa_case("attention_window", 1, 13, 13, 2, 1, 8, True, 4)
sdpa_case("attention_decode_offset", 1, 3, 9, 4, 1, 8, True, 0)
sdpa_case("attention_noncausal", 1, 6, 10, 2, 2, 4, False, 0)
