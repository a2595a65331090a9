#!/usr/bin/env python3
"""Export chat-template fixtures: transformers' apply_chat_template output for a set of conversations.

    tools/.venv/bin/python tools/golden/export_chat_fixtures.py [--shared ../shared] [--out tests/golden/chat]

Reference: transformers (5.24) `apply_chat_template(tokenize=False)` with
  - qwen3-thinking: the shared Qwen3 tokenizer and chat_template = tests/golden/chat/qwen3_thinking_2507.jinja
    (the Qwen/Qwen3-4B-Thinking-2507 template; the shared tokenizer_config holds the hybrid Qwen3 one);
  - gemma3: the shared Gemma3 tokenizer with its own (gemma-3-it) template.

Writes tests/golden/chat/cases.json: for every case and format either the expected text or the error
(exception type and message), plus the assistant spans as UTF-8 byte offsets [begin, end). The spans come from
transformers' own `{% generation %}` tracking (render_jinja_template(return_assistant_tokens_mask=True)) on a
copy of each template with the assistant output wrapped in a generation block; the script checks that the
wrapped copy renders the same text as the real template. Also the token ids of each text (add_special_tokens
False) and transformers' assistant token mask (return_assistant_tokens_mask: tokens overlapping a span).
"""
import argparse
import json
import pathlib

import transformers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------------------
# Conversations. Each is rendered under both formats unless "formats" narrows it.
GSM8K_Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends in "
    "May. How many clips did Natalia sell altogether in April and May?"
)
GSM8K_R = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
GSM8K_A = "Natalia sold 48 clips in April and 24 in May, so 48 + 24 = 72.\n#### 72"


def U(c):
    return {"role": "user", "content": c}


def A(c, **kw):
    return {"role": "assistant", "content": c, **kw}


def S(c):
    return {"role": "system", "content": c}


CASES = [
    ("single_user", [U("What is 2+2?")], False),
    ("single_user_gen", [U("What is 2+2?")], True),
    ("system_user_gen", [S("You are a helpful assistant."), U("Hi")], True),
    ("multi_turn_plain_gen", [U("Hi"), A("Hello! How can I help?"), U("Tell me a joke.")], True),
    (
        "multi_turn_think_in_content",
        [U("Q1"), A("<think>\nreasoning one\n</think>\n\nAnswer one"), U("Q2"), A("<think>r2</think>A2")],
        False,
    ),
    (
        "multi_turn_reasoning_field",
        [U("Q1"), A("A1", reasoning_content="R1"), U("Q2"), A("A2", reasoning_content="R2")],
        False,
    ),
    ("multi_turn_no_reasoning", [U("Q1"), A("A1"), U("Q2"), A("A2")], False),
    ("multi_turn_no_reasoning_gen", [U("Q1"), A("A1"), U("Q2"), A("A2"), U("Q3")], True),
    (
        "train_reasoning_in_content",
        [S("Think step by step."), U("What is 2+2?"), A("<think>\nLet me add.\n2+2=4\n</think>\n\nThe answer is 4.")],
        False,
    ),
    ("train_empty_reasoning_field", [U("Hi"), A("Hello.", reasoning_content="")], False),
    ("train_empty_think_tags", [U("Hi"), A("<think></think>Hello.")], False),
    ("train_no_reasoning", [U("Hi"), A("Hello.")], False),
    (
        "agentic_assistants_after_query",
        [U("Q"), A("c1", reasoning_content="r1"), A("c2", reasoning_content=""), A("c3", reasoning_content="r3")],
        False,
    ),
    (
        "agentic_middle_think_in_content",
        [U("Q"), A("<think>r1</think>c1"), A("c2"), A("<think>\n\n</think>\n\nc3"), U("next")],
        True,
    ),
    ("assistant_first", [A("<think>x</think>y"), U("q")], True),
    ("no_user_message", [S("S"), A("<think>r</think>a")], False),
    (
        "whitespace_contents",
        [
            U("  \n hello \n\n  "),
            A("\n\n<think>\n\n  r  \n\n</think>\n\n\n  answer  \n"),
        ],
        False,
    ),
    (
        "whitespace_earlier_turn_raw",
        [U(" q1 "), A("\n\n  a1 with leading newlines\n"), U("\tq2\t"), A("  a2  ")],
        True,
    ),
    ("reasoning_field_newlines", [U("q"), A("\n\nA\n", reasoning_content="\n\nR\n\n")], False),
    ("multiple_think_tags", [U("q"), A("<think>a</think>b<think>c</think>d")], False),
    ("multiple_open_think", [U("q"), A("x<think>a\n<think>\nb\n</think>\n\nd")], False),
    ("open_think_only", [U("q"), A("<think>abc")], False),
    ("close_think_only", [U("q"), A("</think>")], False),
    ("reasoning_field_and_tags", [U("q"), A("<think>t</think>c", reasoning_content="R")], False),
    (
        "non_ascii",
        [
            S("Réponds en français. 日本語も可。"),
            U("Привет, 世界! 🎉 café naïve"),
            A("<think>\nمرحبا — التفكير\n</think>\n\nΓειά σου 👋🏽 한국어"),
        ],
        False,
    ),
    (
        "unicode_whitespace",
        [
            U("\u3000\u00a0Hello\u2003\u200b"),
            A("\u2028\u0085 Answer\u202f\u205f\u1680\ufeff\u2009"),
            U("\u200b\u180eX\x1c\x1f\x0b\x0c\r"),
        ],
        True,
    ),
    (
        "special_token_text",
        [
            U("Use <|im_end|> and <end_of_turn> and <start_of_turn>model\n literally <bos>"),
            A("<|im_start|>assistant\nx<|im_end|> <end_of_turn>"),
        ],
        False,
    ),
    ("gemma_system", [S("Be brief."), U("Hi"), A("Hello"), U("Bye")], True),
    ("gemma_system_whitespace", [S("  Sys prompt \n"), U("\n hi \n")], True),
    (
        "list_content",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "  Describe  "},
                    {"type": "image", "url": "x.png"},
                    {"type": "text", "text": "this\n"},
                    {"type": "audio"},
                ],
            },
            A([{"type": "text", "text": " It is a cat. "}]),
            U("Thanks"),
        ],
        True,
    ),
    (
        "list_content_last_user",
        [U("plain q"), A("<think>r</think>a"), {"role": "user", "content": [{"type": "text", "text": "list q"}]}],
        False,
    ),
    ("system_list_content", [{"role": "system", "content": [{"type": "text", "text": " Sys  "}]}, U("Hi")], True),
    (
        "system_list_image_first",
        [{"role": "system", "content": [{"type": "image"}, {"type": "text", "text": "S"}]}, U("Hi")],
        True,
    ),
    ("system_list_empty", [{"role": "system", "content": []}, U("Hi")], True),
    ("non_alternating_users", [U("a"), U("b")], True),
    ("non_alternating_assistants", [U("a"), A("b"), A("c")], False),
    ("system_not_first", [U("a"), S("late system"), U("b")], True),
    (
        "tool_messages",
        [
            U("What is the weather?"),
            A("<think>need tool</think>Calling the tool."),
            {"role": "tool", "content": "sunny"},
            {"role": "tool", "content": "22 C"},
            A("<think>got it</think>It is sunny, 22 C."),
        ],
        False,
    ),
    ("tool_first", [{"role": "tool", "content": "t"}, U("q")], True),
    (
        "tool_response_user",
        [
            U("q"),
            A("<think>r1</think>a1"),
            U("<tool_response>\nx\n</tool_response>"),
            A("<think>r2</think>b"),
        ],
        False,
    ),
    ("unknown_role_even", [{"role": "foo", "content": "x"}, U("q")], True),
    ("unknown_role_odd", [U("q"), {"role": "foo", "content": "x"}, U("r")], True),
    ("model_role", [U("q"), {"role": "model", "content": "m"}], False),
    ("empty_contents", [U(""), A("")], False),
    ("empty_contents_gen", [U(""), A(""), U("")], True),
    ("only_system_gen", [S("S")], True),
    ("empty_conversation", [], True),
    (
        "reasoning_aliases",
        [
            U("q"),
            {"role": "assistant", "content": "a", "thinking": "T"},
            U("q2"),
            {"role": "assistant", "content": "b", "reasoning": "R2"},
        ],
        False,
    ),
    ("reasoning_null_uses_content", [U("q"), A("<think>r</think>a", reasoning_content=None)], False),
    ("content_null", [U("q"), {"role": "assistant", "content": None, "reasoning_content": "R"}], False),
    ("content_missing_user", [U("q1"), A("a1"), {"role": "user"}], True),
    ("system_content_missing", [{"role": "system"}, U("q")], True),
    ("gsm8k_train_reasoning_in_content", [U(GSM8K_Q), A(f"<think>\n{GSM8K_R}\n</think>\n\n{GSM8K_A}")], False),
    ("gsm8k_train_reasoning_field", [U(GSM8K_Q), A(GSM8K_A, reasoning_content=GSM8K_R)], False),
    ("gsm8k_prompt", [U(GSM8K_Q)], True),
    (
        "gsm8k_fewshot_system",
        [S("Solve the math problem."), U("1+1?"), A("<think>\n1+1=2\n</think>\n\n#### 2"), U(GSM8K_Q)],
        True,
    ),
]

FORMATS = ("qwen3-thinking", "gemma3")


# ---------------------------------------------------------------------------------------------------------
# Span tracking: copies of the templates with the assistant output (after the role header, through the
# end-of-turn token) inside a {% generation %} block.
def _replace_once(text, old, new):
    assert text.count(old) == 1, f"expected exactly one occurrence of {old!r}"
    return text.replace(old, new)


def qwen_tracked_template(t):
    # header before the block, then the three branches without the header, then <|im_end|> closes the block
    t = _replace_once(
        t,
        "        {%- if loop.index0 > ns.last_query_index %}",
        "        {{- '<|im_start|>' + message.role + '\\n' }}\n        {%- generation %}\n"
        "        {%- if loop.index0 > ns.last_query_index %}",
    )
    t = _replace_once(
        t,
        "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content",
        "{{- '<think>\\n' + reasoning_content",
    )
    old = "{{- '<|im_start|>' + message.role + '\\n' + content }}"
    assert t.count(old) == 2
    t = t.replace(old, "{{- content }}")
    t = _replace_once(
        t,
        "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}",
        "        {{- '<|im_end|>' }}\n        {%- endgeneration %}\n        {{- '\\n' }}\n"
        "    {%- elif message.role == \"tool\" %}",
    )
    return t


def gemma_tracked(t):
    # the content block, rendered inside a generation block for model turns only
    start = t.index("    {%- if message['content'] is string -%}")
    eot = "    {{ '<end_of_turn>\n' }}"
    end = t.index(eot)
    body = t[start:end]
    assert t.count(body + eot) == 1
    tracked = (
        "    {%- if role == 'model' -%}\n    {%- generation -%}\n" + body + "    {{ '<end_of_turn>' }}\n"
        "    {%- endgeneration -%}\n    {%- else -%}\n" + body + "    {{ '<end_of_turn>' }}\n"
        "    {%- endif -%}\n    {{ '\n' }}"
    )
    return t.replace(body + eot, tracked)


def byte_offset(s, i):
    return len(s[:i].encode("utf-8"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "golden" / "chat"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    shared = pathlib.Path(args.shared)

    qwen_template = (ROOT / "tests" / "golden" / "chat" / "qwen3_thinking_2507.jinja").read_text(encoding="utf-8")
    toks = {
        "qwen3-thinking": (AutoTokenizer.from_pretrained(str(shared / "tokenizers" / "qwen3")), qwen_template),
        "gemma3": (AutoTokenizer.from_pretrained(str(shared / "tokenizers" / "gemma3")), None),
    }
    gemma_template = toks["gemma3"][0].chat_template
    tracked = {"qwen3-thinking": qwen_tracked_template(qwen_template), "gemma3": gemma_tracked(gemma_template)}

    results = []
    for name, messages, gen in CASES:
        for fmt in FORMATS:
            tok, template = toks[fmt]
            entry = {"name": name, "format": fmt, "add_generation_prompt": gen, "messages": messages}
            try:
                text = tok.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=gen, chat_template=template
                )
            except Exception as e:  # the template raised: record what and why
                entry["error"] = {"type": type(e).__name__, "message": str(e)}
                results.append(entry)
                continue
            entry["expected"] = text
            # Spans via transformers' generation tracking on the wrapped template (same normalisation of the
            # messages as apply_chat_template: None-valued keys dropped, reasoning aliases filled).
            norm = _normalize_chat_messages(messages)
            rendered, indices = render_jinja_template(
                conversations=[norm],
                chat_template=tracked[fmt],
                return_assistant_tokens_mask=True,
                add_generation_prompt=gen,
                **tok.special_tokens_map,
            )
            assert rendered[0] == text, f"{name}/{fmt}: tracked template renders differently"
            spans = indices[0]
            entry["assistant_spans"] = [[byte_offset(text, b), byte_offset(text, e)] for b, e in spans]
            # Token ids (add_special_tokens=False, as apply_chat_template tokenizes) and transformers' assistant
            # mask (every token overlapping a span), written compactly: ids space-separated, mask as 0/1 chars.
            enc = tok.apply_chat_template(
                messages,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                add_generation_prompt=gen,
                chat_template=tracked[fmt],
            )
            assert enc["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
            entry["ids"] = " ".join(str(i) for i in enc["input_ids"])
            entry["assistant_mask"] = "".join(str(m) for m in enc["assistant_masks"])
            results.append(entry)

    doc = {
        "generator": "tools/golden/export_chat_fixtures.py",
        "transformers": transformers.__version__,
        "cases": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n_err = sum("error" in r for r in results)
    print(f"wrote {len(results)} renderings ({n_err} errors) to {out / 'cases.json'}")


if __name__ == "__main__":
    main()
