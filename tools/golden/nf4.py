"""bitsandbytes 4-bit (NF4/FP4, double quant) fixtures for include/distill/quant (SPEC §6), from pip bitsandbytes
0.50.2 on the CPU, plus a transformers-saved 4-bit checkpoint of the tiny Qwen3.

    tools/.venv/bin/python tools/golden/nf4.py        # -> tests/golden/nf4/, fuzz/corpus/bnb_state/

Writes:
  tests/golden/nf4/cases.safetensors + cases.json — per case `<case>.input` (F32 or BF16) and per variant
    `<case>.<variant>.packed` (U8 [(n+1)//2, 1], as quantize_4bit returns it), `.absmax` (F32, no double quant)
    or `.absmax_q` (U8) + `.nested_absmax` (F32) + `.nested_offset` (F32 [1]), `.absmax_f32` (the per-block
    scales bnb resolves when dequantizing), `.dequant` (bnb's dequantize_4bit in the input dtype) and, for
    small bf16 cases, `.dequant_f32` (the same in f32). Global: `quant_map.nf4`, `quant_map.fp4`, `nested_quant_map`.
    The json lists cases and variants with the quant_state JSON bnb packs (QuantState.as_dict(packed=True)),
    Python float reprs of random floats (for quant_state_json's nested_offset), torch's f32 mean at many sizes
    (double quant's offset; inputs from a formula, see torch_means), SPEC §6.5 checks, and
    config.json's quantization_config for three BitsAndBytesConfig variants.
    Also `lut_edges.input` / `.codes` / `.absmax`: bnb's CPU quantize_blockwise (double quant's second step) on
    values at the edges of its lookup table's bins.
  tests/golden/nf4/qwen3_bnb/ — tests/golden/models/qwen3_tiny loaded with BitsAndBytesConfig(load_in_4bit,
    nf4, double quant, compute bf16) on the CPU and written by save_pretrained, plus reference.safetensors
    (`prompt` I64, `logits_bnb` [T, V] from that model, `logits_dequant_f32` / `logits_dequant_bf16` from a
    plain Qwen3 whose Linear weights are bnb's f32 / bf16 dequantized weights, `dequant_f32.<module>` for a few
    modules) and reference.json (FNV-1a 64 hashes of every Linear4bit's f32 and bf16 dequantized weight).
  fuzz/corpus/bnb_state/ — seeds for fuzz/fuzz_bnb_state.cpp (quant_state JSONs, tiny bnb safetensors files).

What bnb 0.50.2 does on the CPU (and what these fixtures therefore pin down):
  - quantize_4bit runs the default torch backend: blocks of `blocksize`; full blocks scale by
    x * (1 / max(absmax, 1e-38)), the trailing partial block by x / max(absmax, 1e-38) and stores the clamped
    absmax (an all-zero partial block stores 1e-38); values clamped to [-1, 1]; torch.bucketize on the f32
    midpoints (ties go to the lower code); FP4 maps the sorted index back through argsort(code); an odd element
    count is padded with a scaled 0 (NF4 code 7, FP4 code 0).
  - double quant: offset = absmax.mean() (torch's f32 cascade sum, 8-wide vectors, single thread below 32768
    blocks), then quantize_blockwise(absmax - offset, blocksize=256) runs bnb's native CPU kernel, which maps
    v * (1/absmax2) through a 65536-entry lookup table (not an exact nearest search; an all-zero block gives
    codes 0 and absmax2 0).
  - dequantize: code[q] * absmax in f32 (absmax = dyn[q] * absmax2 + offset, two f32 roundings), then rounded
    to the dtype. bnb's native CPU dequantize_4bit kernel indexes absmax per row and is wrong when the last
    dimension is not a multiple of blocksize; the reference values here come from the default backend (the
    formula above), and each variant records whether the native kernel agreed.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "golden", "nf4")
FUZZ = os.path.join(ROOT, "fuzz", "corpus", "bnb_state")
QWEN3 = os.path.join(ROOT, "tests", "golden", "models", "qwen3_tiny")
PROMPT = [1, 5, 9, 200, 17]


def fnv1a64(b: bytes) -> str:
    h = 0xCBF29CE484222325
    for c in b:
        h ^= c
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def le_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def default_dequant(packed, absmax, quant_type, blocksize, shape, dtype):
    """bnb's default-backend dequantize_4bit (the exact formula), bypassing the native CPU kernel."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    fn = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)
    return fn(packed.reshape(-1), absmax, _get_4bit_code(quant_type, packed.device), blocksize, shape, dtype)


def resolved_absmax(st):
    import bitsandbytes.functional as F

    if st.nested:
        a = F.dequantize_blockwise(st.absmax, st.state2)
        a += st.offset
        return a.float()
    return st.absmax


def quant_state_json(st) -> str:
    d = st.as_dict(packed=True)
    key = [k for k in d if k.startswith("quant_state.")]
    assert len(key) == 1
    return bytes(d[key[0]].numpy()).decode("utf-8")


def midpoints(quant_type):
    import bitsandbytes.functional as F

    c = F.get_4bit_type(quant_type, device="cpu")
    s = torch.sort(c).values
    return (s[:-1] + s[1:]) / 2


def scaled_ties():
    """Values next to code midpoints times a non-trivial absmax, chosen where x * (1/absmax) (full blocks) and
    x / absmax (the partial tail) fall on different sides of a midpoint: 4 full blocks of 64, a tail of 40."""
    rng = np.random.default_rng(11)
    f32 = np.float32
    mids = np.concatenate([midpoints("nf4").numpy(), midpoints("fp4").numpy()]).astype(f32)
    out = []
    for b, length in enumerate((64, 64, 64, 64, 40)):
        while True:
            a = f32(rng.uniform(0.01, 10.0))
            cands = []
            for m in mids:
                x = f32(m * a)
                for _ in range(3):
                    x = np.nextafter(x, f32(-np.inf), dtype=f32)
                for _ in range(7):
                    sd, sm = f32(x / a), f32(x * f32(f32(1) / a))
                    if np.searchsorted(mids, sd) != np.searchsorted(mids, sm) or sd in mids or sm in mids:
                        cands.append(x)
                    x = np.nextafter(x, f32(np.inf), dtype=f32)
            if len(cands) >= 8:
                break
        blk = [a if b % 2 == 0 else -a] + [cands[i % len(cands)] for i in range(length - 1)]
        out += blk
    return torch.tensor(np.array(out, dtype=f32))


def lut_edges(tensors):
    """bnb's CPU quantize_blockwise (the double-quant step) on values whose lookup-table index sits at a bin edge
    where the code changes: `lut_edges.input` F32 [N], bnb's `lut_edges.codes` U8 and `lut_edges.absmax` F32."""
    import bitsandbytes.functional as F

    f32 = np.float32
    dyn = F.create_dynamic_map().numpy()
    L = 65536
    val = (f32(-1) + (f32(2) * np.arange(L).astype(f32)) / f32(L - 1)).astype(f32)
    lut = np.searchsorted((f32(0.5) * (dyn[:-1] + dyn[1:])).astype(f32), val, side="left")
    edges = np.nonzero(lut[1:] != lut[:-1])[0]
    rng = np.random.default_rng(12)
    vals = []
    for k in edges:
        s = f32(2.0 * (k + 0.5) / (L - 1) - 1.0)
        for _ in range(2):
            s = np.nextafter(s, f32(-np.inf), dtype=f32)
        for _ in range(5):
            vals.append(s)
            s = np.nextafter(s, f32(np.inf), dtype=f32)
    vals = np.array(vals, dtype=f32)
    rng.shuffle(vals)
    out = []
    for i in range(0, len(vals), 255):
        am = f32(rng.uniform(0.001, 2.0))
        chunk = (vals[i:i + 255] * am).astype(f32)
        out += [am if (i // 255) % 2 == 0 else -am] + list(chunk)
    x = torch.tensor(np.array(out, dtype=f32))
    q, st = F.quantize_blockwise(x, blocksize=256)
    tensors["lut_edges.input"] = x
    tensors["lut_edges.codes"] = q.contiguous()
    tensors["lut_edges.absmax"] = st.absmax.contiguous()


def make_cases():
    g = torch.Generator().manual_seed(4)
    cases = []

    def add(name, x, blocksize, variants, dequant_f32=True, dequant=True):
        cases.append(dict(name=name, x=x, blocksize=blocksize, variants=variants, dequant_f32=dequant_f32,
                          dequant=dequant))

    allv = ["nf4_dq", "nf4_nodq", "fp4_dq", "fp4_nodq"]
    add("odd3x5", torch.randn(3, 5, generator=g), 64, allv)
    add("m7x13", torch.randn(7, 13, generator=g).to(torch.bfloat16), 64, allv)
    add("r9x257", (torch.randn(9, 257, generator=g) * 0.05).to(torch.bfloat16), 128, ["nf4_dq", "fp4_dq"],
        dequant_f32=False)
    z = torch.randn(5, 100, generator=g)
    z[1] = 0  # blocksize 32: full blocks 4 and 5 (elements 128..191) are all zero
    z[4, 80:] = 0  # the trailing partial block (elements 480..499) is all zero
    add("zeros", z, 32, allv)
    for qt in ("nf4", "fp4"):
        m = midpoints(qt)
        idx = torch.randint(0, m.numel(), (2, 64), generator=g)
        t = m[idx].clone()
        t[0, 0] = 1.0  # absmax 1: the scaled values are the midpoints themselves
        t[1, 0] = -1.0
        add("ties_" + qt, t, 64, [qt + "_dq", qt + "_nodq"])
    k = torch.arange(64, dtype=torch.float32)
    add("spec65", ((k - 31.5) / 31.5 * 0.5).to(torch.bfloat16).reshape(1, 64), 64, ["nf4_nodq"])
    s = torch.zeros(256)
    for b, a in enumerate([0.5, 0.25, 0.125, 0.0625]):
        s[b * 64] = a
    add("spec65_dq", s, 64, ["nf4_dq"])
    add("nested257", (torch.randn(257, 32, generator=g) * torch.rand(257, 1, generator=g)).to(torch.bfloat16), 32,
        ["nf4_dq"], dequant_f32=False)
    add("scaled_ties", scaled_ties(), 64, ["nf4_nodq", "fp4_nodq"])
    # Rows of 96 with blocksize 64: bnb's native CPU dequantize_4bit indexes absmax per row and gets this wrong.
    add("rows96", torch.randn(3, 96, generator=g), 64, ["nf4_nodq"])
    add("bs4096", torch.randn(2, 2100, generator=g).to(torch.bfloat16), 4096, ["nf4_dq", "fp4_nodq"],
        dequant_f32=False, dequant=False)
    return cases


def export_cases(tensors, meta):
    import bitsandbytes.functional as F

    for qt in ("nf4", "fp4"):
        tensors["quant_map." + qt] = F.get_4bit_type(qt, device="cpu").contiguous()
    tensors["nested_quant_map"] = F.create_dynamic_map().contiguous()
    out = []
    for c in make_cases():
        x = c["x"]
        tensors[c["name"] + ".input"] = x.contiguous()
        entry = {"name": c["name"], "shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""),
                 "blocksize": c["blocksize"], "variants": []}
        for v in c["variants"]:
            qt, dq = v.split("_")[0], v.endswith("_dq")
            packed, st = F.quantize_4bit(x, blocksize=c["blocksize"], compress_statistics=dq, quant_type=qt)
            p = f"{c['name']}.{v}."
            tensors[p + "packed"] = packed.contiguous()
            if dq:
                tensors[p + "absmax_q"] = st.absmax.contiguous()
                tensors[p + "nested_absmax"] = st.state2.absmax.contiguous()
                tensors[p + "nested_offset"] = st.offset.reshape(1).float().contiguous()
                assert torch.equal(st.state2.code, F.create_dynamic_map())
            else:
                tensors[p + "absmax"] = st.absmax.contiguous()
            am = resolved_absmax(st)
            tensors[p + "absmax_f32"] = am.clone().contiguous()
            ve = {"name": v, "quant_type": qt, "double_quant": dq, "quant_state_json": quant_state_json(st)}
            if c["dequant"]:
                d = default_dequant(packed, am, qt, c["blocksize"], x.shape, x.dtype)
                tensors[p + "dequant"] = d.contiguous()
                native = F.dequantize_4bit(packed, st)
                ve["cpu_native_dequant_matches"] = bool(torch.equal(native.reshape(-1), d.reshape(-1)))
                if c["dequant_f32"] and x.dtype != torch.float32:
                    tensors[p + "dequant_f32"] = default_dequant(packed, am, qt, c["blocksize"], x.shape,
                                                                 torch.float32).contiguous()
            entry["variants"].append(ve)
        out.append(entry)
    meta["cases"] = out


def float_reprs():
    rng = np.random.default_rng(7)
    vals = [0.0, -0.0, 1.0, 0.5, 0.1, 1e-4, 1e-5, 123.0, 1e16, 1.5e16, 9.999999e15, 1e-38, 1e-45, 3.4e38,
            0.201080322265625, 0.234375, -2.5]
    vals += list(rng.standard_normal(20) * 10.0 ** rng.integers(-12, 12, 20))
    vals += list(rng.random(10) * 0.01)
    out = []
    for v in vals:
        f = np.float32(v)
        out.append(["%08x" % struct.unpack("<I", struct.pack("<f", f))[0], repr(float(f))])
    return out


def torch_means():
    """torch.mean / torch.sum (f32, one thread) of x_i = ((i·2654435761 + 12345) mod 2^32 >> 8) / 2^24, the offset
    computation of double quant, at sizes that reach every level of torch's cascade sum."""
    out = []
    for n in (1, 3, 7, 8, 9, 31, 33, 100, 257, 511, 512, 513, 600, 1000, 2048, 4095, 5000, 16384, 20000, 32768):
        i = np.arange(n, dtype=np.uint64)
        u = ((i * np.uint64(2654435761) + np.uint64(12345)) % np.uint64(1 << 32)) >> np.uint64(8)
        x = torch.from_numpy((u.astype(np.float64) / float(1 << 24)).astype(np.float32))
        bits = lambda t: "%08x" % struct.unpack("<I", struct.pack("<f", t.item()))[0]
        out.append({"n": n, "sum_bits": bits(x.sum()), "mean_bits": bits(x.mean())})
    return out


def spec_6_5():
    import bitsandbytes.functional as F

    res = {}
    k = torch.arange(64, dtype=torch.float32)
    x = ((k - 31.5) / 31.5 * 0.5).to(torch.bfloat16)
    q, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    res["nf4_packed_hex"] = q.flatten().numpy().tobytes().hex()
    res["nf4_packed_matches_spec"] = res["nf4_packed_hex"] == \
        "00000111111112222233344445556667788899aaabbbccccddddeeeeeeefffff"
    s = torch.zeros(256)
    for b, a in enumerate([0.5, 0.25, 0.125, 0.0625]):
        s[b * 64] = a
    q, st = F.quantize_4bit(s, blocksize=64, quant_type="nf4", compress_statistics=True)
    r = resolved_absmax(st)
    res["dq_offset"] = st.offset.item()
    res["dq_absmax2"] = st.state2.absmax.tolist()
    res["dq_q"] = st.absmax.tolist()
    res["dq_reconstructed"] = r.tolist()
    res["dq_reconstructed_spec"] = [0.5, 0.25010499358177185, 0.12376710027456284, 0.06400147080421448]
    res["dq_q_matches_spec"] = res["dq_q"] == [255, 176, 41, 25]
    res["dq_reconstructed_matches_spec"] = res["dq_reconstructed"] == res["dq_reconstructed_spec"]
    return res


def linear4bit_modules(model):
    import bitsandbytes as bnb

    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def export_qwen3_bnb():
    import bitsandbytes.functional as F
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen3ForCausalLM

    d = os.path.join(OUT, "qwen3_bnb")
    os.makedirs(d, exist_ok=True)
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    m = AutoModelForCausalLM.from_pretrained(QWEN3, quantization_config=cfg, device_map="cpu", dtype=torch.bfloat16,
                                             attn_implementation="eager").eval()
    mods = linear4bit_modules(m)
    assert mods, "transformers did not create Linear4bit modules"
    # Save before any forward: on AVX512-BF16 CPUs Linear4bit.forward repacks the weight with bf16 absmax, and
    # save_pretrained would then re-quantize those lossy scales.
    m.save_pretrained(d, safe_serialization=True)

    ref = {"prompt": PROMPT, "linear4bit": {}}
    tensors = {"prompt": torch.tensor(PROMPT, dtype=torch.int64)}
    keep_f32 = {"model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"}
    orig = {}
    with safe_open(os.path.join(QWEN3, "model.safetensors"), "pt") as f:
        for k in f.keys():
            orig[k] = f.get_tensor(k)
    deq_f32, deq_bf16 = {}, {}
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    for name, mod in mods:
        w = mod.weight
        st = w.quant_state
        am = resolved_absmax(st)
        f32 = default_dequant(w.data, am, st.quant_type, st.blocksize, st.shape, torch.float32)
        b16 = default_dequant(w.data, am, st.quant_type, st.blocksize, st.shape, torch.bfloat16)
        assert torch.equal(F.dequantize_4bit(w.data, st), b16)
        deq_f32[name], deq_bf16[name] = f32, b16
        # The saved tensors are bnb.functional.quantize_4bit of the original bf16 weight.
        p2, st2 = F.quantize_4bit(orig[name + ".weight"], blocksize=64, compress_statistics=True, quant_type="nf4")
        assert torch.equal(p2, saved[name + ".weight"]), name
        assert torch.equal(st2.absmax, saved[name + ".weight.absmax"]), name
        assert torch.equal(st2.state2.absmax, saved[name + ".weight.nested_absmax"]), name
        ref["linear4bit"][name] = {"shape": list(st.shape), "fnv1a64_f32": fnv1a64(le_bytes(f32)),
                                   "fnv1a64_bf16": fnv1a64(le_bytes(b16))}
        if name in keep_f32:
            tensors["dequant_f32." + name] = f32.contiguous()
    for mod in [mm for _, mm in mods]:
        mod.support_avx512bf16_for_cpu = False  # the standard dequantize-then-matmul path
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        tensors["logits_bnb"] = m(ids).logits[0].float().contiguous()
    for tag, deq, dtype in (("f32", deq_f32, torch.float32), ("bf16", deq_bf16, torch.bfloat16)):
        plain = Qwen3ForCausalLM.from_pretrained(QWEN3, dtype=dtype, attn_implementation="eager").eval()
        with torch.no_grad():
            for name, w in deq.items():
                plain.get_submodule(name).weight.copy_(w.to(dtype))
            tensors["logits_dequant_" + tag] = plain(ids).logits[0].float().contiguous()
    ref["logits_bnb_equals_dequant_bf16"] = bool(torch.equal(tensors["logits_bnb"], tensors["logits_dequant_bf16"]))
    ref["max_abs_bnb_vs_dequant_f32"] = float((tensors["logits_bnb"] - tensors["logits_dequant_f32"]).abs().max())
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    return {k: v for k, v in ref.items() if k != "linear4bit"}


def quantization_configs():
    """config.json's quantization_config as save_pretrained writes it (config.to_json_file(use_diff=True))."""
    import tempfile

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = []
    for qt, dq, cd in (("nf4", True, torch.bfloat16), ("fp4", False, torch.float16), ("nf4", False, torch.float32)):
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt, bnb_4bit_use_double_quant=dq,
                                 bnb_4bit_compute_dtype=cd)
        m = AutoModelForCausalLM.from_pretrained(QWEN3, quantization_config=cfg, device_map="cpu", dtype=torch.bfloat16)
        with tempfile.TemporaryDirectory() as t:
            m.config.to_json_file(os.path.join(t, "config.json"), use_diff=True)
            with open(os.path.join(t, "config.json")) as f:
                q = json.load(f)["quantization_config"]
        out.append({"quant_type": qt, "double_quant": dq, "compute_dtype": str(cd).replace("torch.", ""), "config": q})
    return out


def export_fuzz_seeds():
    import bitsandbytes.functional as F
    from safetensors.torch import save_file

    os.makedirs(FUZZ, exist_ok=True)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(8, 9, generator=g).to(torch.bfloat16)
    for qt, dq in (("nf4", True), ("fp4", False)):
        packed, st = F.quantize_4bit(w, blocksize=32, compress_statistics=dq, quant_type=qt)
        t = {"w.weight": packed}
        for k, v in st.as_dict(packed=True).items():
            t["w.weight." + k] = v.contiguous()
        save_file(t, os.path.join(FUZZ, f"linear_{qt}_{'dq' if dq else 'nodq'}.safetensors"))
        with open(os.path.join(FUZZ, f"state_{qt}_{'dq' if dq else 'nodq'}.json"), "w") as f:
            f.write(quant_state_json(st))
    with open(os.path.join(FUZZ, "state_odd.json"), "w") as f:
        f.write('{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [3, 5], "nested_blocksize": 256, '
                '"nested_dtype": "float32", "nested_offset": 1e-05}')


def main():
    import bitsandbytes
    import transformers

    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    from safetensors.torch import save_file

    meta = {"versions": {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()}}
    tensors = {}
    export_cases(tensors, meta)
    lut_edges(tensors)
    meta["float_repr"] = float_reprs()
    meta["spec_6_5"] = spec_6_5()
    meta["torch_mean"] = torch_means()
    meta["qwen3_bnb"] = export_qwen3_bnb()
    meta["quantization_configs"] = quantization_configs()
    save_file(tensors, os.path.join(OUT, "cases.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    export_fuzz_seeds()
    print("SPEC 6.5:", json.dumps(meta["spec_6_5"]))
    print("qwen3_bnb:", json.dumps(meta["qwen3_bnb"]))
    for c in meta["cases"]:
        for v in c["variants"]:
            if v.get("cpu_native_dequant_matches") is False:
                print("note: bnb's native CPU dequantize_4bit disagrees with the formula for", c["name"], v["name"])


if __name__ == "__main__":
    sys.exit(main())
