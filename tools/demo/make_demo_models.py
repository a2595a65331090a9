#!/usr/bin/env python3
"""Makes the demo's two tiny models from the corpus that `gsm8k_distill demo --write-corpus DIR` writes.

  build/dev/apps/gsm8k_distill/gsm8k_distill demo --write-corpus /tmp/demo_corpus
  tools/.venv/bin/python tools/demo/make_demo_models.py /tmp/demo_corpus apps/gsm8k_distill/demo/models

Writes OUT/teacher (a Qwen3-architecture model with a Qwen3-style byte-level BPE tokenizer, trained to think step
by step) and OUT/student (a Gemma3-architecture model with a Gemma3-style SentencePiece BPE tokenizer, trained to
answer directly), each a Hugging Face directory: config.json, generation_config.json, model.safetensors (bf16),
tokenizer.json, tokenizer_config.json. Both tokenizers and models are trained from scratch here with the Hugging
Face libraries (tokenizers, transformers, torch) on the CPU; the held-out accuracy of each model (greedy, as the
demo decodes) is printed at the end (apps/gsm8k_distill/demo/models/README.md records the committed ones).
--only student keeps OUT/teacher and makes a new student (and the reverse). Also writes
tests/golden/demo/tokenizers.json: texts and the ids `tokenizers` gives them, which the C++ tokenizer must
reproduce.
"""
import argparse
import json
import math
import os
import random
import re
import time

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")
TEACHER_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
STUDENT_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
MARKERS = re.compile(r"<\|im_start\|>|<\|im_end\|>|<think>|</think>|<bos>|<start_of_turn>|<end_of_turn>")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plain(texts):
    for t in texts:
        yield MARKERS.sub("\n", t)


def teacher_tokenizer(texts, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TEACHER_SPECIAL,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(plain(texts), trainer=tr)
    tok.add_tokens(["<think>", "</think>"])
    return tok


def student_tokenizer(texts, vocab_size):
    # Trained with words split at "▁" and digits split one by one (as SentencePiece's split_digits), then saved with
    # Gemma3's own pre-tokenizer (a split on " ", which never matches after the normalizer): merges never join words
    # or digits, so BPE over the whole text gives what the training split gave.
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\u2581", behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=True)
    ])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=STUDENT_SPECIAL + byte_tokens,
                             show_progress=False)
    tok.train_from_iterator(plain(texts), trainer=tr)
    tok.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return tok


def encode_pairs(tok, rows):
    out = []
    for r in rows:
        p = tok.encode(r["prompt"], add_special_tokens=False).ids
        c = tok.encode(r["completion"], add_special_tokens=False).ids
        out.append((p, c))
    return out


def train(model, data, steps, batch, lr, pad_id, log_every=100, label=""):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    rng = random.Random(0)
    model.train()
    t0 = time.time()
    for step in range(steps):
        rows = [data[rng.randrange(len(data))] for _ in range(batch)]
        L = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((batch, L), pad_id, dtype=torch.long)
        labels = torch.full((batch, L), -100, dtype=torch.long)
        mask = torch.zeros((batch, L), dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            s = p + c
            ids[i, :len(s)] = torch.tensor(s)
            labels[i, len(p):len(s)] = torch.tensor(c)
            mask[i, :len(s)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"[{label}] step {step}/{steps} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)


@torch.no_grad()
def greedy_accuracy(model, tok, prompts, values, stop_id, max_new=120, batch=50):
    model.eval()
    correct = 0
    samples = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        enc = [tok.encode(p, add_special_tokens=False).ids for p in chunk]
        L = max(len(e) for e in enc)
        ids = torch.zeros((len(enc), L), dtype=torch.long)
        mask = torch.zeros((len(enc), L), dtype=torch.long)
        for j, e in enumerate(enc):  # left padding
            ids[j, L - len(e):] = torch.tensor(e)
            mask[j, L - len(e):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=stop_id, pad_token_id=0)
        for j in range(len(enc)):
            text = tok.decode(out[j, L:].tolist(), skip_special_tokens=True)
            m = re.findall(r"#### (-?[0-9]+)", text)
            ok = bool(m) and int(m[-1]) == values[i + j]
            correct += ok
            if len(samples) < 3:
                samples.append(text)
    return correct / len(prompts), samples


def save(model, tok, out, gen_eos, extra_tokenizer_config):
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(extra_tokenizer_config, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": gen_eos, "do_sample": False, "max_new_tokens": 160}, f, indent=2)
    for junk in ("chat_template.jinja",):
        p = os.path.join(out, junk)
        if os.path.exists(p):
            os.remove(p)


def round_bf16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--teacher-steps", type=int, default=1800)
    ap.add_argument("--student-steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["teacher", "student"], default=None)
    ap.add_argument("--golden", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden", "demo",
                                                     "tokenizers.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    teacher_rows = read_jsonl(os.path.join(a.corpus, "teacher.jsonl"))
    student_rows = read_jsonl(os.path.join(a.corpus, "student.jsonl"))
    evals = read_jsonl(os.path.join(a.corpus, "eval.jsonl"))
    values = [e["value"] for e in evals]
    report = []
    golden = {}

    samples_for_golden = "Zoe has 12 boxes. 144 - 37 = <<144-37=107>>107!\n#### 107"

    def fit(label, make_model, tok, rows, steps, prompt_key, stop_id, gen_eos, tok_cfg):
        """Trains one model from scratch, measures it on the held-out problems, saves it under OUT/label."""
        data = encode_pairs(tok, rows)
        model = make_model()
        n = sum(p.numel() for p in model.parameters())
        print(f"{label}: {n} parameters, vocab {model.config.vocab_size}, "
              f"{sum(len(p) + len(c) for p, c in data) / len(data):.1f} tokens/example", flush=True)
        train(model, data, steps, a.batch, a.lr, pad_id=0, label=label)
        round_bf16(model)
        acc, samples = greedy_accuracy(model, tok, [e[prompt_key] for e in evals], values, stop_id)
        print(f"{label} held-out accuracy {acc:.3f}\n{samples[0]}", flush=True)
        report.append(f"- {label} ({type(model).__name__}, {n} parameters, {steps} steps): held-out accuracy "
                      f"{acc:.3f} on {len(evals)} problems")
        save(model, tok, os.path.join(a.out, label), gen_eos, tok_cfg)

    # --- teacher: tiny Qwen3, thinks step by step
    if a.only == "student":  # keep the teacher already in OUT (its tokenizer included)
        ttok = Tokenizer.from_file(os.path.join(a.out, "teacher", "tokenizer.json"))
    else:
        ttok = teacher_tokenizer([r["prompt"] + r["completion"] for r in teacher_rows], 384)
    golden["teacher"] = [{"text": t, "ids": ttok.encode(t, add_special_tokens=False).ids}
                         for t in [teacher_rows[0]["prompt"] + teacher_rows[0]["completion"], evals[0]["question"],
                                   samples_for_golden]]
    if a.only in (None, "teacher"):
        im_end = ttok.token_to_id("<|im_end|>")
        fit("teacher",
            lambda: Qwen3ForCausalLM(
                Qwen3Config(vocab_size=ttok.get_vocab_size(), hidden_size=128, intermediate_size=384,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                            max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
                            tie_word_embeddings=True, bos_token_id=ttok.token_to_id("<|endoftext|>"),
                            eos_token_id=im_end, pad_token_id=None)),
            ttok, teacher_rows, a.teacher_steps, "teacher_prompt", im_end,
            [im_end, ttok.token_to_id("<|endoftext|>")],
            {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
             "model_max_length": 512})

    # --- student: tiny Gemma3, answers directly
    if a.only == "teacher":
        stok = Tokenizer.from_file(os.path.join(a.out, "student", "tokenizer.json"))
    else:
        stok = student_tokenizer([r["prompt"] + r["completion"] for r in student_rows], 640)
    golden["student"] = [{"text": t, "ids": stok.encode(t, add_special_tokens=False).ids}
                         for t in [student_rows[0]["prompt"] + student_rows[0]["completion"], evals[0]["question"],
                                   samples_for_golden]]
    if a.only in (None, "student"):
        eot = stok.token_to_id("<end_of_turn>")
        fit("student",
            lambda: Gemma3ForCausalLM(
                Gemma3TextConfig(vocab_size=stok.get_vocab_size(), hidden_size=128, intermediate_size=384,
                                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                 max_position_embeddings=512, sliding_window=128, query_pre_attn_scalar=32,
                                 layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                 rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0,
                                 eos_token_id=[1, eot], bos_token_id=2)),
            stok, student_rows, a.student_steps, "student_prompt", eot, [1, eot],
            {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
             "model_max_length": 512})

    os.makedirs(os.path.dirname(a.golden), exist_ok=True)
    with open(a.golden, "w") as f:
        json.dump(golden, f, indent=1)
    print("\n".join(report))


if __name__ == "__main__":
    main()
