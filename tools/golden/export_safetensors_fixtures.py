#!/usr/bin/env python3
"""Exports safetensors fixtures written by the Python `safetensors` package (0.8.0) itself.

Writes tests/golden/safetensors/:
  *.safetensors        files serialized by safetensors (the low-level `serialize` with TensorSpec for dtypes
                       numpy lacks, such as bfloat16 and float8; `safetensors.numpy.save_file` for the rest)
  sharded/             a two-shard checkpoint laid out as transformers' save_pretrained does (huggingface_hub's
                       shard splitter, `model-0000k-of-00002.safetensors`, index.json with indent=2, sort_keys)
  bad/*.safetensors    malformed files; manifest records whether the reference reader rejects each and how
  manifest.json        for every good file: metadata and every tensor (name, dtype, shape, raw bytes as hex, and
                       the values as numbers) so the C++ test rebuilds the same tensors and compares bytes
and a few seeds for the fuzzer in fuzz/corpus/safetensors/.

Usage: tools/.venv/bin/python tools/golden/export_safetensors_fixtures.py
"""
import ctypes
import json
import re
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import safetensors
from safetensors import TensorSpec, deserialize, serialize
from safetensors.numpy import save_file as np_save_file
from huggingface_hub.serialization import split_state_dict_into_shards_factory

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "safetensors"
SEEDS = ROOT / "fuzz" / "corpus" / "safetensors"

# safetensors dtype name -> (TensorSpec dtype string, element size, numpy dtype used to decode values or None)
DTYPES = {
    "BOOL": ("bool", 1, np.bool_),
    "U8": ("uint8", 1, np.uint8),
    "I8": ("int8", 1, np.int8),
    "F8_E5M2": ("float8_e5m2", 1, None),
    "F8_E4M3": ("float8_e4m3fn", 1, None),
    "F8_E8M0": ("float8_e8m0fnu", 1, None),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1, None),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1, None),
    "I16": ("int16", 2, np.int16),
    "U16": ("uint16", 2, np.uint16),
    "F16": ("float16", 2, np.float16),
    "BF16": ("bfloat16", 2, "bf16"),
    "I32": ("int32", 4, np.int32),
    "U32": ("uint32", 4, np.uint32),
    "F32": ("float32", 4, np.float32),
    "C64": ("complex64", 8, None),
    "F64": ("float64", 8, np.float64),
    "I64": ("int64", 8, np.int64),
    "U64": ("uint64", 8, np.uint64),
}

rng = np.random.default_rng(20240604)
_keep = []  # buffers referenced by TensorSpec must outlive serialize()


def bf16_bits_from_f32(x):
    """float32 -> bfloat16 bit patterns, round to nearest even (finite inputs)."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def f32_from_bf16_bits(bits):
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def sample(dtype, shape):
    """Raw little-endian bytes of a deterministic sample tensor."""
    n = numel(shape)
    _, size, npd = DTYPES[dtype]
    if dtype == "BOOL":
        return (rng.integers(0, 2, n) > 0).astype(np.bool_).tobytes()
    if dtype == "BF16":
        return bf16_bits_from_f32(rng.standard_normal(n).astype(np.float32) * 3).astype("<u2").tobytes()
    if npd is None:  # float8 / complex: arbitrary bytes
        return rng.integers(0, 256, n * size, dtype=np.uint8).tobytes()
    if np.issubdtype(npd, np.floating):
        return (rng.standard_normal(n) * 5).astype(npd).astype(np.dtype(npd).newbyteorder("<")).tobytes()
    info = np.iinfo(npd)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    vals = rng.integers(lo, hi, n, dtype=np.int64, endpoint=True)
    if n >= 2:  # include the extremes of the type
        vals = vals.astype(object)
        vals[0], vals[-1] = info.min, info.max
    return np.array(vals, dtype=npd).astype(np.dtype(npd).newbyteorder("<")).tobytes()


def values(dtype, shape, raw):
    """The tensor's values as JSON numbers (None for float8/complex)."""
    _, _, npd = DTYPES[dtype]
    if npd is None:
        return None
    if npd == "bf16":
        v = f32_from_bf16_bits(np.frombuffer(raw, dtype="<u2")).astype(np.float64)
    else:
        v = np.frombuffer(raw, dtype=np.dtype(npd).newbyteorder("<"))
    if dtype == "BOOL":
        return [int(x) for x in v]
    if np.issubdtype(v.dtype, np.floating):
        return [float(x) for x in v.astype(np.float64)]
    return [int(x) for x in v]


def spec(dtype, shape, raw):
    buf = (ctypes.c_uint8 * max(len(raw), 1)).from_buffer_copy(raw + b"\0" if not raw else raw)
    _keep.append(buf)
    return TensorSpec(dtype=DTYPES[dtype][0], shape=list(shape), data_ptr=ctypes.addressof(buf), data_len=len(raw))


def write_raw(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes). Serialized by safetensors' own serializer."""
    data = bytes(serialize({n: spec(d, s, r) for n, d, s, r in tensors}, metadata=metadata))
    path.write_bytes(data)
    return data


def describe(tensors, metadata):
    return {
        "metadata": metadata,
        "tensors": [
            {"name": n, "dtype": d, "shape": list(s), "hex": r.hex(), "values": values(d, s, r)}
            for n, d, s, r in tensors
        ],
    }


def check_roundtrip(path, tensors, metadata):
    """The reference reader returns what was written."""
    got = {name: info for name, info in deserialize(path.read_bytes())}
    assert set(got) == {n for n, *_ in tensors}, (path, set(got))
    for n, d, s, r in tensors:
        assert got[n]["dtype"] == d and list(got[n]["shape"]) == list(s) and bytes(got[n]["data"]) == r, (path, n)


def compact_lists(text):
    """Puts each innermost JSON list on one line (small diffs, small files)."""
    return re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for sub in ("sharded", "bad"):
        shutil.rmtree(OUT / sub, ignore_errors=True)
        (OUT / sub).mkdir()
    for f in OUT.glob("*.safetensors"):
        f.unlink()
    manifest = {"safetensors_version": safetensors.__version__, "files": {}, "bad": {}}

    # 1. Every dtype, plus a scalar and zero-size tensors; metadata as transformers writes it.
    shapes = [[2, 3], [5], [2, 2], [3], [1, 4], [2]]
    ts = []
    for i, d in enumerate(DTYPES):
        s = shapes[i % len(shapes)]
        ts.append((f"t_{d.lower()}", d, s, sample(d, s)))
    ts += [
        ("scalar_f32", "F32", [], sample("F32", [])),
        ("scalar_i64", "I64", [], sample("I64", [])),
        ("empty_f32", "F32", [0, 3], b""),
        ("empty_bf16", "BF16", [2, 0], b""),
        ("empty_u8", "U8", [0], b""),
    ]
    md = {"format": "pt"}
    write_raw(OUT / "dtypes.safetensors", ts, md)
    check_roundtrip(OUT / "dtypes.safetensors", ts, md)
    manifest["files"]["dtypes.safetensors"] = describe(ts, md)

    # 2. The public numpy API (safetensors.numpy.save_file), no metadata.
    arrays = {
        "weight": (rng.standard_normal((3, 4)) * 2).astype(np.float32),
        "half": (rng.standard_normal(6)).astype(np.float16),
        "double": rng.standard_normal((2, 2)),
        "ids": np.array([0, -1, 2**40, -(2**62)], dtype=np.int64),
        "mask": np.array([[True, False, True]]),
        "bytes": np.arange(7, dtype=np.uint8),
        "i32": np.array(12345, dtype=np.int32),  # scalar
    }
    np_save_file(arrays, str(OUT / "numpy.safetensors"))
    nd = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
          np.dtype(np.int64): "I64", np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8",
          np.dtype(np.int32): "I32"}
    ts = [(k, nd[v.dtype], list(v.shape), v.tobytes()) for k, v in arrays.items()]
    check_roundtrip(OUT / "numpy.safetensors", ts, None)
    manifest["files"]["numpy.safetensors"] = describe(ts, None)

    # 3. Names and metadata that need JSON escaping (quotes, backslash, control bytes, DEL, non-ASCII, U+2028).
    names = ["q\"uote", "back\\slash", "tab\there", "nl\nx", "ctrl\x01\x1f\x7f", "slash/é", "emoji😀", "ls\u2028ps",
             "", "a b"]
    ts = [(n, "U8", [1], bytes([i])) for i, n in enumerate(names)]
    md = {"note": "quote\" backslash\\ tab\t nl\n cr\r ff\f bs\b nul\x00 ctrl\x1f é 😀 \u2028"}
    write_raw(OUT / "names.safetensors", ts, md)
    check_roundtrip(OUT / "names.safetensors", ts, md)
    manifest["files"]["names.safetensors"] = describe(ts, md)

    # 4. No tensors; no tensors with metadata.
    write_raw(OUT / "empty.safetensors", [], None)
    manifest["files"]["empty.safetensors"] = describe([], None)
    write_raw(OUT / "metadata_only.safetensors", [], {"format": "pt"})
    manifest["files"]["metadata_only.safetensors"] = describe([], {"format": "pt"})

    # 5. Ordering: dtype descending, then names bytewise ("B" < "Z" < "_x" < "a" < "é").
    order_names = ["b", "a", "B", "a.10", "a.2", "é", "Z", "_x", "a b", "a.1"]
    ts = []
    for i, n in enumerate(order_names):
        d = ["F32", "BF16", "U8", "I64", "F32"][i % 5]
        ts.append((n, d, [i % 3 + 1], sample(d, [i % 3 + 1])))
    write_raw(OUT / "order.safetensors", ts, None)
    check_roundtrip(OUT / "order.safetensors", ts, None)
    manifest["files"]["order.safetensors"] = describe(ts, None)

    # 6. Rounding on load: f64 values at and near f16/bf16 ties (double rounding through f32 would be wrong),
    # with the correctly rounded results from numpy (f64 -> f16 direct) and the RNE formula (f32 -> bf16).
    f16_ties = []
    for m in (1.0, 1.5, -3.0, 1000.0, 2.0**-20):
        ulp = np.spacing(np.float16(m)).astype(np.float64)
        f16_ties += [m + ulp / 2, m + ulp / 2 + 2.0**-40 * m, m + ulp / 2 - 2.0**-40 * m, m + 1.5 * ulp]
    f64 = np.array(f16_ties + [1 + 2.0**-8 + 2.0**-30, 1 + 2.0**-8, 1 + 3 * 2.0**-8, -(2 + 2.0**-7 + 2.0**-40), 65504.0,
                               65520.0, 1e-8, 0.1, -0.0], dtype=np.float64)
    f32 = f64.astype(np.float32)
    ts = [("f64", "F64", [len(f64)], f64.astype("<f8").tobytes()), ("f32", "F32", [len(f32)], f32.astype("<f4").tobytes())]
    write_raw(OUT / "rounding.safetensors", ts, None)
    manifest["files"]["rounding.safetensors"] = describe(ts, None)
    with np.errstate(over="ignore"):  # 65520 rounds to f16 infinity, as intended
        manifest["rounding"] = {
            "f64_to_f16_bits": [int(x) for x in f64.astype(np.float16).view(np.uint16)],
            "f64_to_f32": [float(x) for x in f32.astype(np.float64)],
            "f32_to_f16_bits": [int(x) for x in f32.astype(np.float16).view(np.uint16)],
            "f32_to_bf16_bits": [int(x) for x in bf16_bits_from_f32(f32)],
        }

    # 7. A sharded checkpoint as transformers writes it: a tiny Qwen3-shaped state dict (bf16), split by
    # huggingface_hub's splitter in state-dict order, each shard saved with metadata {"format": "pt"}, and
    # model.safetensors.index.json = {"metadata": {"total_parameters", "total_size"}, "weight_map"}.
    H, V, F = 8, 16, 12
    sd = {"model.embed_tokens.weight": [V, H]}
    for layer in range(2):
        p = f"model.layers.{layer}."
        sd.update({p + "input_layernorm.weight": [H], p + "self_attn.q_proj.weight": [H, H],
                   p + "self_attn.k_proj.weight": [4, H], p + "self_attn.v_proj.weight": [4, H],
                   p + "self_attn.o_proj.weight": [H, H], p + "self_attn.q_norm.weight": [4],
                   p + "self_attn.k_norm.weight": [4], p + "post_attention_layernorm.weight": [H],
                   p + "mlp.gate_proj.weight": [F, H], p + "mlp.up_proj.weight": [F, H],
                   p + "mlp.down_proj.weight": [H, F]})
    sd["model.norm.weight"] = [H]
    raws = {k: sample("BF16", s) for k, s in sd.items()}
    split = split_state_dict_into_shards_factory(raws, get_storage_size=len, filename_pattern="model{suffix}.safetensors",
                                                 max_shard_size=sum(map(len, raws.values())) * 6 // 10)
    assert split.is_sharded and len(split.filename_to_tensors) == 2, split.filename_to_tensors.keys()
    shard_desc = {}
    for fname, keys in split.filename_to_tensors.items():
        ts = [(k, "BF16", sd[k], raws[k]) for k in keys]
        write_raw(OUT / "sharded" / fname, ts, {"format": "pt"})
        check_roundtrip(OUT / "sharded" / fname, ts, {"format": "pt"})
        shard_desc[fname] = describe(ts, {"format": "pt"})
    index = {"metadata": {"total_parameters": sum(numel(s) for s in sd.values()), **split.metadata},
             "weight_map": split.tensor_to_filename}
    (OUT / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    manifest["sharded"] = {"shards": shard_desc, "total_parameters": index["metadata"]["total_parameters"],
                           "total_bytes": split.metadata["total_size"], "num_tensors": len(sd)}

    # 8. Malformed files. The reference reader's verdict is recorded; where it accepts a file (duplicate keys,
    # unknown fields, sub-byte dtypes) Distill is deliberately stricter (SPEC §3.1 / DESIGN "Bad input").
    def hdr(obj_text, data=b"", n=None):
        h = obj_text.encode("utf-8") if isinstance(obj_text, str) else obj_text
        return struct.pack("<Q", len(h) if n is None else n) + h + data

    def ent(dtype="U8", shape="[2]", offs="[0,2]", extra=""):
        return f'{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offs}{extra}}}'

    ok2 = '{"w":' + ent() + "}"
    bad = {
        "too_short": b"\x05\x00\x00",
        "header_too_big": struct.pack("<Q", 100_000_001) + b"{}",
        "header_past_eof": hdr("{}", n=1000),
        "not_utf8": hdr(b'{"w\xff":' + ent().encode() + b"}", b"xy"),
        "bom": hdr(b"\xef\xbb\xbf" + ok2.encode(), b"xy"),
        "bad_json": hdr('{"w":{"dtype":"U8",', b"xy"),
        "nul_padding": hdr(ok2 + "\0\0", b"xy"),
        "not_object": hdr("[1,2]"),
        "entry_not_object": hdr('{"w":1}'),
        "missing_dtype": hdr('{"w":{"shape":[2],"data_offsets":[0,2]}}', b"xy"),
        "missing_shape": hdr('{"w":{"dtype":"U8","data_offsets":[0,2]}}', b"xy"),
        "missing_offsets": hdr('{"w":{"dtype":"U8","shape":[2]}}', b"xy"),
        "extra_field": hdr('{"w":' + ent(extra=',"offsets":[0,2]') + "}", b"xy"),
        "dtype_not_string": hdr('{"w":' + ent().replace('"U8"', "8") + "}", b"xy"),
        "unknown_dtype": hdr('{"w":' + ent(dtype="X9") + "}", b"xy"),
        "lowercase_dtype": hdr('{"w":' + ent(dtype="u8") + "}", b"xy"),
        "sub_byte_dtype": hdr('{"w":' + ent(dtype="F4", offs="[0,1]") + "}", b"x"),
        "shape_not_array": hdr('{"w":' + ent(shape="2") + "}", b"xy"),
        "negative_dim": hdr('{"w":' + ent(shape="[-2]") + "}", b"xy"),
        "float_dim": hdr('{"w":' + ent(shape="[2.0]") + "}", b"xy"),
        "shape_overflow": hdr('{"w":' + ent(shape="[4294967296,4294967296,4294967296,0]") + "}", b"xy"),
        "offsets_three": hdr('{"w":' + ent(offs="[0,2,2]") + "}", b"xy"),
        "offsets_negative": hdr('{"w":' + ent(offs="[-1,1]") + "}", b"xy"),
        "offsets_float": hdr('{"w":' + ent(offs="[0,2.5]") + "}", b"xy"),
        "begin_after_end": hdr('{"w":' + ent(shape="[0]", offs="[2,0]") + "}", b"xy"),
        "size_mismatch": hdr('{"w":' + ent(shape="[3]") + "}", b"xy"),
        "overlap": hdr('{"w":' + ent() + ',"v":' + ent(offs="[1,3]") + "}", b"xyz"),
        "hole_at_start": hdr('{"w":' + ent(offs="[1,3]") + "}", b"xyz"),
        "hole_between": hdr('{"w":' + ent() + ',"v":' + ent(offs="[3,5]") + "}", b"xyzab"),
        "zero_size_hole": hdr('{"w":' + ent() + ',"v":' + ent(shape="[0]", offs="[5,5]") + "}", b"xy"),
        "trailing_bytes": hdr(ok2, b"xyz"),
        "truncated_data": hdr('{"w":' + ent(shape="[4]", offs="[0,4]") + "}", b"xy"),
        "duplicate_tensor": hdr('{"w":' + ent() + ',"w":' + ent() + "}", b"xy"),
        "duplicate_field": hdr('{"w":' + ent(extra=',"dtype":"U8"') + "}", b"xy"),
        "metadata_not_object": hdr('{"__metadata__":["pt"],"w":' + ent() + "}", b"xy"),
        "metadata_value_not_string": hdr('{"__metadata__":{"format":1},"w":' + ent() + "}", b"xy"),
        "metadata_duplicate_key": hdr('{"__metadata__":{"a":"1","a":"2"},"w":' + ent() + "}", b"xy"),
        "deep_nesting": hdr('{"__metadata__":{"a":' + "[" * 200 + "]" * 200 + '},"w":' + ent() + "}", b"xy"),
    }
    for name, data in bad.items():
        (OUT / "bad" / f"{name}.safetensors").write_bytes(data)
        try:
            deserialize(data)
            verdict = None
        except Exception as e:  # noqa: BLE001 — the reference's message, recorded as is
            verdict = str(e)
        manifest["bad"][name] = {"reference_error": verdict}

    (OUT / "manifest.json").write_text(compact_lists(json.dumps(manifest, indent=1, ensure_ascii=True)) + "\n")

    # Fuzzer seeds: small valid files and a selection of malformed ones.
    SEEDS.mkdir(parents=True, exist_ok=True)
    for f in SEEDS.glob("*"):
        f.unlink()
    for f in ("dtypes", "numpy", "names", "empty", "metadata_only", "order"):
        shutil.copy(OUT / f"{f}.safetensors", SEEDS / f"{f}.safetensors")
    shutil.copy(OUT / "sharded" / "model-00001-of-00002.safetensors", SEEDS / "shard1.safetensors")
    for f in ("overlap", "hole_between", "shape_overflow", "duplicate_tensor", "trailing_bytes", "truncated_data",
              "not_utf8", "metadata_value_not_string", "size_mismatch"):
        shutil.copy(OUT / "bad" / f"{f}.safetensors", SEEDS / f"bad_{f}.safetensors")

    accepted = [k for k, v in manifest["bad"].items() if v["reference_error"] is None]
    print(f"wrote {OUT} ({len(manifest['files'])} files, sharded, {len(bad)} malformed; reference accepts {accepted})")


if __name__ == "__main__":
    sys.exit(main())
