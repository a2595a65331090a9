#!/usr/bin/env python3
"""Side-by-side CPU benchmark of one QLoRA training step: distill (`bench/qlora_step`) vs PEFT + bitsandbytes.

  cmake --preset bench -DDISTILL_WITH_CUDA=OFF && ninja -C build/bench qlora_step
  tools/.venv/bin/python tools/bench_qlora.py [--qlora-step build/bench/bench/qlora_step] [--threads 1,2]
      [--family qwen3|gemma3|both] [--configs qlora,lora] [--attn eager,sdpa] [--batch 4] [--seq 256]
      [--steps 5] [--warmup 1] [--r 16] [--repeat 1] [--quiet-wait 60] [--grad-checkpoint] [--inspect]
      [--skip-ours] [--json out.json]

Model: a random "small" checkpoint made here with transformers (hidden 512, 8 layers, 8 heads / 4 KV heads,
head_dim 64, FFN 1536, vocab 8192 so the lm head does not dominate, untied head; Gemma3: sliding window 128),
weights drawn like tools/golden/models.py (N(0, 0.6/sqrt(in)), norms around their identity) so the loss is not
just ln(vocab) and the NF4 rounding shows in it, saved in bf16 with save_pretrained. Ids: fixed random
[batch, seq], written to a JSON file that both sides read (`--ids`).

The step, on both sides: loss = mean cross entropy over every token (labels = ids, shifted inside: B*(T-1)
targets), backward, clip the global gradient norm to 1.0, AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, weight
decay 0); LoRA r = alpha = --r on q,k,v,o,gate,up,down (A kaiming-uniform, B = 0), dropout 0. Timed: the whole
step (zero_grad, forward + loss, backward, clip, optimizer step); median of --steps after --warmup.
  qlora  ours: the f32 model, its 7 block projections quantized to NF4 + double quant on load (quant dtype f32).
         PEFT: from_pretrained(dtype=float32, BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute
         f32)), get_peft_model, model.train() (no prepare_model_for_kbit_training: it would turn on gradient
         checkpointing). bitsandbytes' CPU path in training mode is dequantize (its C kernel) + torch linear in
         forward and dequantize + matmul again in backward; --inspect shows it with the torch profiler, and
         what eval mode does (Linear4bit repacks to an AVX512-BF16 kernel, and stays repacked).
  lora   the same without quantization (ours: --no-quantize; PEFT: LoRA on the dense f32 model), so the cost
         of the 4-bit base is visible.
PEFT uses torch.optim.AdamW's default implementation, which on CPU tensors is the single-tensor for-loop
(foreach and fused are only defaulted on accelerators), and clip_grad_norm_'s default.

Threads: --threads K for ours (OpenMP), torch.set_num_threads(K) for PEFT, and OMP/MKL/OPENBLAS_NUM_THREADS=K
in both environments.

Peak memory: ru_maxrss of each side's own process (the whole run: imports, load, quantization, steps). Every
side runs in a subprocess of its own, and this driver imports only the standard library, because Linux carries
the parent's RSS at spawn time into the child's ru_maxrss (exec records the old mm's high-water mark) — a
driver holding torch would inflate both readings. The PEFT process also reports its RSS after
`import torch, transformers, peft` (the interpreter's share of its peak) and after loading.

Correctness: the step-0 loss (B = 0, so the adapters add nothing) must agree between the sides to ~1e-4
relative: same weights, same ids, same NF4 rounding. ours runs once more with --warmup 0 --steps 1 to print it
(qlora_step reports only the timed steps' losses). For scale the table also gives |qlora - lora| of PEFT's
step-0 losses: the agreement only means something if it is much tighter than the quantization effect. Later
losses are not compared: the two sides draw different random A matrices.

The machine may be shared: before each run the driver waits (up to --quiet-wait s) until other processes use
under 0.15 CPUs, and every run records how many CPUs other processes used while it ran ("others' CPUs", from
/proc/stat minus the run's own CPU time; anything above ~0.1 means the numbers are disturbed); --repeat N runs
each side N times per row and keeps the fastest median. PEFT also reports its CPU seconds per step.

Output: a markdown table (tokens/s = batch*seq / median step time; ratio = ours / PEFT; targets: >= 3x
tokens/s, <= 0.5x peak RSS), PEFT's phase split and memory detail, the loss check; --json writes everything.
"""
import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 8192


# ---------------------------------------------------------------------------------------------------------------
# Workers (subprocesses; the only places that import torch)
# ---------------------------------------------------------------------------------------------------------------
def _rss_mb():
    """VmRSS of this process in MB (/proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def prep_worker(a):
    """Writes the random checkpoints and the ids file; prints one JSON line with paths and versions."""
    import torch
    import transformers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

    models = {}
    for fam in a.families.split(","):
        torch.manual_seed(0)
        if fam == "qwen3":
            cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                              num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                              max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
                              tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2], pad_token_id=0)
            m = Qwen3ForCausalLM(cfg)
        else:
            cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                   num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                                   max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                   rope_local_base_freq=10000.0, sliding_window=128, query_pre_attn_scalar=64,
                                   tie_word_embeddings=False, bos_token_id=2, eos_token_id=[1], pad_token_id=0)
            m = Gemma3ForCausalLM(cfg)
        g = torch.Generator().manual_seed(1)
        gemma = fam == "gemma3"
        with torch.no_grad():  # as tools/golden/models.py: a model whose loss is not just ln(vocab)
            for name, p in m.named_parameters():
                if p.ndim == 1:  # Qwen3 norms multiply by w (around 1), Gemma3's by 1 + w (around 0)
                    p.copy_((0.0 if gemma else 1.0) + 0.2 * torch.randn(p.shape, generator=g))
                elif "embed" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * (0.08 if gemma else 0.5))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * (0.6 / p.shape[-1] ** 0.5))
        d = os.path.join(a.out, fam + "_small")
        m.to(torch.bfloat16).save_pretrained(d)
        models[fam] = d
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (a.batch, a.seq), generator=g)
    ids_file = os.path.join(a.out, "ids.json")
    with open(ids_file, "w") as f:
        json.dump(ids.tolist(), f)
    import bitsandbytes
    import peft

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl": torch.backends.mkl.is_available()}
    print(json.dumps({"models": models, "ids": ids_file, "versions": info}))


def _bnb_ops(prof):
    return {e.key: e.count for e in prof.key_averages() if "bitsandbytes" in e.key}


def _top_ops(prof, n=12):
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    return [{"op": e.key, "count": e.count, "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in ev[:n]]


def peft_worker(a):
    """One PEFT (+ bitsandbytes) run: load, attach LoRA, warmup + timed steps; prints one JSON line."""
    import resource

    import torch
    import transformers  # noqa: F401
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.set_num_threads(a.threads)
    rss_imports = _rss_mb()
    with open(a.ids) as f:
        ids = torch.tensor(json.load(f), dtype=torch.long)
    kw = {"dtype": torch.float32, "attn_implementation": a.attn}
    if a.quant == "nf4":
        import bitsandbytes  # noqa: F401

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.float32)
        kw["device_map"] = "cpu"
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, **kw)
    if a.grad_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.r, lora_dropout=0.0, target_modules=TARGETS,
                                             bias="none", task_type="CAUSAL_LM"))
    model.train()  # from_pretrained returns eval mode, where bnb's Linear4bit repacks to its bf16 kernel
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step():
        c0 = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t3 = time.perf_counter()
        step.norm = norm.item()
        return loss.item(), (t3 - t0, t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0)

    losses, times = [], []
    for s in range(a.warmup + a.steps):
        loss, t = step()
        losses.append(loss)
        if s >= a.warmup:
            times.append(t)
    med = [statistics.median(t[i] for t in times) for i in range(5)]
    out = {"impl": "peft" + ("+bnb" if a.quant == "nf4" else ""), "attn": a.attn, "threads": torch.get_num_threads(),
           "batch": ids.shape[0], "seq": ids.shape[1], "step_s": med[0], "tokens_per_s": ids.numel() / med[0],
           "phases_s": {"forward_loss": med[1], "backward": med[2], "clip_adamw": med[3]},
           "step_cpu_s": med[4], "steps_s": [t[0] for t in times],
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "rss_after_imports_mb": rss_imports, "rss_after_load_mb": rss_loaded, "load_s": load_s,
           "losses": losses, "trainable_params": sum(p.numel() for p in params),
           "optimizer": "torch.optim.AdamW default (single-tensor loop on CPU)"}
    if a.inspect:
        out["inspect"] = inspect_bnb(model, ids, step)
    print(json.dumps(out))


def inspect_bnb(model, ids, step):
    """What bitsandbytes actually runs on CPU: a training step, no-grad forwards in train and eval mode, and a
    training step after the eval forward, under the torch profiler."""
    import warnings

    import bitsandbytes as bnb
    import torch
    from torch.profiler import ProfilerActivity, profile

    def packed():
        mods = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        return sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in mods), len(mods)

    res = {"has_avx512bf16": bool(bnb.functional.has_avx512bf16())}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss, _ = step()
    res["train_step"] = {"loss": loss, "grad_norm": step.norm,
                         "s": sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6,
                         "bnb_ops": _bnb_ops(prof), "top_ops": _top_ops(prof), "packed_modules": packed()}
    def profiled_forward():
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss = model(input_ids=ids, labels=ids).loss.item()
        return {"loss": loss, "s": time.perf_counter() - t0, "bnb_ops": _bnb_ops(prof), "packed_modules": packed()}

    with torch.no_grad():
        model.train()
        res["train_mode_no_grad_forward"] = profiled_forward()
        model.eval()
        res["eval_mode_no_grad_forward"] = profiled_forward()
        t0 = time.perf_counter()
        loss_eval2 = model(input_ids=ids, labels=ids).loss.item()
        res["eval_mode_second_forward"] = {"loss": loss_eval2, "s": time.perf_counter() - t0}
    model.train()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss, _ = step()
    res["train_step_after_eval"] = {"loss": loss, "grad_norm": step.norm, "packed_modules": packed(),
                                    "bnb_ops": _bnb_ops(prof),
                                    "warnings": sorted({str(x.message)[:160] for x in w})}
    return res


# ---------------------------------------------------------------------------------------------------------------
# Driver (standard library only: see the note on ru_maxrss in the docstring)
# ---------------------------------------------------------------------------------------------------------------
def busy_cpu_s():
    """CPU seconds all processes have used (the machine-wide non-idle time of /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def wait_quiet(max_wait_s, cores=0.15):
    """Waits (up to max_wait_s) until other processes use under `cores` CPUs over a 2 s window."""
    t_end = time.time() + max_wait_s
    while True:
        b0, t0 = busy_cpu_s(), time.perf_counter()
        time.sleep(2.0)
        used = (busy_cpu_s() - b0) / (time.perf_counter() - t0)
        if used < cores or time.time() > t_end:
            return used


def run_proc(cmd, threads, quiet_wait=0.0):
    """Runs cmd with K threads; returns (last JSON line of stdout + load average, CPU s and other processes'
    CPUs during the run, ru_maxrss MB from wait4, wall s)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if quiet_wait > 0:
        wait_quiet(quiet_wait)
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        busy0 = busy_cpu_s()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:  # interrupted: do not leave the run behind
            p.kill()
            p.wait()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        others = max(0.0, (busy_cpu_s() - busy0 - ru.ru_utime - ru.ru_stime) / wall)
        out.seek(0)
        err.seek(0)
        so, se = out.read(), err.read()
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{se[-4000:]}")
    lines = [ln for ln in so.splitlines() if ln.startswith("{")]
    if not lines:
        sys.exit(f"no JSON line from {' '.join(cmd)}:\n{so[-2000:]}\n{se[-2000:]}")
    r = json.loads(lines[-1])
    r["loadavg_before"], r["cpu_s"], r["others_cores"] = load, ru.ru_utime + ru.ru_stime, others
    return r, ru.ru_maxrss / 1024.0, wall


def run_ours(a, model_dir, ids, threads, quant, steps=None, warmup=None):
    cmd = [a.qlora_step, "--model", model_dir, "--ids", ids, "--batch", str(a.batch), "--seq", str(a.seq),
           "--steps", str(a.steps if steps is None else steps), "--warmup", str(a.warmup if warmup is None else warmup),
           "--r", str(a.r), "--threads", str(threads)]
    if not quant:
        cmd.append("--no-quantize")
    if a.grad_checkpoint:
        cmd.append("--grad-checkpoint")
    r, maxrss, wall = run_proc(cmd, threads, a.quiet_wait)
    r["wait4_maxrss_mb"], r["wall_s"] = maxrss, wall
    return r


def run_peft(a, model_dir, ids, threads, quant, attn, inspect=False):
    cmd = [sys.executable, os.path.abspath(__file__), "_peft", "--model", model_dir, "--ids", ids,
           "--threads", str(threads), "--steps", str(a.steps), "--warmup", str(a.warmup), "--r", str(a.r),
           "--attn", attn, "--quant", "nf4" if quant else "none"]
    if a.grad_checkpoint:
        cmd.append("--grad-checkpoint")
    if inspect:
        cmd.append("--inspect")
    r, maxrss, wall = run_proc(cmd, threads, a.quiet_wait)
    r["wait4_maxrss_mb"], r["wall_s"] = maxrss, wall
    return r


def best(runs):
    """The run with the fastest median step of --repeat runs (the machine may be shared); all medians kept."""
    runs = list(runs)
    b = min(runs, key=lambda r: r["step_s"])
    b["repeat_step_s"] = [r["step_s"] for r in runs]
    return b


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_inspect(ins):
    lines = [f"bitsandbytes CPU path (has_avx512bf16: {ins['has_avx512bf16']}; packed = Linear4bit modules "
             "repacked to the AVX512-BF16 layout, of all):"]
    for k in ("train_step", "train_mode_no_grad_forward", "eval_mode_no_grad_forward"):
        v = ins[k]
        extra = f", loss {v['loss']:.6f}, {v['s']:.3f} s" + (" (CPU, profiled)" if k == "train_step" else "")
        lines.append(f"  {k}: packed {v['packed_modules'][0]}/{v['packed_modules'][1]}{extra}; bnb ops "
                     + ", ".join(f"{op} x{n}" for op, n in sorted(v["bnb_ops"].items())))
    v = ins["eval_mode_second_forward"]
    lines.append(f"  eval_mode_second_forward: loss {v['loss']:.6f}, {v['s']:.3f} s")
    v = ins["train_step_after_eval"]
    lines.append(f"  train_step_after_eval (model.train() again): loss {v['loss']:.6f}, grad norm "
                 f"{v['grad_norm']:.4g} (before eval: {ins['train_step']['grad_norm']:.4g}), packed "
                 f"{v['packed_modules'][0]}/{v['packed_modules'][1]}; bnb ops "
                 + ", ".join(f"{op} x{n}" for op, n in sorted(v["bnb_ops"].items())))
    for msg in v["warnings"]:
        lines.append(f"    warning: {msg}")
    lines.append("  top ops of one training step (self CPU time):")
    for o in ins["train_step"]["top_ops"]:
        lines.append(f"    {o['op']:48s} x{o['count']:<5d} {o['self_ms']:9.1f} ms  {100 * o['share']:5.1f}%")
    return "\n".join(lines)


def report(a, results, families, attns):
    print()
    print(f"QLoRA step, {results['machine']}, batch {a.batch} x seq {a.seq} = {a.batch * a.seq} tokens/step, "
          f"LoRA r={a.r} on 7 projections, median of {a.steps} steps. Ratios: ours / PEFT.")
    print()
    print("| model | config | threads | ours tokens/s | PEFT tokens/s | ratio | ours peak RSS MB | "
          "PEFT peak RSS MB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        o, p = r["ours"], r["peft"]
        name = {"qlora": "QLoRA NF4+DQ", "lora": "LoRA f32 (no quant)"}[r["config"]]
        name += " / PEFT" + ("+bnb" if r["config"] == "qlora" else "") + f" {r['peft_attn']}"
        if o:
            print(f"| {r['family']}_small | {name} | {r['threads']} | {o['tokens_per_s']:.0f} | "
                  f"{p['tokens_per_s']:.0f} | {o['tokens_per_s'] / p['tokens_per_s']:.2f}x | "
                  f"{o['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | {o['peak_rss_mb'] / p['peak_rss_mb']:.2f}x |")
        else:
            print(f"| {r['family']}_small | {name} | {r['threads']} | — | {p['tokens_per_s']:.0f} | — | — | "
                  f"{p['peak_rss_mb']:.0f} | — |")
    print()
    print("PEFT process detail (median phases; RSS after `import torch, transformers, peft` and after load; "
          "others' CPUs: other processes' use while the run ran):")
    print()
    print("| model | config | threads | attn | step s | forward+loss s | backward s | clip+AdamW s | CPU s/step | "
          "RSS after imports MB | RSS after load MB | peak - imports MB | others' CPUs | ours step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        p, o = r["peft"], r["ours"]
        ph = p["phases_s"]
        print(f"| {r['family']}_small | {r['config']} | {r['threads']} | {r['peft_attn']} | {p['step_s']:.3f} | "
              f"{ph['forward_loss']:.3f} | {ph['backward']:.3f} | {ph['clip_adamw']:.4f} | {p['step_cpu_s']:.3f} | "
              f"{p['rss_after_imports_mb']:.0f} | {p['rss_after_load_mb']:.0f} | "
              f"{p['peak_rss_mb'] - p['rss_after_imports_mb']:.0f} | {p['others_cores']:.2f} | "
              + (f"{o['step_s']:.3f} (others' CPUs {o['others_cores']:.2f}) |" if o else "— |"))
    if results["loss_check"]:
        print()
        print("Step-0 loss (LoRA B = 0: the base model's mean CE over B*(T-1) tokens):")
        print()
        print("| model | config | ours | PEFT | rel. diff | PEFT |qlora - lora| |")
        print("|---|---|---|---|---|---|")
        q_minus_l = {}
        for fam in families:
            ls = {c["config"]: c["peft"][attns[0]] for c in results["loss_check"] if c["family"] == fam}
            if "qlora" in ls and "lora" in ls:
                q_minus_l[fam] = abs(ls["qlora"] - ls["lora"])
        for c in results["loss_check"]:
            for attn, pl in c["peft"].items():
                rel = abs(c["ours"] - pl) / abs(pl)
                c.setdefault("rel_diff", {})[attn] = rel
                ref = f"{q_minus_l[c['family']]:.2e}" if c["family"] in q_minus_l else "—"
                print(f"| {c['family']}_small | {c['config']} (PEFT {attn}) | {c['ours']:.6f} | {pl:.6f} | "
                      f"{rel:.1e} | {ref} |")
    for fam, ins in results.get("inspect", {}).items():
        print()
        print(f"[{fam}] " + fmt_inspect(ins))


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) > 1 and sys.argv[1] in ("_prep", "_peft"):
        w = argparse.ArgumentParser()
        w.add_argument("mode")
        w.add_argument("--out")
        w.add_argument("--families")
        w.add_argument("--model")
        w.add_argument("--ids")
        w.add_argument("--threads", type=int, default=1)
        w.add_argument("--batch", type=int)
        w.add_argument("--seq", type=int)
        w.add_argument("--steps", type=int)
        w.add_argument("--warmup", type=int)
        w.add_argument("--r", type=int)
        w.add_argument("--attn")
        w.add_argument("--quant")
        w.add_argument("--grad-checkpoint", action="store_true")
        w.add_argument("--inspect", action="store_true")
        wa = w.parse_args()
        return prep_worker(wa) if wa.mode == "_prep" else peft_worker(wa)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qlora-step", default=os.path.join(ROOT, "build/bench/bench/qlora_step"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--family", default="qwen3", choices=["qwen3", "gemma3", "both"])
    ap.add_argument("--configs", default="qlora,lora", help="qlora (NF4 base) and/or lora (dense f32 base)")
    ap.add_argument("--attn", default="eager,sdpa", help="PEFT attention implementations (first = main rows)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side and row; the fastest median is kept")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each run, wait up to this many seconds for other processes to go idle")
    ap.add_argument("--grad-checkpoint", action="store_true", help="gradient checkpointing on both sides")
    ap.add_argument("--inspect", action="store_true",
                    help="one more PEFT qlora run that profiles a step and the eval-mode path of bitsandbytes")
    ap.add_argument("--skip-ours", action="store_true", help="PEFT side only (qlora_step not built)")
    ap.add_argument("--keep", help="write the models and ids here instead of a temporary directory")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    attns = a.attn.split(",")
    configs = a.configs.split(",")
    families = ["qwen3", "gemma3"] if a.family == "both" else [a.family]
    if not a.skip_ours and not os.access(a.qlora_step, os.X_OK):
        sys.exit(f"no qlora_step at {a.qlora_step} (build it, pass --qlora-step, or --skip-ours)")

    tmp_ctx = tempfile.TemporaryDirectory() if not a.keep else None
    tmp = a.keep or tmp_ctx.name
    os.makedirs(tmp, exist_ok=True)
    prep, _, _ = run_proc([sys.executable, os.path.abspath(__file__), "_prep", "--out", tmp, "--families",
                           ",".join(families), "--batch", str(a.batch), "--seq", str(a.seq)], 1)
    results = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "python": platform.python_version(),
               "versions": prep["versions"], "batch": a.batch, "seq": a.seq, "steps": a.steps, "warmup": a.warmup,
               "r": a.r, "grad_checkpoint": a.grad_checkpoint, "runs": [], "loss_check": []}
    print(f"# {results['machine']}; python {results['python']}; "
          + ", ".join(f"{k} {v}" for k, v in prep["versions"].items()), flush=True)
    print(f"# batch {a.batch}, seq {a.seq}, r {a.r}, median of {a.steps} steps after {a.warmup} warm-up"
          + (", gradient checkpointing" if a.grad_checkpoint else ""), flush=True)

    for fam in families:
        d = prep["models"][fam]
        for cfg in configs:
            quant = cfg == "qlora"
            for n in threads:
                ours = None if a.skip_ours else best(run_ours(a, d, prep["ids"], n, quant) for _ in range(a.repeat))
                for attn in attns:
                    peft = best(run_peft(a, d, prep["ids"], n, quant, attn) for _ in range(a.repeat))
                    results["runs"].append({"family": fam, "config": cfg, "threads": n, "peft_attn": attn,
                                            "ours": ours, "peft": peft})
                    msg = (f"{fam} {cfg:5s} t{n} PEFT({attn}) {peft['tokens_per_s']:8.1f} tok/s "
                           f"{peft['peak_rss_mb']:7.0f} MB  step-0 loss {peft['losses'][0]:.6f} "
                           f"(others' CPUs {peft['others_cores']:.2f})")
                    if ours:
                        msg += (f" | ours {ours['tokens_per_s']:8.1f} tok/s {ours['peak_rss_mb']:7.0f} MB  "
                                f"{ours['tokens_per_s'] / peft['tokens_per_s']:5.2f}x speed, "
                                f"{ours['peak_rss_mb'] / peft['peak_rss_mb']:5.2f}x memory "
                                f"(others' CPUs {ours['others_cores']:.2f})")
                    print(msg, flush=True)
            # the step-0 loss of ours (its timed runs report only the post-warm-up losses)
            if not a.skip_ours:
                first = run_ours(a, d, prep["ids"], max(threads), quant, steps=1, warmup=0)
                peft0 = {r["peft_attn"]: r["peft"]["losses"][0] for r in results["runs"]
                         if r["family"] == fam and r["config"] == cfg and r["threads"] == max(threads)}
                results["loss_check"].append({"family": fam, "config": cfg, "ours": first["losses"][0],
                                              "peft": peft0})
        if a.inspect:
            results.setdefault("inspect", {})[fam] = run_peft(a, d, prep["ids"], max(threads), True, attns[0],
                                                              inspect=True)["inspect"]
    report(a, results, families, attns)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if tmp_ctx:
        tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
