"""Exports the tokenizer golden fixtures from the Hugging Face `tokenizers` reference (0.23.3).

Reference: tokenizers.Tokenizer.from_file(<shared>/tokenizers/{qwen3,gemma3}/tokenizer.json); encode / decode
exactly as Python calls them (no transformers post-processing such as clean_up_tokenization_spaces). Input bytes
that are not valid UTF-8 are first repaired with bytes.decode("utf-8", "replace"), which is what our C++
Tokenizer promises to do, and the repaired text is what HF encodes.

Writes tests/golden/tokenizer/ (plain text and JSON; read by tests/test_text_tokenizer_golden.cpp):

1. gsm8k_<tok>_<split>.txt  (tok = qwen3 | gemma3, split = train | test) -- one line per JSONL line of
   <shared>/data/gsm8k/<split>.jsonl. Lines starting with '#' are comments. The first other line is the header
       gsm8k-tokenizer-v1 <tok> <split> <records> <total_q_tokens> <total_a_tokens> <bos_id> <jsonl_fnv>
   bos_id: the id that add_special_tokens=True prepends (-1 = none: True gives the same ids as False); the
   exporter checks this for every record. jsonl_fnv: FNV-1a 64 (hex) of the whole JSONL file's bytes, so a
   different data file is reported as such. Then one line per record:
       <line_no> <nq> <hq> <na> <ha> <dq> <dqs> <da> <das>
   line_no: 1-based line in the JSONL file; q = the "question" string, a = the "answer" string.
   nX: number of ids of encode(X, add_special_tokens=False); hX: FNV-1a 64 (16 lowercase hex digits) of
   those ids, each written as 4 bytes little-endian (uint32). dX = decode(ids, skip_special_tokens=False),
   dXs = decode(ids, skip_special_tokens=True): "=" when the decoded text equals X exactly, else the FNV-1a 64
   hex of the decoded text's UTF-8 bytes.
   FNV-1a 64: h = 0xcbf29ce484222325; for each byte b: h ^= b; h *= 0x100000001b3 (mod 2^64).

2. gsm8k_ids.json -- full ids of the first N_FULL records of each split under each tokenizer, so a
   mismatch can be shown id by id:
       {"format": "gsm8k-ids-v1", "records": {"qwen3": {"train": [{"line": 1, "q": [...], "a": [...]}, ...],
        "test": [...]}, "gemma3": {...}}}

3. torture.json -- hand-written strings (all stored as hex of their bytes, so invalid UTF-8 survives):
       {"format": "tokenizer-torture-v1", "cases": [{"name": ..., "hex": <input bytes>,
         "text": <the input as a JSON string, informational, only when valid UTF-8 and short>,
         "qwen3": R, "gemma3": R}, ...]}
   Long repeats store "repeat_hex": <unit bytes>, "repeat_count": n instead of "hex" (input = unit x n).
   Invalid UTF-8 inputs also store "repaired_hex": s = input.decode("utf-8", "replace") (what HF encodes).
   R = {"ids": encode(s, add_special_tokens=False),
        "special_prefix": [...]  -- encode(s, True) == special_prefix + ids  (Gemma [2], Qwen []), or, where
                                    that does not hold, "ids_special": encode(s, True) in full,
        "dec": decode(ids, skip_special_tokens=False), "dec_skip": decode(ids, True),
        "dec_special": decode(ids_special, False), "dec_special_skip": decode(ids_special, True)}
   where s = input bytes .decode("utf-8", "replace"); each dec* is "=" when it equals s exactly, else the hex of
   the decoded UTF-8.

4. decode.json -- decode of arbitrary id sequences (not produced by encode): random ids across the whole vocab
   (added and special ids included), runs of Gemma byte tokens <0xHH> that form invalid UTF-8 (ByteFallback),
   Qwen byte-level tokens that split multi-byte characters, ids >= vocab_size (HF skips them):
       {"format": "tokenizer-decode-v1", "cases": [{"name", "tokenizer", "ids", "dec": hex, "dec_skip": hex}]}

5. vocab.json -- vocab_size (with added tokens, as Python's get_vocab_size()), and for a set of ids (every
   special token, a sample of added tokens, byte tokens, random ids): token (hex of its UTF-8), is_special, and
   token_to_id(token) (which can differ from the id when two ids share a string):
       {"format": "tokenizer-vocab-v1", "qwen3": {"vocab_size": N, "model_vocab_size": M,
        "tokens": [{"id", "hex", "special", "to_id"}], "absent": [hex, ...]}, "gemma3": {...}}
   "absent" lists strings for which token_to_id gives None.

Run: tools/.venv/bin/python tools/golden/export_tokenizer_fixtures.py [SHARED_DIR]   (default: ../shared)
"""
import argparse
import json
import pathlib
import random
import sys

import tokenizers
from tokenizers import Tokenizer

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
OUT = REPO / "tests" / "golden" / "tokenizer"
TOKENIZERS = ["qwen3", "gemma3"]
SPLITS = ["train", "test"]
N_FULL = 40  # records per split and tokenizer whose full ids are committed
REFERENCE_VERSION = "0.23.3"

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def ids_bytes(ids) -> bytes:
    return b"".join(int(i).to_bytes(4, "little") for i in ids)


def hex_of(s: str) -> str:
    return s.encode("utf-8").hex()


# ---------------------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------------------
def load_gsm8k(shared: pathlib.Path, split: str):
    path = shared / "data" / "gsm8k" / f"{split}.jsonl"
    raw = path.read_bytes()
    records = []
    for line_no, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        r = json.loads(line)
        records.append((line_no, r["question"], r["answer"]))
    return records, fnv1a64(raw)


def dec_field(decoded: str, original: str) -> str:
    return "=" if decoded == original else f"{fnv1a64(decoded.encode('utf-8')):016x}"


def export_gsm8k(tok_name: str, tok: Tokenizer, split: str, records, jsonl_fnv: int, full_ids: dict):
    qs = [q for _, q, _ in records]
    as_ = [a for _, _, a in records]
    enc_q = [e.ids for e in tok.encode_batch(qs, add_special_tokens=False)]
    enc_a = [e.ids for e in tok.encode_batch(as_, add_special_tokens=False)]
    # What add_special_tokens=True adds: must be one fixed prefix id (Gemma <bos>) or nothing (Qwen).
    enc_qs = [e.ids for e in tok.encode_batch(qs, add_special_tokens=True)]
    enc_as = [e.ids for e in tok.encode_batch(as_, add_special_tokens=True)]
    bos = -1
    if enc_qs[0] != enc_q[0]:
        bos = enc_qs[0][0]
    for plain, special in zip(enc_q + enc_a, enc_qs + enc_as):
        expect = plain if bos < 0 else [bos] + plain
        assert special == expect, f"{tok_name}: add_special_tokens=True is not a fixed prefix"
    dec_q = tok.decode_batch(enc_q, skip_special_tokens=False)
    dec_qs = tok.decode_batch(enc_q, skip_special_tokens=True)
    dec_a = tok.decode_batch(enc_a, skip_special_tokens=False)
    dec_as = tok.decode_batch(enc_a, skip_special_tokens=True)

    total_q = sum(map(len, enc_q))
    total_a = sum(map(len, enc_a))
    lines = [
        f"# GSM8K {split} under {tok_name}: made by tools/golden/export_tokenizer_fixtures.py with HF tokenizers "
        f"{tokenizers.__version__}",
        "# header: gsm8k-tokenizer-v1 <tok> <split> <records> <total_q_tokens> <total_a_tokens> <bos_id> <jsonl_fnv>",
        "# record: <line_no> <nq> <fnv(q ids)> <na> <fnv(a ids)> <dec q> <dec q skip> <dec a> <dec a skip>",
        "# (ids of encode(text, add_special_tokens=False) as uint32 LE; dec '=' = decode equals the text, else",
        "#  fnv of the decoded UTF-8; see the exporter's docstring and tools/golden/README.md)",
        f"gsm8k-tokenizer-v1 {tok_name} {split} {len(records)} {total_q} {total_a} {bos} {jsonl_fnv:016x}",
    ]
    for i, (line_no, q, a) in enumerate(records):
        lines.append(
            f"{line_no} {len(enc_q[i])} {fnv1a64(ids_bytes(enc_q[i])):016x} {len(enc_a[i])} "
            f"{fnv1a64(ids_bytes(enc_a[i])):016x} {dec_field(dec_q[i], q)} {dec_field(dec_qs[i], q)} "
            f"{dec_field(dec_a[i], a)} {dec_field(dec_as[i], a)}"
        )
    path = OUT / f"gsm8k_{tok_name}_{split}.txt"
    path.write_text("\n".join(lines) + "\n")
    full_ids.setdefault(tok_name, {})[split] = [
        {"line": records[i][0], "q": enc_q[i], "a": enc_a[i]} for i in range(min(N_FULL, len(records)))
    ]
    print(f"wrote {path.name}: {len(records)} records, {total_q}+{total_a} tokens, bos {bos}, "
          f"{path.stat().st_size} bytes")


# ---------------------------------------------------------------------------------------------------------
# Torture set
# ---------------------------------------------------------------------------------------------------------
def torture_cases():
    """(name, bytes) pairs. Strings are written with escapes so this file stays ASCII-readable."""
    c = []

    def add(name, s):
        c.append((name, s if isinstance(s, bytes) else s.encode("utf-8"), None))

    def add_repeat(name, unit, count):  # stored as unit x count, to keep the fixture small
        c.append((name, unit.encode("utf-8") * count, (unit.encode("utf-8"), count)))

    # -- trivial
    add("empty", "")
    add("single_space", " ")
    add("single_letter", "a")
    add("single_newline", "\n")
    add("single_tab", "\t")
    add("hello_world", "Hello, world!")
    # -- whitespace runs and mixes
    for n in [2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100]:
        add(f"spaces_{n}", " " * n)
    for n in [2, 3, 4, 8, 16, 33]:
        add(f"tabs_{n}", "\t" * n)
    add("spaces_between_words", "a  b   c    d     e")
    add("leading_trailing_spaces", "   leading and trailing   ")
    add("trailing_spaces_then_word", "word   \nnext")
    add("tab_mixes", "\tx\t\ty \t z\t \t")
    add("space_tab_newline_mix", " \t \n \t\n\t \n  \n\n   \t\t\n")
    add("indent_code_spaces", "if x:\n    y = 1\n        z = 2\n")
    add("indent_code_tabs", "if x:\n\ty = 1\n\t\tz = 2\n")
    add("crlf", "line one\r\nline two\r\n")
    add("crlf_runs", "a\r\n\r\n\r\nb")
    add("cr_only", "a\rb\r\rc\r")
    add("cr_spaces", "a \r \r\n b")
    add("lf_cr", "a\n\rb")
    for n in list(range(1, 34)) + [48, 64, 100, 257]:
        add(f"newlines_{n}", "\n" * n)
    add("newlines_between_words", "a\nb\n\nc\n\n\nd\n\n\n\ne")
    add("newline_space_runs", "x \n  \n   \n    \ny")
    add("text_then_newlines", "Answer:\n\n\n")
    # -- every Unicode whitespace (and near-whitespace) between letters, alone and in runs
    for cp in [0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x1F, 0x85, 0xA0, 0x1680, 0x180E, 0x2000, 0x2002, 0x2007, 0x2009,
               0x200A, 0x200B, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF]:
        ch = chr(cp)
        add(f"ws_U+{cp:04X}", f"a{ch}b {ch}{ch}c{ch}")
    add("ideographic_space_run", "\u3000\u3000\u3000x")
    add("nbsp_run_then_word", "\u00a0\u00a0 \u00a0word")
    # -- contractions (the Qwen regex's case-insensitive group)
    add("contractions_lower", "it's don't we're they've I'm you'll he'd")
    add("contractions_upper", "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D")
    add("contractions_mixed", "'S 'T 'Re 'rE 'VE 'M 'LL 'lL 'Ll 'D")
    add("contraction_bare", "'s't're've'm'll'd")
    add("contraction_long_s", "'\u017f and '\u017fa")
    add("contraction_then_letters", "'sa 'tis 'dare 'llama")
    add("curly_apostrophe", "it\u2019s don\u2019t \u2018quoted\u2019")
    add("apostrophes_misc", "''s ''' rock 'n' roll O'Neil '12 '\n 'x")
    # -- scripts
    add("cjk", "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u6211\u6709\u0033\u4e2a\u82f9\u679c\u3002")
    add("japanese", "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\u3002\u30ab\u30bf\u30ab\u30ca "
                    "\uff76\uff80\uff76\uff85 \u6f22\u5b57\u3068\u304b\u306a")
    add("korean", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4! \ud55c\uad6d\uc5b4 \ud14c\uc2a4\ud2b8")
    add("korean_decomposed_jamo", "\u1112\u1161\u11ab\u1100\u1173\u11af \u1100\u1161")
    add("hangul_lv_plus_t", "\uac00\u11a8 \ub098\u11ab")
    add("arabic", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 123")
    add("arabic_harakat", "\u0627\u0644\u0652\u0639\u064e\u0631\u064e\u0628\u0650\u064a\u0651\u064e\u0629")
    add("hebrew_niqqud", "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd \u05e2\u05d5\u05b9\u05dc\u05b8\u05dd")
    add("devanagari", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e")
    add("devanagari_nukta_exclusion", "\u0958 \u0915\u093c")
    add("thai", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01")
    add("greek_cyrillic", "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u041f\u0440\u0438\u0432\u0435\u0442 "
                          "\u043c\u0438\u0440")
    add("vietnamese", "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u")
    add("tamil_georgian_armenian_ethiopic", "\u0bb5\u0ba3\u0b95\u0bcd\u0b95\u0bae\u0bcd \u10d2\u10d0\u10db"
                                            "\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0 \u0532\u0561\u0580\u0587 "
                                            "\u1230\u120b\u121d")
    add("mixed_rtl_ltr_numbers", "abc \u05d0\u05d1\u05d2 123 \u0627\u0628\u062a 4.5 def")
    add("recent_unicode_letters", "\U0001e290\U0001e291 \U00011f04\U00011f05 \U00031350\U00031351 "
                                  "\U0002ebf0")
    # -- combining marks, non-NFC input
    add("e_combining_acute", "e\u0301 cafe\u0301 Cafe\u0301")
    add("angstrom_sign", "\u212b \u212bngstr\u00f6m")
    add("ohm_kelvin_signs", "\u2126 \u212a")
    add("a_ring_combining", "A\u030a a\u030a")
    add("combining_reorder", "a\u0323\u0302 a\u0302\u0323 q\u0307\u0323")
    add("combining_stack", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e")
    add("lone_combining_marks", "\u0301\u0301 x \u0308")
    add("cjk_compat_ideograph", "\uf900\uf901 \U0002f800")
    add("nfc_precomposed_vs_not", "\u00e9 e\u0301 \u1e69 s\u0323\u0307 s\u0307\u0323")
    add("greek_tonos", "\u0390 \u03ca\u0301 \u1fee")
    # -- numbers of every kind (\p{N})
    add("fullwidth_digits", "\uff11\uff12\uff13 \uff10.\uff15")
    add("superscripts", "x\u00b2+y\u00b3=z\u2074 10\u207b\u00b3 H\u2082O")
    add("fractions", "\u00bd \u00bc \u00be \u2153 1\u2044 2")
    add("roman_numerals", "\u216b \u217b \u2160\u2161\u2162 Chapter \u2163")
    add("circled_numbers", "\u2460\u2461\u2473 \u3251")
    add("arabic_indic_digits", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669 \u06f1\u06f2\u06f3")
    add("devanagari_thai_digits", "\u0967\u0968\u0969 \u0e51\u0e52\u0e53")
    add("math_bold_digits", "\U0001d7cf\U0001d7d0\U0001d7d1")
    add("decimal_numbers", "3.14159 -42 +7 1e-10 0.000001 6.02e23")
    add("thousands", "1,000,000 and 12,345.67")
    add("money", "$1,000.50 costs $3 and $0.25; \u20ac12,50 \u00a35 \u00a5100")
    add("percent_time_date", "50% at 3:45 PM on 2023-01-01 (12/31/1999)")
    rng = random.Random(4)
    add("digits_1000", "".join(rng.choice("0123456789") for _ in range(1000)))
    add_repeat("digits_zero_300", "0", 300)
    add("digits_with_letters", "abc123def4567ghi89")
    # -- long words and repeats (capped to keep the fixture small)
    add("long_word_english", "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis")
    add("long_word_german", "Donaudampfschifffahrtselektrizit\u00e4tenhauptbetriebswerkbauunterbeamtengesellschaft")
    add("long_word_random_2000", "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2000)))
    add_repeat("repeat_a_10000", "a", 10000)
    add_repeat("repeat_space_5000", " ", 5000)
    add_repeat("repeat_ab_2000", "ab", 2000)
    add_repeat("repeat_newline_1000", "\n", 1000)
    add_repeat("repeat_emoji_500", "\U0001f600", 500)
    add_repeat("repeat_cjk_1000", "\u4f60", 1000)
    add_repeat("repeat_dash_3000", "-", 3000)
    add_repeat("repeat_equals_1000", "=", 1000)
    add_repeat("repeat_dot_1000", ".", 1000)
    add_repeat("repeat_excl_500", "!", 500)
    add_repeat("repeat_space_word_500", " a", 500)
    # -- emoji
    add("emoji_simple", "\U0001f600 \U0001f602\U0001f923")
    add("emoji_skin_tone", "\U0001f44d\U0001f3fd \U0001f44b\U0001f3ff")
    add("emoji_zwj_family", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466")
    add("emoji_zwj_astronaut", "\U0001f9d1\U0001f3ff\u200d\U0001f680")
    add("emoji_rainbow_flag", "\U0001f3f3\ufe0f\u200d\U0001f308")
    add("emoji_flags", "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5\U0001f1e9\U0001f1ea")
    add("emoji_tag_flag", "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f")
    add("emoji_keycap_heart", "1\ufe0f\u20e3 \u2764\ufe0f \u2764")
    add("emoji_in_text", "hi\U0001f600there, ok\U0001f44d!")
    # -- special-token text
    add("qwen_im_start", "<|im_start|>")
    add("qwen_im_end", "<|im_end|>")
    add("qwen_chat", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    add("qwen_think_pair", "<think>\nreasoning\n</think>\n\nThe answer is 4.")
    add("qwen_endoftext", "text<|endoftext|>more")
    add("qwen_partial_specials", "<|im_start <|im_end| im_start|> <|im_start|")
    add("qwen_nested_specials", "<<|im_end|>> <|<|im_start|>|>")
    add("qwen_repeated_specials", "<|im_end|><|im_end|><|im_end|>")
    add("qwen_adjacent_specials", "a<|im_start|>b<|im_end|>c<think>d</think>e")
    add("qwen_tool_tokens", "<tool_call>{\"x\":1}</tool_call><tool_response>ok</tool_response><tool_>")
    add("qwen_fim_tokens", "<|fim_prefix|>def f(<|fim_suffix|>)<|fim_middle|>")
    add("qwen_vision_tokens", "<|vision_start|><|image_pad|><|vision_end|>")
    add("think_variants", "<think></think> <thinking> <think > </think\n> <THINK>")
    add("gemma_bos", "<bos>")
    add("gemma_bos_repeat", "<bos><bos>hello<bos>")
    add("gemma_chat", "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n")
    add("gemma_unused", "<unused0><unused5> <unused99><unused6241>")
    add("gemma_byte_token_text", "<0x0A><0xFF><0x41> <0x0a>")
    add("gemma_other_specials", "<eos><pad><unk><mask>[multimodal]")
    add("gemma_image_tokens", "<start_of_image><image_soft_token><end_of_image>")
    add("gemma_partial_specials", "<start_of_turn <end_of_turn <bo<bos>s> <<bos>>")
    add("gemma_specials_with_spaces", " <start_of_turn> user <end_of_turn> \n\n <bos> ")
    add("gemma_turn_newlines", "<end_of_turn>\n\n\n<start_of_turn>\t\t")
    add("literal_lower_one_eighth_block", "\u2581hello\u2581\u2581world \u2581")
    # -- byte-fallback triggers (Gemma) and controls
    for cp in list(range(0x00, 0x20)) + [0x7F, 0x80, 0x9F]:
        add(f"control_U+{cp:04X}", f"x{chr(cp)}y")
    add("all_c0_controls", "".join(chr(i) for i in range(0x20)))
    add("private_use", "\ue000 \uf8ff \U000f0000 \U0010fffd")
    add("max_code_point", "\U0010ffff")
    add("unassigned", "\u0378 \u0870\U0001fb9f \U0002fffe")
    add("noncharacters", "\ufdd0 \ufffe \uffff \U0001ffff")
    add("specials_block", "\ufffc \ufffd \ufff9")
    add("zero_width", "a\u200bb\u200cc\u200dd\u2060e\ufeff")
    add("bom_prefix", "\ufeffhello")
    add("variation_selectors", "\u845b\U000e0100 \u2764\ufe0e")
    add("nul_inside", "a\x00b\x00\x00c")
    # -- invalid UTF-8 (expected: HF encode of bytes.decode('utf-8', 'replace'))
    add("bad_lone_continuation", b"\x80")
    add("bad_continuations_in_text", b"abc\x80def\xbf\xbfghi")
    add("bad_truncated_3byte", b"\xe2\x82")
    add("bad_truncated_3byte_then_text", b"\xe2\x82 a")
    add("bad_truncated_emoji", b"hi \xf0\x9f\x98")
    add("bad_truncated_2byte_end", b"caf\xc3")
    add("bad_overlong_nul", b"\xc0\x80")
    add("bad_overlong_2byte", b"\xc1\xbf")
    add("bad_overlong_3byte", b"\xe0\x80\x80 \xe0\x9f\xbf")
    add("bad_overlong_4byte", b"\xf0\x80\x80\x80")
    add("bad_surrogate_high", b"\xed\xa0\x80")
    add("bad_surrogate_low", b"\xed\xbf\xbf")
    add("bad_surrogate_pair_cesu", b"\xed\xa0\xbd\xed\xb8\x80")
    add("bad_above_max", b"\xf4\x90\x80\x80")
    add("bad_f5_to_ff", bytes(range(0xF5, 0x100)))
    add("bad_5byte_form", b"\xf8\x88\x80\x80\x80")
    add("bad_fe_ff", b"\xfe\xff x \xff")
    add("bad_latin1", b"caf\xe9 na\xefve")
    add("bad_truncated_cjk", b"\xe4\xbd\xa0\xe5\xa5")
    add("bad_nul_ff", b"a\x00\xffb")
    add("bad_around_special", b"\xff<|im_end|>\x80<bos>\xc3")
    add("bad_in_digits", b"12\x8034")
    add("bad_before_space_run", b"\xe2\x82   \n\n x")
    add("bad_random_bytes", bytes(random.Random(64).randrange(256) for _ in range(200)))
    # -- math, code, URLs, GSM8K-like text
    add("latex_boxed", "The answer is \\boxed{42}.")
    add("latex_frac", "$\\frac{1}{2} + \\dfrac{3}{4} = \\boxed{\\frac{5}{4}}$")
    add("latex_inline", "\\(x^2 + 2x + 1 = 0\\) and \\[\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}\\]")
    add("code_python", "def f(x):\n    return x**2  # square\n\nprint(f(3))\n")
    add("code_c", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n")
    add("code_json", '{"key": [1, 2.5, null, true], "s": "a\\"b"}')
    add("url", "https://example.com/path/to?q=1&r=two#frag")
    add("email", "Contact user.name+tag@example.co.uk today.")
    add("markdown_table", "| a | b |\n|---|---|\n| 1 | 2 |\n")
    add("gsm8k_answer_like", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72")
    add("gsm8k_final_answer", "The final answer is 18.\n\n#### 18")
    add("punctuation_runs", "Wait...!?!? -- (yes); [no] {maybe} <ok> \"quote\" `tick` ~tilde~ ^_^")
    add("symbols", "\u00a9\u00ae\u2122 \u2211\u220f\u221a\u221e \u2190\u2192 \u2605\u2606 \u00b0C \u00b5m")
    add("mixed_everything", "Q: 3\u00d7\u2463 = ?\n\u7b54\u3048: \U0001f600 12 \u0661\u0662 e\u0301\t<|im_end|>\r\n")
    return c


def decode_field(decoded: str, s: str) -> str:
    return "=" if decoded == s else hex_of(decoded)


def export_torture(toks: dict):
    cases = []
    names = set()
    for name, raw, repeat in torture_cases():
        assert name not in names, name
        names.add(name)
        s = raw.decode("utf-8", "replace")
        if repeat is None:
            case = {"name": name, "hex": raw.hex()}
        else:
            case = {"name": name, "repeat_hex": repeat[0].hex(), "repeat_count": repeat[1]}
        valid = s.encode("utf-8") == raw
        if valid and len(s) <= 120:
            case["text"] = s
        if not valid:
            case["repaired_hex"] = hex_of(s)
        for tok_name, tok in toks.items():
            ids = tok.encode(s, add_special_tokens=False).ids
            ids_sp = tok.encode(s, add_special_tokens=True).ids
            r = {"ids": ids}
            # ids_special is stored as the prefix that add_special_tokens=True puts before ids (Gemma's <bos>),
            # or in full where it is not such a prefix.
            if ids_sp[len(ids_sp) - len(ids):] == ids:
                r["special_prefix"] = ids_sp[:len(ids_sp) - len(ids)]
            else:
                r["ids_special"] = ids_sp
            case[tok_name] = r | {
                "dec": decode_field(tok.decode(ids, skip_special_tokens=False), s),
                "dec_skip": decode_field(tok.decode(ids, skip_special_tokens=True), s),
                "dec_special": decode_field(tok.decode(ids_sp, skip_special_tokens=False), s),
                "dec_special_skip": decode_field(tok.decode(ids_sp, skip_special_tokens=True), s),
            }
        cases.append(case)
    doc = {
        "format": "tokenizer-torture-v1",
        "made_by": f"tools/golden/export_tokenizer_fixtures.py with HF tokenizers {tokenizers.__version__}",
        "cases": cases,
    }
    write_json("torture.json", doc, compact_lists=True)
    print(f"  {len(cases)} torture cases")


# ---------------------------------------------------------------------------------------------------------
# Decode of arbitrary id sequences
# ---------------------------------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def export_decode(toks: dict):
    cases = []

    def add(name, tok_name, ids):
        tok = toks[tok_name]
        cases.append({
            "name": name,
            "tokenizer": tok_name,
            "ids": ids,
            "dec": hex_of(tok.decode(ids, skip_special_tokens=False)),
            "dec_skip": hex_of(tok.decode(ids, skip_special_tokens=True)),
        })

    rng = random.Random(20260405)
    for tok_name, tok in toks.items():
        n = tok.get_vocab_size(with_added_tokens=True)
        added = sorted(tok.get_added_tokens_decoder().keys())
        special = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
        add(f"{tok_name}_empty", tok_name, [])
        for k in range(12):
            ids = [rng.randrange(n) for _ in range(24)]
            add(f"{tok_name}_random_{k}", tok_name, ids)
        for k in range(6):
            ids = [rng.randrange(n) for _ in range(16)]
            for _ in range(6):
                ids.insert(rng.randrange(len(ids) + 1), rng.choice(added))
            for _ in range(3):
                ids.insert(rng.randrange(len(ids) + 1), rng.choice(special))
            add(f"{tok_name}_random_with_added_{k}", tok_name, ids)
        add(f"{tok_name}_only_specials", tok_name, special[:20])
        # Ids the tokenizer does not know (a model's vocab can be larger, e.g. Qwen3's 151936): HF skips them.
        known = tok.encode("Hi there", add_special_tokens=False).ids
        add(f"{tok_name}_ids_beyond_vocab", tok_name, known + [n, n + 1, n + 266, 2**31 - 1] + known)
        add(f"{tok_name}_high_ids", tok_name, list(range(n - 12, n)))
        add(f"{tok_name}_low_ids", tok_name, list(range(0, 40)))

    # Qwen: byte-level tokens (one token per byte) splitting multi-byte characters.
    q = toks["qwen3"]
    b2u = bytes_to_unicode()
    byte_id = {b: q.token_to_id(b2u[b]) for b in range(256)}
    assert all(v is not None for v in byte_id.values())

    def qb(data: bytes):
        return [byte_id[b] for b in data]

    im_end = q.token_to_id("<|im_end|>")
    think = q.token_to_id("<think>")
    add("qwen3_bytes_full_cjk", "qwen3", qb("\u4f60".encode()))
    add("qwen3_bytes_truncated_cjk", "qwen3", qb("\u4f60".encode()[:2]))
    add("qwen3_bytes_cjk_missing_first", "qwen3", qb("\u4f60".encode()[1:]))
    add("qwen3_bytes_emoji_split_by_special", "qwen3", qb(b"\xf0\x9f") + [im_end] + qb(b"\x98\x80"))
    add("qwen3_bytes_emoji_split_by_nonspecial", "qwen3", qb(b"\xf0\x9f") + [think] + qb(b"\x98\x80"))
    add("qwen3_bytes_all_256", "qwen3", qb(bytes(range(256))))
    add("qwen3_bytes_surrogate", "qwen3", qb(b"\xed\xa0\x80x"))
    add("qwen3_bytes_overlong", "qwen3", qb(b"\xc0\x80\xe0\x80\x80"))
    add("qwen3_bytes_f5_ff", "qwen3", qb(bytes(range(0xF5, 0x100))))
    add("qwen3_bytes_random", "qwen3", qb(bytes(rng.randrange(256) for _ in range(64))))
    hello = q.encode("Hello \u4e16\u754c").ids
    add("qwen3_text_then_split_bytes", "qwen3", hello + qb(b"\xe4\xbd") + hello)

    # Gemma: ByteFallback runs <0xHH>.
    g = toks["gemma3"]

    def gb(data: bytes):
        return [g.token_to_id(f"<0x{b:02X}>") for b in data]

    g_hello = g.encode("Hello world", add_special_tokens=False).ids
    add("gemma3_bytes_valid_cjk", "gemma3", gb("\u4f60".encode()))
    add("gemma3_bytes_valid_emoji", "gemma3", gb("\U0001f600".encode()))
    add("gemma3_bytes_truncated_cjk", "gemma3", gb("\u4f60".encode()[:2]))
    add("gemma3_bytes_lone_continuation", "gemma3", gb(b"\x80\xbf"))
    add("gemma3_bytes_overlong", "gemma3", gb(b"\xc0\x80"))
    add("gemma3_bytes_surrogate", "gemma3", gb(b"\xed\xa0\x80"))
    add("gemma3_bytes_f5_ff", "gemma3", gb(bytes(range(0xF5, 0x100))))
    add("gemma3_bytes_valid_then_invalid", "gemma3", gb("\u4f60".encode() + b"\xe4\xbd"))
    add("gemma3_bytes_two_runs", "gemma3", gb(b"\xe4\xbd") + g_hello + gb(b"\xa0"))
    add("gemma3_bytes_split_by_special", "gemma3", gb(b"\xe4\xbd") + [1] + gb(b"\xa0"))
    add("gemma3_bytes_split_by_newline", "gemma3", gb(b"\xe4\xbd") + [107] + gb(b"\xa0"))
    add("gemma3_bytes_ascii", "gemma3", gb(b"Hi \n\t"))
    add("gemma3_bytes_all_256", "gemma3", gb(bytes(range(256))))
    add("gemma3_bytes_random", "gemma3", gb(bytes(rng.randrange(256) for _ in range(64))))
    add("gemma3_bytes_nul", "gemma3", gb(b"\x00") + g_hello + gb(b"\x00\x00"))
    add("gemma3_unk_runs", "gemma3", [3, 3] + g_hello + [3])
    space_tok = g.token_to_id("\u2581")
    add("gemma3_spaces_tokens", "gemma3", [space_tok, space_tok] + g_hello + [space_tok])
    add("gemma3_bos_text_eos", "gemma3", [2] + g_hello + [1, 106, 107, 105])
    doc = {
        "format": "tokenizer-decode-v1",
        "made_by": f"tools/golden/export_tokenizer_fixtures.py with HF tokenizers {tokenizers.__version__}",
        "cases": cases,
    }
    write_json("decode.json", doc, compact_lists=True)
    print(f"  {len(cases)} decode cases")


# ---------------------------------------------------------------------------------------------------------
# Vocabulary facts
# ---------------------------------------------------------------------------------------------------------
def export_vocab(toks: dict):
    doc = {"format": "tokenizer-vocab-v1",
           "made_by": f"tools/golden/export_tokenizer_fixtures.py with HF tokenizers {tokenizers.__version__}"}
    rng = random.Random(77)
    for tok_name, tok in toks.items():
        n = tok.get_vocab_size(with_added_tokens=True)
        decoder = tok.get_added_tokens_decoder()
        special = sorted(i for i, t in decoder.items() if t.special)
        nonspecial = sorted(i for i, t in decoder.items() if not t.special)
        ids = set(special)
        ids.update(nonspecial[:40])
        ids.update(rng.sample(nonspecial, min(60, len(nonspecial))))
        ids.update(rng.sample(range(n), 200))
        ids.update([0, 1, 2, 3, 198, 271, 872, 8948, 77091, n - 1])
        if tok_name == "gemma3":
            ids.update(range(236, 236 + 260))  # around the byte tokens <0x00>..<0xFF>
        tokens = []
        for i in sorted(ids):
            s = tok.id_to_token(i)
            assert s is not None, (tok_name, i)
            tokens.append({"id": i, "hex": hex_of(s), "special": bool(i in decoder and decoder[i].special),
                           "to_id": tok.token_to_id(s)})
        absent = [s for s in ["", "not a token at all \u4f60\u597d", "<|im_start", "<bos", "\U0010fffd" * 3]
                  if tok.token_to_id(s) is None]
        doc[tok_name] = {"vocab_size": n, "model_vocab_size": tok.get_vocab_size(with_added_tokens=False),
                         "tokens": tokens, "absent": [hex_of(s) for s in absent]}
    write_json("vocab.json", doc, compact_lists=True)


# ---------------------------------------------------------------------------------------------------------
def write_json(name: str, doc, compact_lists: bool):
    """JSON with one object per line inside the top-level lists, so diffs stay readable."""
    path = OUT / name
    text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    if compact_lists:
        text = text.replace('},{"name"', '},\n{"name"').replace('},{"id"', '},\n{"id"')
    path.write_text(text + "\n")
    print(f"wrote {name}: {path.stat().st_size} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shared", nargs="?", default=str(REPO.parent / "shared"),
                    help="directory holding tokenizers/{qwen3,gemma3} and data/gsm8k (default: ../shared)")
    args = ap.parse_args()
    shared = pathlib.Path(args.shared)
    if tokenizers.__version__ != REFERENCE_VERSION:
        print(f"warning: HF tokenizers {tokenizers.__version__}, fixtures were made with {REFERENCE_VERSION}",
              file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    toks = {name: Tokenizer.from_file(str(shared / "tokenizers" / name / "tokenizer.json")) for name in TOKENIZERS}

    full_ids = {}
    for split in SPLITS:
        records, jsonl_fnv = load_gsm8k(shared, split)
        for tok_name, tok in toks.items():
            export_gsm8k(tok_name, tok, split, records, jsonl_fnv, full_ids)
    doc = {"format": "gsm8k-ids-v1",
           "made_by": f"tools/golden/export_tokenizer_fixtures.py with HF tokenizers {tokenizers.__version__}",
           "records": full_ids}
    path = OUT / "gsm8k_ids.json"
    path.write_text(json.dumps(doc, separators=(",", ":")).replace('},{"line"', '},\n{"line"') + "\n")
    print(f"wrote gsm8k_ids.json: {path.stat().st_size} bytes")

    export_torture(toks)
    export_decode(toks)
    export_vocab(toks)


if __name__ == "__main__":
    main()
