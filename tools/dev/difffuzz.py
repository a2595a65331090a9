# Random tokenizer configs + inputs: compare our C++ tokenizer with HF tokenizers 0.23.3.
import json, random, subprocess, sys
from tokenizers import Tokenizer

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rng = random.Random(seed)

ALPHA = list("abcdeABC ") + [" ", " ", "\t", "\n", "\r", "▁", "é", "e\u0301", "ß", "İ", "Σ", "ﬁ", "①", "中", "😀", "\u00a0", "\u2003", "'", "s", "1", "2", "-", ".", "<", ">", "_", "\u180e", "Ġ"]

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))
B2U = bytes_to_unicode()

REGEXES = ["\\s+", " ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", "(?i:'s|'t)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
           "\\w+|[^\\w\\s]+", "a*", "\\d", "(?=a)", "$", "^", "\\b", ".", "[▁ ]", "\\p{N}{1,3}", "x|(?=y)|é"]
BEH = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]

def rstr(k=None):
    k = k if k is not None else rng.randint(0, 12)
    return "".join(rng.choice(ALPHA) for _ in range(k))

NONEMPTY = ["\\s+", "\\w+|[^\\w\\s]+", "\\d", ".", "[▁ ]", "\\p{N}{1,3}", " ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"]
def pattern(nonempty=False):
    if nonempty:
        # tokenizers 0.23.3 mis-aligns text inserted by empty matches (then ByteLevel maps the wrong range)
        return {"String": rng.choice([" ", "a", "▁", "ab", "\n", "é", "  "])} if rng.random() < 0.5 else {"Regex": rng.choice(NONEMPTY)}
    if rng.random() < 0.5:
        return {"String": rng.choice([" ", "a", "▁", "ab", "\n", "é", "  "])}
    return {"Regex": rng.choice(REGEXES)}

def normalizer(depth=0):
    t = rng.choice(["NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Replace", "Prepend", "Strip", "Sequence" if depth == 0 else "NFC"])
    if t == "Replace": return {"type": t, "pattern": pattern(True), "content": rng.choice(["▁", "", "xy", " "])}
    if t == "Prepend": return {"type": t, "prepend": rng.choice(["▁", "a", "  "])}
    if t == "Strip": return {"type": t, "strip_left": rng.random() < 0.5, "strip_right": rng.random() < 0.5}
    if t == "Sequence": return {"type": t, "normalizers": [normalizer(1) for _ in range(rng.randint(1, 3))]}
    return {"type": t}

def pretok(depth=0):
    t = rng.choice(["Split", "Split", "ByteLevel", "Metaspace", "Sequence" if depth == 0 else "Split"])
    if t == "Split": return {"type": t, "pattern": pattern(), "behavior": rng.choice(BEH), "invert": rng.random() < 0.3}
    if t == "ByteLevel": return {"type": t, "add_prefix_space": rng.random() < 0.5, "trim_offsets": True, "use_regex": rng.random() < 0.5}
    if t == "Metaspace":
        sch = rng.choice(["always", "never", "first"])
        return {"type": t, "replacement": rng.choice(["▁", "_"]), "prepend_scheme": sch, "split": rng.random() < 0.6}
    return {"type": t, "pretokenizers": [pretok(1) for _ in range(rng.randint(1, 3))]}

def decoder(depth=0):
    t = rng.choice(["ByteLevel", "Replace", "ByteFallback", "Fuse", "Strip", "Metaspace", "Sequence" if depth == 0 else "Fuse"])
    if t == "ByteLevel": return {"type": t, "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    if t == "Replace": return {"type": t, "pattern": pattern(), "content": rng.choice([" ", "", "Z"])}
    if t == "Strip": return {"type": t, "content": rng.choice([" ", "▁", "a"]), "start": rng.randint(0, 2), "stop": rng.randint(0, 1)}
    if t == "Metaspace": return {"type": t, "replacement": "▁", "prepend_scheme": rng.choice(["always", "never", "first"]), "split": True}
    if t == "Sequence": return {"type": t, "decoders": [decoder(1) for _ in range(rng.randint(1, 3))]}
    return {"type": t}

def has_bytelevel(p):
    if p is None: return False
    if p["type"] == "ByteLevel": return True
    if p["type"] == "Sequence": return any(has_bytelevel(x) for x in p["pretokenizers"])
    return False

def config():
    pre = pretok() if rng.random() < 0.8 else None
    norm = normalizer() if rng.random() < 0.6 else None
    tokens = []
    if has_bytelevel(pre) or rng.random() < 0.3:
        tokens += [B2U[b] for b in range(256)]
    base_chars = set()
    for s in ALPHA:
        for c in s: base_chars.add(c)
    tokens += [c for c in sorted(base_chars) if c not in tokens and rng.random() < 0.85]
    byte_fb = rng.random() < 0.4
    if byte_fb:
        tokens += [f"<0x{b:02X}>" for b in range(256) if rng.random() < 0.9]
    unk = rng.random() < 0.5
    if unk: tokens.append("<unk>")
    prefix = "##" if rng.random() < 0.1 else None
    suffix = "</w>" if rng.random() < 0.1 else None
    tokens = list(dict.fromkeys(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for _ in range(rng.randint(0, 60)):
        a, b = rng.choice(tokens), rng.choice(tokens)
        if prefix and not b.startswith(prefix): b2 = prefix + b
        else: b2 = b
        if b2 not in vocab: vocab[b2] = len(vocab); tokens.append(b2)
        m = a + b2[len(prefix or ""):]
        if m not in vocab: vocab[m] = len(vocab); tokens.append(m)
        merges.append([a, b2])
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>" if unk else None, "continuing_subword_prefix": prefix,
             "end_of_word_suffix": suffix, "fuse_unk": rng.random() < 0.5, "byte_fallback": byte_fb, "ignore_merges": rng.random() < 0.3,
             "vocab": vocab, "merges": merges if rng.random() < 0.5 else [" ".join(m) for m in merges if " " not in m[0] + m[1]]}
    added = []
    next_id = len(vocab)
    for _ in range(rng.randint(0, 5)):
        c = rng.choice(["<s>", "</s>", "<mask>", "ab", "▁▁", "\n", "  ", "é", "Hello", "hello", "'s", "<b>", rstr(rng.randint(1, 3))])
        if any(a["content"] == c for a in added) or not c: continue
        if c in vocab: i = vocab[c]
        else: i = next_id; next_id += 1
        added.append({"id": i, "content": c, "single_word": rng.random() < 0.3, "lstrip": rng.random() < 0.3, "rstrip": rng.random() < 0.3,
                      "normalized": rng.random() < 0.4, "special": rng.random() < 0.5})
    post = None
    r = rng.random()
    if r < 0.3:
        ids = [rng.randrange(len(vocab)) for _ in range(2)]
        post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "X", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [], "special_tokens": {"X": {"id": "X", "ids": ids, "tokens": ["x", "y"]}}}
    elif r < 0.4:
        post = {"type": "BertProcessing", "sep": ["a", 0], "cls": ["b", 1]}
    dec = decoder() if rng.random() < 0.8 else None
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": norm, "pre_tokenizer": pre,
            "post_processor": post, "decoder": dec, "model": model}

reqs, refs = [], []
for case in range(N):
    cfg = config(); print("case", case, file=sys.stderr, flush=True)
    js = json.dumps(cfg, ensure_ascii=False)
    try:
        t = Tokenizer.from_str(js)
    except BaseException as e:
        refs.append(("loaderr", str(e))); reqs.append({"tok": js, "texts": [], "ids": []}); continue
    texts = []
    for _ in range(6):
        s = rstr()
        if cfg["added_tokens"] and rng.random() < 0.5:
            a = rng.choice(cfg["added_tokens"])["content"]
            p = rng.randint(0, len(s)); s = s[:p] + a + s[p:]
        texts.append(s)
    raw = [s.encode() for s in texts]
    if rng.random() < 0.3: raw.append(b"ab\xff\xc3 x")
    enc = []
    for b in raw:
        s = b.decode("utf-8", "replace")
        for sp in (True, False):
            try: enc.append(t.encode(s, add_special_tokens=sp).ids)
            except BaseException as e: enc.append("err")
    nv = t.get_vocab_size(True)
    idl = [[rng.randrange(nv + 2) for _ in range(rng.randint(0, 8))] for _ in range(4)]
    dec = []
    for ids in idl:
        for skip in (True, False):
            try: dec.append(t.decode(ids, skip_special_tokens=skip).encode().hex())
            except BaseException as e: dec.append("err")
    refs.append(("ok", enc, dec))
    reqs.append({"tok": js, "texts": [b.hex() for b in raw], "ids": idl})

open(f"reqs_{seed}.jsonl", "w").write("\n".join(json.dumps(r) for r in reqs) + "\n")
if len(sys.argv) > 3: sys.exit(0)
p = subprocess.run(["./diff_tool"], input="\n".join(json.dumps(r) for r in reqs) + "\n", capture_output=True, text=True)
outs = [json.loads(l) for l in p.stdout.splitlines()]
if len(outs) != len(reqs):
    print("tool crashed", p.returncode, p.stderr[-2000:]); sys.exit(1)
bad = 0
stats = {"both_load": 0, "we_reject": 0, "hf_reject": 0}
for i, (req, ref, out) in enumerate(zip(reqs, refs, outs)):
    if ref[0] == "loaderr":
        if out["load"] == "ok":
            stats["hf_reject"] += 1
            print(f"[{seed}:{i}] HF rejects but we load: {ref[1][:150]}")
        continue
    if out["load"] != "ok":
        stats["we_reject"] += 1
        print(f"[{seed}:{i}] we reject: {out['load'][:300]}")
        continue
    stats["both_load"] += 1
    _, enc, dec = ref
    for k, (a, b) in enumerate(zip(enc, out["enc"])):
        if a == "err" and isinstance(b, str): continue
        if a != b:
            bad += 1
            print(f"[{seed}:{i}] ENC mismatch text={bytes.fromhex(req['texts'][k//2])!r} special={k%2==0}\n  hf ={a}\n  our={b}")
            print("  cfg:", req["tok"][:300])
            open(f"cfg_{seed}_{i}.json", "w").write(req["tok"])
            break
    for k, (a, b) in enumerate(zip(dec, out["dec"])):
        if a == "err" and b.startswith("err"): continue
        if a != b:
            bad += 1
            print(f"[{seed}:{i}] DEC mismatch ids={req['ids'][k//2]} skip={k%2==0}\n  hf ={bytes.fromhex(a) if a!='err' else a!r}\n  our={bytes.fromhex(b) if not b.startswith('err') else b}")
            print("  cfg:", req["tok"][:300])
            open(f"cfg_{seed}_{i}.json", "w").write(req["tok"])
            break
print("seed", seed, "mismatches", bad, stats)
