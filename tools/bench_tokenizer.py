"""Tokenizer encode throughput, ours vs Hugging Face `tokenizers`, side by side on all GSM8K text.

Input: every "question" and "answer" of <shared>/data/gsm8k/{train,test}.jsonl (4.6 MB of UTF-8), encoded with
add_special_tokens=False under the Qwen3 and Gemma3 tokenizer.json files.
- HF: tokenizers.Tokenizer.encode_batch, in a fresh subprocess per thread count with RAYON_NUM_THREADS=N set
  before tokenizers is imported (rayon reads it once).
- Ours: the bench/tokenizer_encode program (Tokenizer::encode_batch with N threads).
Both warm up once and then time --repeat runs; the table shows the median (or, --stat best, the fastest) run
in MB/s (1 MB = 1e6 bytes of UTF-8 input) and checks that both produce the same total number of tokens.

Run: tools/.venv/bin/python tools/bench_tokenizer.py [BINARY] [--shared DIR] [--threads 1,2] [--repeat 5]
                                                    [--stat median|best]
     (BINARY defaults to build/ci/bench/tokenizer_encode)
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
TOKENIZERS = ["qwen3", "gemma3"]

HF_CHILD = r"""
import json, sys, time
files, tok_path, repeat = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
from tokenizers import Tokenizer  # imported after RAYON_NUM_THREADS is set by the parent
texts = []
for f in files:
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                texts += [r[k] for k in ("question", "answer") if k in r]
tok = Tokenizer.from_file(tok_path)
n_bytes = sum(len(t.encode("utf-8")) for t in texts)
times, tokens = [], None
for r in range(repeat + 1):  # r == 0 is the warm-up
    t0 = time.perf_counter()
    enc = tok.encode_batch(texts, add_special_tokens=False)
    dt = time.perf_counter() - t0
    n = sum(len(e.ids) for e in enc)
    if r == 0:
        tokens = n
    else:
        assert n == tokens
        times.append(dt)
print(json.dumps({"texts": len(texts), "bytes": n_bytes, "tokens": tokens, "times": times}))
"""


def run_hf(tok_path, files, threads, repeat):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    out = subprocess.run([sys.executable, "-c", HF_CHILD, json.dumps([str(f) for f in files]), str(tok_path),
                          str(repeat)], env=env, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    r["median_s"] = statistics.median(r["times"])
    r["best_s"] = min(r["times"])
    return r


def run_ours(binary, tok_path, files, threads, repeat):
    cmd = [str(binary), "--tokenizer", str(tok_path), "--threads", str(threads), "--repeat", str(repeat)]
    out = subprocess.run(cmd + [str(f) for f in files], check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    return {"texts": int(kv["texts"]), "bytes": int(kv["bytes"]), "tokens": int(kv["tokens"]),
            "median_s": float(kv["median_s"]), "best_s": float(kv["best_s"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", nargs="?", default=str(REPO / "build" / "ci" / "bench" / "tokenizer_encode"),
                    help="our bench/tokenizer_encode program (default: build/ci/bench/tokenizer_encode)")
    ap.add_argument("--shared", default=str(REPO.parent / "shared"), help="shared data dir (default ../shared)")
    ncpu = os.cpu_count() or 1
    default_threads = ",".join(str(n) for n in sorted({1, 2, ncpu} | {n for n in (4, 8, 16) if n <= ncpu}))
    ap.add_argument("--threads", default=default_threads, help=f"thread counts (default {default_threads})")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs after one warm-up")
    ap.add_argument("--stat", choices=["median", "best"], default="median",
                    help="which of the timed runs the table shows (best is steadier on a busy machine)")
    ap.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    args = ap.parse_args()

    shared = pathlib.Path(args.shared)
    files = [shared / "data" / "gsm8k" / f"{s}.jsonl" for s in ("train", "test")]
    binary = pathlib.Path(args.binary)
    if not binary.exists():
        sys.exit(f"{binary} not found: build the tokenizer_encode target first")
    import tokenizers

    rows, ok = [], True
    for name in args.tokenizers.split(","):
        tok_path = shared / "tokenizers" / name / "tokenizer.json"
        for n in [int(x) for x in args.threads.split(",")]:
            hf = run_hf(tok_path, files, n, args.repeat)
            ours = run_ours(binary, tok_path, files, n, args.repeat)
            assert hf["bytes"] == ours["bytes"] and hf["texts"] == ours["texts"], (hf, ours)
            mb = hf["bytes"] / 1e6
            key = f"{args.stat}_s"
            hf_mbps, our_mbps = mb / hf[key], mb / ours[key]
            same = hf["tokens"] == ours["tokens"]
            ok &= same
            rows.append((name, n, hf_mbps, our_mbps, our_mbps / hf_mbps,
                         "yes" if same else f"NO (HF {hf['tokens']}, ours {ours['tokens']})"))
            print(f"{name} threads={n}: HF {hf_mbps:.2f} MB/s, ours {our_mbps:.2f} MB/s", file=sys.stderr)

    print(f"\nGSM8K train+test, all questions and answers ({mb:.2f} MB, {hf['texts']} texts), "
          f"add_special_tokens=False, {args.stat} of {args.repeat} runs after a warm-up; HF tokenizers "
          f"{tokenizers.__version__}, {os.cpu_count()} CPUs\n")
    print("| tokenizer | threads | HF MB/s | ours MB/s | ours / HF | same token count |")
    print("|---|---|---|---|---|---|")
    for name, n, h, o, r, same in rows:
        print(f"| {name} | {n} | {h:.2f} | {o:.2f} | {r:.2f}x | {same} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
