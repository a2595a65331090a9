#!/usr/bin/env python3
"""Side-by-side CPU benchmark: `distill generate` vs Hugging Face transformers on the same models, same threads.

  tools/.venv/bin/python tools/bench_generate.py --distill build/ci/apps/distill/distill [--threads 1,2]

Decode (issue 5 target: >= 5x HF `generate`): the tiny checkpoints of tests/golden/models/ (Qwen3 and Gemma3,
hidden 64), a 5-token prompt, N new tokens greedy with the stop ids ignored. Both sides are timed inside the
process over the whole generation (HF: wall time of model.generate(); distill: its prefill + decode timers),
tokens/s = N / time; median of --repeat runs after one warm-up.

Prefill (target: >= 1x a torch forward): random "small" Qwen3/Gemma3 models made here (hidden 512, 8 layers,
f32), a --prompt-len token prompt. torch: model(ids, logits_to_keep=1) under no_grad (only the last position
reaches the lm head, as in distill's prefill); distill: the prefill timer of `generate --max-new-tokens 1`.

Both use f32 weights and activations. HF uses its default attention (sdpa) for both benchmarks.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = re.compile(r"prefill (\d+) tokens in ([\d.]+) s .*decode (\d+) tokens in ([\d.]+) s")


def run_distill(binary, model_dir, ids, new_tokens, threads):
    cmd = [binary, "generate", "--model", model_dir, "--prompt-ids", ",".join(map(str, ids)), "--greedy",
           "--max-new-tokens", str(new_tokens), "--ignore-eos", "--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = STATS.search(p.stderr)
    if not m:
        sys.exit(f"no stats line from {' '.join(cmd)}:\n{p.stderr}")
    return float(m.group(2)), float(m.group(4)), p.stdout.split()


def median_time(fn, repeat):
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def small_model(kind, tmp):
    torch.manual_seed(0)
    if kind == "qwen3":
        cfg = Qwen3Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=4096,
                          tie_word_embeddings=True, eos_token_id=[1])
        m = Qwen3ForCausalLM(cfg)
    else:
        cfg = Gemma3TextConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                               num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                               max_position_embeddings=4096, sliding_window=256, query_pre_attn_scalar=64,
                               eos_token_id=[1])
        m = Gemma3ForCausalLM(cfg)
    d = os.path.join(tmp, kind + "_small")
    m.to(torch.float32).save_pretrained(d)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distill", default=os.path.join(ROOT, "build/ci/apps/distill/distill"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch": torch.__version__, "transformers": transformers.__version__, "decode": [], "prefill": []}
    threads = [int(t) for t in a.threads.split(",")]
    prompt = [1, 5, 9, 200, 17]
    for n in threads:
        torch.set_num_threads(n)
        for name, cls in (("qwen3_tiny", Qwen3ForCausalLM), ("gemma3_tiny", Gemma3ForCausalLM)):
            d = os.path.join(ROOT, "tests/golden/models", name)
            m = cls.from_pretrained(d, dtype=torch.float32).eval()
            ids = torch.tensor([prompt])
            with torch.no_grad():
                out = m.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
                hf_t = median_time(lambda: m.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                                      do_sample=False), a.repeat)
            hf_ids = out[0, len(prompt):].tolist()
            runs = [run_distill(a.distill, d, prompt, a.new_tokens, n) for _ in range(a.repeat + 1)][1:]
            ours_t = statistics.median(p + dcd for p, dcd, _ in runs)
            same = [int(x) for x in runs[0][2]] == hf_ids
            r = {"model": name, "threads": n, "new_tokens": a.new_tokens, "hf_tok_s": a.new_tokens / hf_t,
                 "distill_tok_s": a.new_tokens / ours_t, "same_tokens": same}
            r["ratio"] = r["distill_tok_s"] / r["hf_tok_s"]
            results["decode"].append(r)
            print(f"decode  {name:12s} threads {n}: HF generate {r['hf_tok_s']:8.1f} tok/s   distill "
                  f"{r['distill_tok_s']:8.1f} tok/s   {r['ratio']:5.1f}x   same tokens: {same}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("qwen3", "gemma3"):
            d = small_model(kind, tmp)
            cls = Qwen3ForCausalLM if kind == "qwen3" else Gemma3ForCausalLM
            m = cls.from_pretrained(d, dtype=torch.float32).eval()
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(2, 32000, (1, a.prompt_len), generator=g)
            for n in threads:
                torch.set_num_threads(n)
                with torch.no_grad():
                    t = median_time(lambda: m(ids, logits_to_keep=1), a.repeat)
                runs = [run_distill(a.distill, d, ids[0].tolist(), 1, n) for _ in range(a.repeat + 1)][1:]
                ours = statistics.median(p for p, _, _ in runs)
                r = {"model": kind + "_small", "threads": n, "prompt_tokens": a.prompt_len,
                     "torch_tok_s": a.prompt_len / t, "distill_tok_s": a.prompt_len / ours}
                r["ratio"] = r["distill_tok_s"] / r["torch_tok_s"]
                results["prefill"].append(r)
                print(f"prefill {kind + '_small':12s} threads {n}: torch forward {r['torch_tok_s']:8.1f} tok/s   "
                      f"distill {r['distill_tok_s']:8.1f} tok/s   {r['ratio']:5.2f}x", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
