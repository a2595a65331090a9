"""Exports GSM8K answer-extraction fixtures from the reference implementations into tests/golden/gsm8k/.

References (nothing here is computed by our C++ code):
  - lm-evaluation-harness (pip lm_eval 0.4.13, imported directly): the gsm8k / gsm8k_cot / gsm8k_cot_zeroshot
    task YAMLs as installed (filters built through lm_eval's filter registry: RegexFilter + take_first), the
    Jinja doc_to_target through lm_eval.utils.apply_template, and lm_eval.api.metrics.exact_match_hf_evaluate.
    The normalized strings of exact_match are read out of exact_match_hf_evaluate's own source lines (its
    source, with the final comparison replaced by a return of the two arrays, is exec'd in its module).
  - openai/grade-school-math grade_school_math/dataset.py @2909d34ef28520753df82a2234c357259d254aa8:
    ANS_RE / extract_answer, copied verbatim below (the module imports torch, so it is not imported).
  - Calculator-annotation stripping: the OpenAI README says "remove any string that starts with `<<` and ends
    with `>>`" and gives no code; the fixture uses re.sub(r"<<.*?>>", "", s), the reading we implement.

Writes:
  gold_{train,test}.tsv  one row per GSM8K line (needs ../shared/data/gsm8k): gold, lm-eval strict/flexible on
                         the answer, flexible on the question, FNV-1a-64 hashes of the record and of the
                         annotation-stripped answer
  extraction.json        hand-written model outputs with every filter output and exact_match against golds,
                         generic RegexFilter and exact_match cases

Run: tools/.venv/bin/pip install --no-deps lm_eval && tools/.venv/bin/pip install sacrebleu requests
     tools/.venv/bin/python tools/golden/export_gsm8k_fixtures.py
"""
import inspect
import json
import pathlib
import re
import sys

import numpy as np
import yaml

import lm_eval
import lm_eval.api.metrics as lm_metrics
import lm_eval.filters  # registers "regex", "take_first", ...
from lm_eval.api.registry import get_filter
from lm_eval.utils import apply_template

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "gsm8k"
SHARED = ROOT.parent / "shared" / "data" / "gsm8k"
TASK_DIR = pathlib.Path(lm_eval.__file__).parent / "tasks" / "gsm8k"

# --- openai/grade-school-math dataset.py (verbatim) -------------------------------------------------------
ANS_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
INVALID_ANS = "[invalid]"


def extract_answer(completion):
    match = ANS_RE.search(completion)
    if match:
        match_str = match.group(1).strip()
        match_str = match_str.replace(",", "")
        return match_str
    else:
        return INVALID_ANS


def strip_annotations(s):
    return re.sub(r"<<.*?>>", "", s)


# --- lm-eval pieces ---------------------------------------------------------------------------------------
def apply_filter_list(filter_steps, text):
    """Runs one filter pipeline of a task YAML (e.g. regex then take_first) on one response."""
    resps = [[text]]
    for step in filter_steps:
        kwargs = {k: v for k, v in step.items() if k != "function"}
        f = get_filter(step["function"])(**kwargs)
        resps = list(f.apply(resps, [None]))
    return resps[0]


def _normalizer():
    src = inspect.getsource(lm_metrics.exact_match_hf_evaluate)
    marker = "    score_list = predictions == references\n"
    assert marker in src, "exact_match_hf_evaluate changed; update the exporter"
    src = src.replace("def exact_match_hf_evaluate(", "def _em_normalized(").replace(
        marker, "    return predictions, references\n")
    src = src.split("    return predictions, references\n")[0] + "    return predictions, references\n"
    ns = dict(vars(lm_metrics))
    exec(src, ns)
    return ns["_em_normalized"]


em_normalized = _normalizer()


def exact_match(pred, ref, **kw):
    return float(lm_metrics.exact_match_hf_evaluate(predictions=[pred], references=[ref], **kw)["exact_match"])


def em_norm(text, **kw):
    p, _ = em_normalized(predictions=[text], references=[""], **kw)
    return str(np.asarray(p)[0])


def load_task(name):
    cfg = yaml.safe_load((TASK_DIR / name).read_text())
    em = [m for m in cfg["metric_list"] if m["metric"] == "exact_match"][0]
    kw = {k: v for k, v in em.items() if k not in ("metric", "aggregation", "higher_is_better")}
    filters = {f["name"]: f["filter"] for f in cfg["filter_list"]}
    return cfg, kw, filters


TASKS = {"gsm8k": "gsm8k.yaml", "gsm8k_cot": "gsm8k-cot.yaml", "gsm8k_cot_zeroshot": "gsm8k-cot-zeroshot.yaml"}
TASK_CFG = {t: load_task(f) for t, f in TASKS.items()}


def fnv1a64(b: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


# --- GSM8K splits -----------------------------------------------------------------------------------------
def export_split(split):
    path = SHARED / f"{split}.jsonl"
    if not path.exists():
        print(f"skipping {split}: {path} is absent", file=sys.stderr)
        return
    _, _, filters = TASK_CFG["gsm8k"]
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            ex = json.loads(line)
            q, a = ex["question"], ex["answer"]
            gold = extract_answer(a)
            strict = apply_filter_list(filters["strict-match"], a)
            flex = apply_filter_list(filters["flexible-extract"], a)
            flex_q = apply_filter_list(filters["flexible-extract"], q)
            rec = fnv1a64(q.encode() + b"\0" + a.encode())
            stripped = fnv1a64(strip_annotations(a).encode())
            for v in (gold, strict, flex, flex_q):
                assert "\t" not in v and "\n" not in v
            rows.append("\t".join([str(i), gold, "=" if strict == gold else strict, "=" if flex == strict else flex,
                                   flex_q, rec, stripped]))
    with open(OUT / f"gold_{split}.tsv", "w") as f:
        f.write(f"# GSM8K {split}.jsonl: {len(rows)} records. Written by tools/golden/export_gsm8k_fixtures.py from\n")
        f.write("# openai/grade-school-math extract_answer and lm_eval " + lm_eval.__version__ + " (gsm8k.yaml filters).\n")
        f.write("# line\tgold\tstrict(answer) or = if equal to gold\tflexible(answer) or = if equal to strict\t"
                "flexible(question)\tfnv1a64(question \\0 answer)\tfnv1a64(re.sub(r'<<.*?>>', '', answer))\n")
        f.write("\n".join(rows) + "\n")
    print(f"{split}: {len(rows)} rows")


# --- hand-written model outputs ---------------------------------------------------------------------------
GOLDS = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
    "She pays $<<10*100=1000>>1000.\n#### 1,000",
    "So 5 - 8 = <<5-8=-3>>-3\n#### -3",
    "Half of 1 is 0.5\n#### 0.5",
    "#### 5",
    "It costs 18 dollars.\n#### 18\n",
    "#### 1234",
    "72",
    "#### 18.00",
    "#### 5 #### 6",
]

BASE = [
    # \boxed
    r"The answer is \boxed{18}.",
    r"\boxed{1,000}",
    r"\boxed{\$1,000}",
    r"$\boxed{-3}$",
    r"\boxed{\frac{1}{2}}",
    r"\boxed{\dfrac{3}{8}}",
    r"First \boxed{3}, then \boxed{5}.",
    r"\boxed{ 42 }",
    r"\boxed{{7}}",
    r"\boxed{18 \text{ dollars}}",
    r"\boxed{\text{18}}",
    r"\boxed{12",
    r"\boxed{}",
    r"\boxed {9}",
    r"\boxed{3.50}",
    r"\boxed{1,234.}",
    "#### 5\n\\boxed{6}",
    r"So the total is $\boxed{72}$ clips.",
    r"\boxed{72} \boxed{",
    r"\boxed{\{5\}}",
    r"\boxed{0.5}",
    r"\boxed{-0}",
    r"\boxed{18.00}",
    # ####
    "#### 1,234.",
    "#### -7",
    "####5",
    "#### $5",
    "#### 3.14",
    "#### 1,000,000",
    "The answer\n#### 72\n",
    "#### 72\r\n",
    "#### 5\n#### 6",
    "####  8",
    "#### .5",
    "#### ,",
    "#### -",
    "#### 10.",
    "#### 10..",
    "#### 1.2.3",
    "#### 72 clips",
    "#### −3",
    "####\t5",
    "##### 5",
    "### 5",
    "#### 0",
    "#### 18.00",
    "#### 5 #### 6",
    # The (final) answer is
    "The answer is 5.",
    "The answer is $5.",
    "The answer is 42",
    "The answer is 5",
    "The answer is 5\n",
    "The answer is 10\n",
    "The final answer is 18.",
    "The final answer is 18",
    "The answer is -3.",
    "The answer is 1,234.56.",
    "The answer is 3.5!",
    "the answer is 7.",
    "The answer is: 8.",
    "The answer is 8 apples.",
    "The answer is 12.\nThe answer is 13.",
    "The answer is 9",
    "The answer is 72.\n\nQuestion: next",
    "So the answer is 1,000.",
    "The answer is **15**.",
    "The final answer is $\\boxed{18}$.",
    "THE ANSWER IS 4.",
    "The answer is −3.",
    "The answer is 0.5.",
    "The answer is  6.",
    # flexible / last number
    "I have 3 apples and 4 oranges, total 7.",
    "No numbers here.",
    "",
    "5",
    "-5",
    "$5",
    "$1,000.00",
    "Costs $ 5",
    "The number 42 appears in the middle of the sentence and then words.",
    "Values: 1. 2. 3.",
    "3.14159",
    "−5",
    "x = -0.5",
    "1,2,3",
    "...",
    "$$",
    "version 1.2.3",
    "Answer: 12.\n\n",
    "12\r\n",
    "Total = 1 000",
    "٣",
    "٣٤ and 5",
    "10%",
    "5e3",
    "Tab\t9\t",
    "foo\n#### 5\nbar",
    "#### 5\nQuestion: what about 6?",
    "-",
    "--5",
    "-$5",
    "$-5",
    "5-3",
    "1.",
    ".5",
    "a.b.c",
    "We get 18.\n",
    "We get 18.\n\n",
    "18.\n",
    "The sum is 2+3=5",
    "Each costs $2.50, so 4 cost $10.00.",
    "In 2023, 15 people came.",
    "ｆｕｌｌｗｉｄｔｈ ５",
    "①②③ 7",
    "Ⅻ 12",
    "5\u00a06",
    "5\u20096",
    "He paid $\n5",
    "1,\n2",
    # Python `$` and `.` semantics in the normalization regexes
    "5.\n",
    "5.\n\n",
    "a.\nb.",
    "x #### 5 #### 6",
    "line1\n#### 7.\n",
    "#### 8.\r\n",
    "Natalia sold #### 72.",
    "$1,000.",
    "1000..",
    # unicode and odd characters
    "İstanbul 5",
    "ΑΣ",
    "ΑΣ.",
    "ΑΣΑ",
    "Σ",
    "ΑΣ 5",
    "ẞ",
    "ǅ",
    "ＡＢ",
    "a\x00",
    "5\x00",
    "5.\x00",
    "5\x003",
    "\x00#### 5",
    "Ünïcödé 9",
    "数字是 42。",
    "答案是 \\boxed{42}",
    "emoji 🎉 13",
    "\u202e5\u202c",
    # calculator annotations
    "He has 3*4=<<3*4=12>>12 eggs.\n#### 12",
    "<<unterminated 5",
    "<<a\nb>> 6",
    "<<a<<b>>c>> 7",
    ">>x<< 8",
    "<<>> 9",
    "<<<1>>> 10",
    "$<<50*3=150>>150 and $<<150+50=200>>200\n#### 200",
    "<<a>>\n<<b",
    "x<<\n>>y<<z>>",
    "<<<<>>",
    "<<a>><<b>>",
    "<<a>>>",
    "<<\r>>",
    "<<a\n<<b>>",
    "<<",
    ">>",
]

# Variants: the same outputs under CRLF, with trailing chatter, and after a few-shot echo.
VARIANTS = []
for t in [r"\boxed{18}", "#### 1,234.", "The answer is 5.", "I think it is 42 apples"]:
    VARIANTS += [t.replace("\n", "\r\n") + "\r\n", t + "\n\nQuestion: How many?", "Question: 3 + 4?\nAnswer: 7\n\n" + t,
                 "  " + t + "  ", t + "</s>", t + "<|im_end|>"]

HEX_CASES = [  # ill-formed UTF-8 (decoded with errors="replace" as a model's text would be)
    b"#### 5\xff",
    b"\xe2\x82 The answer is 7.",
    b"\xf0\x9f\x98 \\boxed{9}",
    b"\xc0\xaf 12",
    b"\xed\xa0\x80 #### 3",
    b"abc\xf4\x90\x80\x80 4",
    b"5\xe0\x80",
]


def case_record(text):
    rec = {"openai": extract_answer(text), "strip": strip_annotations(text), "em_norm": em_norm(text, **TASK_CFG["gsm8k"][1])}
    for task, (cfg, kw, filters) in TASK_CFG.items():
        strict = apply_filter_list(filters["strict-match"], text)
        flex = apply_filter_list(filters["flexible-extract"], text)
        refs = [apply_template(cfg["doc_to_target"], {"answer": g}) for g in GOLDS]
        rec[task] = {
            "strict": strict,
            "flexible": flex,
            "strict_em": "".join(str(int(exact_match(strict, r, **kw))) for r in refs),
            "flexible_em": "".join(str(int(exact_match(flex, r, **kw))) for r in refs),
        }
    return rec


def regex_filter_cases():
    RegexFilter = get_filter("regex")
    patterns = [r"x*", r"(a)|(b)", r"(a)(b)?", r"\d+", r"(\d+)", r"^\s*(\w+)$", r"(?i)answer:?\s*(\S+)",
                r"(-?[$0-9.,]{2,})|(-?[0-9]+)", r"(x)?(y)?", r"$", r".", r"(?s).", r"\s+(\d)", r"\w+", r"[^a]+", r"\S+", r"[\s5]+", r"b\Z", r"\u00e9", r"[]a]"]
    texts = ["", "axb", "ab ba", "a1 22 333", "  word  ", "Answer: 42\nanswer 7", "x\ny", "5\n", "Ünï 12 ٣",
             "\u2003 5 \u2003", "xyxy", "\x1c 5\u00a0\x1f\x85", "①Ⅻ _x", "\x1c5\x1d", "\x855", "a\nb\n", "A\u00e9"]
    out = []
    for p in patterns:
        for g in (0, 1, -1, -2):
            for fb in ("[invalid]", " fb "):
                for t in texts:
                    try:
                        r = list(RegexFilter(regex_pattern=p, group_select=g, fallback=fb).apply([[t]], [None]))[0][0]
                        out.append({"pattern": p, "group_select": g, "fallback": fb, "text": t, "out": r})
                    except IndexError:
                        out.append({"pattern": p, "group_select": g, "fallback": fb, "text": t, "error": True})
    return out


def exact_match_cases():
    gsm = TASK_CFG["gsm8k"][1]["regexes_to_ignore"]
    settings = [
        {"regexes_to_ignore": gsm, "ignore_case": True, "ignore_punctuation": False},
        {"regexes_to_ignore": None, "ignore_case": False},
        {"regexes_to_ignore": [], "ignore_case": True},
        {"regexes_to_ignore": [r"\s+", "x*"], "ignore_case": False, "ignore_punctuation": True},
        {"regexes_to_ignore": ["^a", "b$"], "ignore_case": True, "ignore_numbers": True},
    ]
    pairs = [("5", "5"), ("$1,000.", "#### 1000"), ("Hello", "hello"), ("a b", "ab"), ("5.\n", "5"),
             ("1,2", "12"), ("x5", "5"), ("İ", "i"), ("İ", "i\u0307"), ("ΑΣ", "ας"), ("5\x00", "5"),
             ("5.\x00", "5"), ("ab\nb", "ab\n"), ("a!b", "ab"), ("12ab", "ab"), ("#### 5", "5"), ("", "")]
    out = []
    for s in settings:
        for p, r in pairs:
            out.append({"settings": s, "pred": p, "ref": r, "result": exact_match(p, r, **s),
                        "pred_norm": em_norm(p, **s)})
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        export_split(split)
    cases = []
    for t in BASE + VARIANTS:
        cases.append({"text": t, **case_record(t)})
    for b in HEX_CASES:
        cases.append({"text_hex": b.hex(), **case_record(b.decode("utf-8", "replace"))})
    tasks = {}
    for task, (cfg, kw, filters) in TASK_CFG.items():
        tasks[task] = {"file": TASKS[task], "doc_to_target": cfg["doc_to_target"], "metric_kwargs": kw,
                       "filters": filters,
                       "targets": [apply_template(cfg["doc_to_target"], {"answer": g}) for g in GOLDS]}
    doc = {
        "source": f"lm_eval {lm_eval.__version__} (task YAMLs, RegexFilter, exact_match_hf_evaluate); "
                  "openai/grade-school-math dataset.py@2909d34 extract_answer; re.sub(r'<<.*?>>', '', s); "
                  f"numpy {np.__version__}; python {sys.version.split()[0]}. "
                  "Written by tools/golden/export_gsm8k_fixtures.py.",
        "golds": GOLDS,
        "tasks": tasks,
        "cases": cases,
        "regex_filter": regex_filter_cases(),
        "exact_match": exact_match_cases(),
    }
    with open(OUT / "extraction.json", "w") as f:
        json.dump(doc, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print(f"extraction.json: {len(cases)} model outputs, {len(doc['regex_filter'])} RegexFilter cases, "
          f"{len(doc['exact_match'])} exact_match cases")


if __name__ == "__main__":
    main()
