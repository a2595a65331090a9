#!/usr/bin/env python3
"""Export SFT fixtures: token ids and transformers' assistant-token mask for chat conversations made from GSM8K.

    tools/.venv/bin/python tools/golden/sft.py [--shared ../shared] [--out tests/golden/sft]

Reference: transformers 5.24 `apply_chat_template(messages, tokenize=True, return_dict=True,
return_assistant_tokens_mask=True)` (ids: the rendered text encoded with add_special_tokens=False; mask: every
token whose offsets overlap an assistant span) with
  - qwen3-thinking: the shared Qwen3 tokenizer and chat_template = tests/golden/chat/qwen3_thinking_2507.jinja;
  - gemma3: the shared Gemma3 tokenizer and its own template.
The spans come from transformers' `{% generation %}` tracking on copies of the templates with the assistant output
(after the role header, through the end-of-turn token) in a generation block — the copies made by
export_chat_fixtures.py (qwen_tracked_template, gemma_tracked); the script checks that a copy renders exactly the
text of the real template, and that the ids equal tokenizer(text, add_special_tokens=False).

Conversations (~30 per format): GSM8K train questions/answers (../shared/data/gsm8k/train.jsonl, records picked
by a fixed seed among the shorter ones) as single-turn, system + user, multi-turn; think-style assistant turns
for Qwen3 (reasoning_content, inline <think>...</think>, none); plus edge cases: an earlier assistant turn whose
raw content opens with "\\n" or " " (its first token joins the header's "\\n" and overlaps the span), answers
opening with "*", "-", digits or non-ASCII, a conversation ending with a user turn, one with no assistant turn.
A few cases also carry transformers' output with truncation=True, max_length=K (the mask of the kept tokens).

Writes tests/golden/sft/{qwen3,gemma3}.json: {"cases": [{"name", "messages", "ids" (space-separated),
"assistant_mask" (one 0/1 char per token), "straddles" (spans whose first byte lies strictly inside a token, from
the offsets mapping), optional "truncated": {"max_len", "ids", "assistant_mask"}}]}. Read by
tests/test_data_sft.cpp.
"""
import argparse
import json
import pathlib
import random
import sys

import transformers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from export_chat_fixtures import A, S, U, gemma_tracked, qwen_tracked_template  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def split_answer(a):
    """GSM8K answer -> (reasoning lines, final number)."""
    body, _, num = a.rpartition("####")
    return body.strip(), num.strip()


def pick_records(path, n, seed):
    recs = [json.loads(line) for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    short = [r for r in recs if len(r["question"]) + len(r["answer"]) < 420]
    return random.Random(seed).sample(short, n)


def qwen_cases(r):
    """Conversations for qwen3-thinking; r is a list of GSM8K records."""
    q = [x["question"] for x in r]
    a = [x["answer"] for x in r]
    cases = []
    for k in range(8):  # reasoning_content (the 2507 way of storing thinking)
        reason, num = split_answer(a[k])
        cases.append((f"gsm8k_reasoning_field_{k}", [U(q[k]), A(f"The answer is {num}.", reasoning_content=reason)]))
    for k in range(8, 13):  # thinking inline in the content
        reason, num = split_answer(a[k])
        cases.append((f"gsm8k_think_in_content_{k}", [U(q[k]), A(f"<think>\n{reason}\n</think>\n\n#### {num}")]))
    for k in range(13, 16):  # the raw GSM8K answer, no thinking (empty think block rendered)
        cases.append((f"gsm8k_raw_answer_{k}", [U(q[k]), A(a[k])]))
    reason, num = split_answer(a[16])
    tutor = S("You are a careful math tutor. Think step by step.")
    cases.append(("system_reasoning", [tutor, U(q[16]), A(f"\\boxed{{{num}}}", reasoning_content=reason)]))
    ra, na = split_answer(a[17])
    rb, nb = split_answer(a[18])
    rc, nc = split_answer(a[19])
    cases.append(
        (
            "multi_turn_2",
            [U(q[17]), A(f"#### {na}", reasoning_content=ra), U(q[18]), A(f"#### {nb}", reasoning_content=rb)],
        )
    )
    cases.append(
        (
            "multi_turn_3_system",
            [
                S("Answer with the number only after thinking."),
                U(q[17]),
                A(f"<think>\n{ra}\n</think>\n\n{na}"),
                U(q[18]),
                A(nb, reasoning_content=rb),
                U(q[19]),
                A(nc, reasoning_content=rc),
            ],
        )
    )
    cases.append(("multi_turn_ends_with_user", [U(q[20]), A(a[20]), U(q[21])]))
    cases.append(("no_assistant_turn", [S("Be brief."), U(q[22])]))
    # earlier turns render their raw content: leading "\n" joins the header's "\n" into one token
    cases.append(
        (
            "earlier_turn_leading_newlines",
            [U(q[23]), A("\n\n" + a[23]), U(q[24]), A(a[24], reasoning_content="Same method.")],
        )
    )
    cases.append(
        ("earlier_turn_leading_space", [U(q[23]), A(" " + a[23]), U(q[24]), A(a[24], reasoning_content="")])
    )
    cases.append(("earlier_turn_leading_newline_space", [U("q1"), A("\n \n a1"), U("q2"), A("a2")]))
    french = A("La réponse est 12 € — ½ de 24. 🎉", reasoning_content="calcul: 24/2 = 12")
    cases.append(("non_ascii_answer", [U(q[25] + " Réponds en français."), french]))
    star = A("**Answer:** " + split_answer(a[26])[1], reasoning_content="")
    cases.append(("answer_starts_with_star", [U(q[26]), star]))
    cases.append(("empty_answer", [U(q[27]), A("")]))
    return cases


def gemma_cases(r):
    q = [x["question"] for x in r]
    a = [x["answer"] for x in r]
    cases = []
    for k in range(12):
        cases.append((f"gsm8k_raw_answer_{k}", [U(q[k]), A(a[k])]))
    for k in range(12, 15):
        reason, num = split_answer(a[k])
        cases.append((f"gsm8k_think_style_{k}", [U(q[k]), A(f"<think>\n{reason}\n</think>\n\n#### {num}")]))
    cases.append(("system", [S("You are a careful math tutor."), U(q[15]), A(a[15])]))
    cases.append(("multi_turn_2", [U(q[16]), A(a[16]), U(q[17]), A(a[17])]))
    cases.append(
        (
            "multi_turn_3_system",
            [S("Solve it."), U(q[18]), A(a[18]), U(q[19]), A(a[19]), U(q[20]), A(a[20])],
        )
    )
    cases.append(("multi_turn_ends_with_user", [U(q[21]), A(a[21]), U(q[22])]))
    cases.append(("no_assistant_turn", [S("Be brief."), U(q[23])]))
    num = split_answer(a[24])[1]
    cases.append(("answer_starts_with_star", [U(q[24]), A(f"**Answer:** {num}")]))
    cases.append(("answer_starts_with_dash", [U(q[24]), A(f"- step one\n- the answer is {num}")]))
    cases.append(("answer_starts_with_digit", [U(q[24]), A(f"{num} is the answer.")]))
    cases.append(("answer_starts_with_newlines", [U(q[24]), A(f"\n\n  {num}\n")]))
    cases.append(("answer_starts_with_dollar", [U(q[24]), A(f"${num}")]))
    cases.append(("non_ascii_answer", [U(q[25]), A("La réponse est 12 € — ½ de 24. 🎉 日本語")]))
    cases.append(("answer_starts_with_emoji", [U("Hi"), A("🎉 Done.")]))
    cases.append(("empty_answer", [U(q[26]), A("")]))
    return cases


TRUNCATE = {  # case name -> max_length
    "qwen3": {"gsm8k_reasoning_field_0": 40, "gsm8k_raw_answer_13": 12, "multi_turn_2": 150},
    "gemma3": {"gsm8k_raw_answer_0": 30, "system": 10, "multi_turn_2": 140},
}


def export(name, fmt, tok, template, tracked, cases):
    out = []
    for case, messages in cases:
        text = tok.apply_chat_template(messages, tokenize=False, chat_template=template)
        # the tracked copy renders the same text (so its spans are the real template's)
        assert tok.apply_chat_template(messages, tokenize=False, chat_template=tracked) == text, case
        enc = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=tracked
        )
        plain = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == plain["input_ids"], case
        _, indices = render_jinja_template(
            conversations=[_normalize_chat_messages(messages)],
            chat_template=tracked,
            return_assistant_tokens_mask=True,
            **tok.special_tokens_map,
        )
        straddles = sum(any(s < b < e for s, e in plain["offset_mapping"]) for b, _ in indices[0])
        entry = {
            "name": case,
            "messages": messages,
            "ids": " ".join(map(str, enc["input_ids"])),
            "assistant_mask": "".join(map(str, enc["assistant_masks"])),
            "straddles": straddles,
        }
        if case in TRUNCATE[name]:
            k = TRUNCATE[name][case]
            t = tok.apply_chat_template(
                messages,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                chat_template=tracked,
                truncation=True,
                max_length=k,
            )
            entry["truncated"] = {
                "max_len": k,
                "ids": " ".join(map(str, t["input_ids"])),
                "assistant_mask": "".join(map(str, t["assistant_masks"])),
            }
        out.append(entry)
    for case in TRUNCATE[name]:
        assert any(e["name"] == case and "truncated" in e for e in out), case
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "golden" / "sft"))
    args = ap.parse_args()
    shared = pathlib.Path(args.shared)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    recs = pick_records(shared / "data" / "gsm8k" / "train.jsonl", 30, seed=20240611)
    qwen_template = (ROOT / "tests" / "golden" / "chat" / "qwen3_thinking_2507.jinja").read_text(encoding="utf-8")
    qwen = AutoTokenizer.from_pretrained(str(shared / "tokenizers" / "qwen3"))
    gemma = AutoTokenizer.from_pretrained(str(shared / "tokenizers" / "gemma3"))
    jobs = [
        ("qwen3", "qwen3-thinking", qwen, qwen_template, qwen_tracked_template(qwen_template), qwen_cases(recs)),
        ("gemma3", "gemma3", gemma, gemma.chat_template, gemma_tracked(gemma.chat_template), gemma_cases(recs)),
    ]
    for name, fmt, tok, template, tracked, cases in jobs:
        entries = export(name, fmt, tok, template, tracked, cases)
        doc = {
            "generator": "tools/golden/sft.py",
            "transformers": transformers.__version__,
            "tokenizer": name,
            "format": fmt,
            "cases": entries,
        }
        path = out / f"{name}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        n_tok = sum(len(e["ids"].split()) for e in entries)
        n_str = sum(e["straddles"] for e in entries)
        print(f"wrote {path}: {len(entries)} conversations, {n_tok} tokens, {n_str} straddling span starts")


if __name__ == "__main__":
    main()
