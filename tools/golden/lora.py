"""Reference LoRA / QLoRA training trajectories (PEFT + torch AdamW + HF linear schedule) for the C++ trainer.

    tools/.venv/bin/python tools/golden/lora.py        # -> tests/golden/lora/<case>/   (~10 s on CPU)

Reference: torch 2.15, transformers 5.24, peft 0.21.2, bitsandbytes 0.50.2 (CPU backend), all on CPU.
The base models are the tiny checkpoints of tools/golden/models.py (tests/golden/models/{qwen3_tiny,gemma3_tiny},
bf16 safetensors whose values are all bf16 numbers); they are referred to by relative path, never copied.

Cases (all: lora_dropout 0, bias "none", targets q/k/v/o/gate/up/down_proj of every layer):
  qwen3_f32      Qwen3 loaded in f32, r=4, lora_alpha=8 (scaling alpha/r = 2)
  gemma3_rslora  Gemma3 loaded in f32, r=4, lora_alpha=8, use_rslora (scaling alpha/sqrt(r) = 4)
  qwen3_nf4      Qwen3 loaded through BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute f32):
                 every decoder nn.Linear becomes a bnb Linear4bit (lm_head, embeddings and norms stay f32);
                 LoRA as in qwen3_f32. No prepare_model_for_kbit_training (it would upcast/alter the base).

Each tests/golden/lora/<case>/ holds:
  case.json           hyper-parameters (below; max_grad_norm per case, chosen between the step norms so that
                      some steps are clipped and some are not), "model" (base dir relative to the case dir),
                      "quantized", "n_items" (N below), "quant_source_dtype" (qwen3_nf4), library versions.
  batch.json          {"micro_batches": [{"ids", "labels", "attention_mask"}, ...]}: 2 micro-batches of rows of
                      different lengths, right-padded (pad id 0, mask 0, label -100), labels -100 on a prompt
                      prefix. The SAME micro-batches are used at every optimizer step.
  adapter_init/       adapter_model.safetensors + adapter_config.json as PEFT's save_pretrained writes them
                      (its README.md model card is deleted; target_modules is sorted since PEFT writes a set in
                      hash order; base_model_name_or_path is the repo-relative model dir). lora_A is PEFT's
                      default init (kaiming-uniform, a=sqrt(5)) after torch.manual_seed(SEED); every lora_B is
                      then overwritten with N(0, 0.02^2) values from a torch.Generator seeded with SEED + 1, in
                      named_parameters order, so that B != 0 and A gets a gradient from the first step.
  steps.json          {"steps": [{"step", "loss", "micro_losses", "grad_norm", "clip_coef", "clipped", "lr"}]}
                      (clip_coef: torch's f32 factor below, as a double; clipped = clip_coef < 1).
  adapter_step<k>.safetensors   get_peft_model_state_dict (PEFT's saved key names, f32) after optimizer step k.
  ref_dequant.safetensors       (qwen3_nf4 only) layer 0 q_proj as bnb holds it: "weight" (u8 [2048, 1] packed
                      nibbles), "absmax" (u8 [64], double-quantized), "nested_absmax" (f32 [1]), "offset"
                      (f32 [1]), "dequant" (f32 [64, 64] = bnb.functional.dequantize_4bit, what the forward
                      multiplies with).

Training loop (this is the semantics the C++ must reproduce), with P = the LoRA parameters (all lora_A/lora_B
weights, f32; everything else frozen) and the model in train() mode (all dropouts are p=0):
    opt   = torch.optim.AdamW(P, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, foreach=False)
    sched = transformers.get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)   # sets lr = LR * 0/WARMUP = 0
    N     = sum over ALL micro-batches of count(labels[:, 1:] != -100)         # HF's num_items_in_batch
    for step in 1..3:
        opt.zero_grad(set_to_none=True)
        for (ids, labels, mask) in micro_batches:
            logits  = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()   # [B, T, V]
            loss_mb = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1),
                                      ignore_index=-100, reduction="sum") / N
            loss_mb.backward()                           # grads accumulate over the micro-batches
        grad_norm = torch.nn.utils.clip_grad_norm_(P, max_grad_norm)   # f32: the L2 norm of the per-tensor
              # L2 norms, BEFORE clipping; torch then multiplies every grad by the f32 scalar
              # clip_coef = min(1, max_grad_norm / (grad_norm + 1e-6))   (also when it is 1: a no-op)
        lr = opt.param_groups[0]["lr"]                  # recorded before opt.step()
        opt.step(); sched.step()
    steps.json "loss" = sum of the micro losses (= the mean token CE over the step's N tokens).
The linear schedule multiplier is step/max(1,W) for step < W, else max(0, (T-step)/max(1, T-W)), evaluated at the
0-based index of the optimizer step: with W=1, T=4 the lrs are 0, LR, 2/3 LR. Step 1 therefore changes nothing
(lr 0 makes decay and update exact no-ops: adapter_step1 == adapter_init bit for bit) but it does advance
AdamW's step count and its moments; steps 2 and 3 use bias corrections with t=2 and t=3.

LoRA forward (PEFT): y = base(x) + lora_B(lora_A(x)) * scaling. Quantized base (qwen3_nf4): bnb computes
F.linear(x, W_dq) with W_dq = dequantize_4bit(...) in f32 (absmax = dyn[absmax_u8] * nested_absmax + offset,
W_dq = nf4[q] * absmax), for the backward grad_x = grad_y @ W_dq. bnb 0.50.2 on a CPU with AVX512-BF16 would,
in eval mode with an input that needs no grad, repack the weight and run a bf16 gemv instead: this script (and
tools/check_peft_adapter.py) set `support_avx512bf16_for_cpu = False` on every Linear4bit so that never happens.

Quantization source (qwen3_nf4): transformers loads the bf16 checkpoint with dtype=float32, i.e. each weight is
upcast to f32 and then quantized by bnb.functional.quantize_4bit(W_f32, blocksize 64, nf4, compress_statistics)
(quant_state.dtype is float32). On CPU the 4-bit step is bnb's default torch kernel (absmax = max|x| per
64-block, s = clamp(x * (1/absmax), -1, 1), bucketize on the NF4 midpoints, ties to the lower code, element 2i in
the high nibble); double quant: offset = torch.mean(absmax) (f32; equal here to the f64 mean rounded to f32),
then the native CPU quantize_blockwise(absmax - offset, dynamic map, 256). The script checks that every
Linear4bit's packed bytes, absmax codes, nested absmax and offset equal quantize_4bit of the f32 weights, and also
records whether quantizing the bf16 tensor would give the same bytes (it does here: the values are bf16 numbers
and bnb computes in f32).
"""
import json
import os
import shutil
import sys

import bitsandbytes as bnb
import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, get_linear_schedule_with_warmup

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODELS = os.path.join(ROOT, "tests", "golden", "models")
OUT = os.path.join(ROOT, "tests", "golden", "lora")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 1234
B_STD = 0.02
HYPER = {"lr": 1e-2, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
         "schedule": "linear", "warmup_steps": 1, "total_steps": 4, "steps": 3, "micro_batches_per_step": 2}

CASES = [
    {"name": "qwen3_f32", "model": "qwen3_tiny", "r": 4, "lora_alpha": 8, "use_rslora": False, "quantized": False,
     "max_grad_norm": 0.57},
    {"name": "gemma3_rslora", "model": "gemma3_tiny", "r": 4, "lora_alpha": 8, "use_rslora": True,
     "quantized": False, "max_grad_norm": 3.0},
    {"name": "qwen3_nf4", "model": "qwen3_tiny", "r": 4, "lora_alpha": 8, "use_rslora": False, "quantized": True,
     "max_grad_norm": 0.57},
]

# max_grad_norm is chosen per case between the step norms, so that some steps are clipped and some are not
# (main() checks both happen).

# (length, prompt length) per row; rows of a micro-batch are right-padded to the longest. Lengths > 6 cross
# Gemma3's sliding window.
ROWS = [[(11, 4), (7, 3)], [(9, 5), (13, 2), (5, 2)]]
PAD_ID = 0


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bnb.__version__}


def make_batch():
    g = torch.Generator().manual_seed(SEED + 7)
    mbs = []
    for rows in ROWS:
        t = max(n for n, _ in rows)
        ids, labels, mask = [], [], []
        for n, prompt in rows:
            r = torch.randint(1, 256, (n,), generator=g).tolist()
            ids.append(r + [PAD_ID] * (t - n))
            labels.append([-100] * prompt + r[prompt:] + [-100] * (t - n))
            mask.append([1] * n + [0] * (t - n))
        mbs.append({"ids": ids, "labels": labels, "attention_mask": mask})
    return {"micro_batches": mbs}


def quant_config():
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def disable_cpu_bf16_path(model):
    """bnb's Linear4bit would switch to a repacked bf16 gemv on AVX512-BF16 CPUs in eval/no-grad forwards."""
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base(model_dir, quantized):
    kw = {"dtype": torch.float32, "attn_implementation": "eager"}
    if quantized:
        kw.update(quantization_config=quant_config(), device_map="cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    if quantized:
        assert disable_cpu_bf16_path(model) > 0
    return model


def check_quantization(model, model_dir):
    """Every Linear4bit must hold quantize_4bit(f32 weight); returns facts for case.json."""
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    ref_w = {n: m.weight.data for n, m in ref.named_modules() if isinstance(m, torch.nn.Linear)}
    same_bf16, count, offsets_match_f64 = True, 0, True
    for name, m in model.named_modules():
        if not isinstance(m, bnb.nn.Linear4bit):
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        w, qs = m.weight, m.weight.quant_state
        assert qs.dtype == torch.float32 and qs.blocksize == 64 and qs.quant_type == "nf4" and qs.nested, name
        assert qs.state2.blocksize == 256
        for src in (ref_w[name], ref_w[name].to(torch.bfloat16)):
            pk, st = bnb.functional.quantize_4bit(src, blocksize=64, compress_statistics=True, quant_type="nf4")
            same = (torch.equal(pk.flatten(), w.data.flatten()) and torch.equal(st.absmax, qs.absmax)
                    and torch.equal(st.state2.absmax, qs.state2.absmax) and torch.equal(st.offset, qs.offset))
            if src.dtype == torch.float32:
                assert same, f"{name}: Linear4bit is not quantize_4bit(f32 weight)"
            else:
                same_bf16 &= same
        # offset = torch.mean of the f32 block absmaxes; is it the correctly rounded mean?
        am = bnb.functional.quantize_4bit(ref_w[name], blocksize=64, compress_statistics=False)[1].absmax
        offsets_match_f64 &= float(qs.offset) == float(torch.tensor(float(am.double().mean()), dtype=torch.float32))
        count += 1
    lm = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {"quantized_linears": count, "same_bytes_from_bf16": same_bf16,
            "offset_equals_f64_mean_rounded_to_f32": offsets_match_f64,
            "lm_head_quantized": isinstance(lm, bnb.nn.Linear4bit)}


def lora_params(model):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert named and all(".lora_A." in n or ".lora_B." in n for n, _ in named), [n for n, _ in named]
    return [p for _, p in named]


def lora_state(model):
    sd = get_peft_model_state_dict(model)
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sd.items()}


def run_case(case, batch):
    name = case["name"]
    d = os.path.join(OUT, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model_dir = os.path.join(MODELS, case["model"])
    model = load_base(model_dir, case["quantized"])
    quant_info = check_quantization(model, model_dir) if case["quantized"] else None

    cfg = LoraConfig(r=case["r"], lora_alpha=case["lora_alpha"], use_rslora=case["use_rslora"], lora_dropout=0.0,
                     target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(SEED)
    model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * B_STD)
    # Deterministic, machine-independent base path in adapter_config.json (repo-relative).
    model.peft_config["default"].base_model_name_or_path = os.path.relpath(model_dir, ROOT)
    init_dir = os.path.join(d, "adapter_init")
    model.save_pretrained(init_dir)
    readme = os.path.join(init_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # PEFT writes target_modules from a set (order varies with PYTHONHASHSEED): sort it so re-runs are identical.
    cfg_path = os.path.join(init_dir, "adapter_config.json")
    with open(cfg_path) as f:
        acfg = json.load(f)
    acfg["target_modules"] = sorted(acfg["target_modules"])
    with open(cfg_path, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
    saved = load_file(os.path.join(init_dir, "adapter_model.safetensors"))
    init = lora_state(model)
    assert set(saved) == set(init) and all(torch.equal(saved[k].float(), init[k]) for k in init)
    n_lora = len(init)

    params = lora_params(model)
    assert len(params) == n_lora
    model.train()
    opt = torch.optim.AdamW(params, lr=HYPER["lr"], betas=tuple(HYPER["betas"]), eps=HYPER["eps"],
                            weight_decay=HYPER["weight_decay"], foreach=False)
    sched = get_linear_schedule_with_warmup(opt, HYPER["warmup_steps"], HYPER["total_steps"])

    mbs = [{k: torch.tensor(v) for k, v in mb.items()} for mb in batch["micro_batches"]]
    n_items = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in mbs)
    steps = []
    for step in range(1, HYPER["steps"] + 1):
        opt.zero_grad(set_to_none=True)
        micro = []
        for mb in mbs:
            logits = model(input_ids=mb["ids"], attention_mask=mb["attention_mask"], use_cache=False).logits.float()
            v = logits.shape[-1]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, v), mb["labels"][:, 1:].reshape(-1),
                                   ignore_index=-100, reduction="sum") / n_items
            # Sanity: HF's own causal-LM loss with num_items_in_batch is the same quantity.
            with torch.no_grad():
                hf = model(input_ids=mb["ids"], attention_mask=mb["attention_mask"], labels=mb["labels"],
                           num_items_in_batch=torch.tensor(n_items), use_cache=False).loss
            assert abs(hf.item() - loss.item()) <= 1e-5 * abs(loss.item()), (hf.item(), loss.item())
            loss.backward()
            micro.append(loss.item())
        norm_t = torch.nn.utils.clip_grad_norm_(params, case["max_grad_norm"])  # f32 scalar tensor
        total_norm = norm_t.item()
        clip_coef = (case["max_grad_norm"] / (norm_t + 1e-6)).clamp(max=1.0).item()  # torch's f32 factor
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        steps.append({"step": step, "loss": sum(micro), "micro_losses": micro, "grad_norm": total_norm,
                      "clip_coef": clip_coef, "clipped": clip_coef < 1.0, "lr": lr})
        save_file(lora_state(model), os.path.join(d, f"adapter_step{step}.safetensors"), metadata={"format": "pt"})

    if case["quantized"]:
        q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        qs = q.weight.quant_state
        save_file({"weight": q.weight.data.contiguous(), "absmax": qs.absmax.contiguous(),
                   "nested_absmax": qs.state2.absmax.contiguous(), "offset": qs.offset.reshape(1).float(),
                   "dequant": bnb.functional.dequantize_4bit(q.weight.data, qs).float().contiguous()},
                  os.path.join(d, "ref_dequant.safetensors"), metadata={"format": "pt"})

    rel_model = os.path.relpath(model_dir, d)
    meta = {"model": rel_model, "r": case["r"], "lora_alpha": case["lora_alpha"], "use_rslora": case["use_rslora"],
            "lora_dropout": 0.0, "target_modules": TARGETS, "bias": "none", **HYPER,
            "max_grad_norm": case["max_grad_norm"],
            "quantized": case["quantized"], "n_items": n_items, "seed": SEED, "lora_B_init_std": B_STD,
            "lora_tensors": n_lora, "versions": versions()}
    if case["quantized"]:
        meta.update({"quant_source_dtype": "float32", "bnb_4bit_quant_type": "nf4", "bnb_4bit_blocksize": 64,
                     "bnb_4bit_use_double_quant": True, "bnb_nested_blocksize": 256,
                     "bnb_4bit_compute_dtype": "float32", "quant_checks": quant_info})
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with open(os.path.join(d, "batch.json"), "w") as f:
        json.dump(batch, f)
        f.write("\n")
    with open(os.path.join(d, "steps.json"), "w") as f:
        json.dump({"steps": steps}, f, indent=1)
        f.write("\n")

    moved = [max(float((a - init[k]).abs().max()) for k, a in load_file(
        os.path.join(d, f"adapter_step{s}.safetensors")).items()) for s in (1, 2, 3)]
    print(f"{name}: N={n_items} lora tensors={n_lora}")
    for s in steps:
        print(f"  step {s['step']}: loss {s['loss']:.6f} grad_norm {s['grad_norm']:.6f} clip {s['clip_coef']:.4f}"
              f" lr {s['lr']:.6g}")
    print("  max |adapter - init| after steps 1..3:", moved)
    if quant_info:
        print("  quant:", quant_info)
    return steps


def main():
    batch = make_batch()
    for case in CASES:
        steps = run_case(case, batch)
        clipped = [s["clipped"] for s in steps]
        assert any(clipped) and not all(clipped), f"{case['name']}: clipped per step {clipped}"


if __name__ == "__main__":
    sys.exit(main())
