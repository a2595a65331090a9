#!/usr/bin/env python3
"""Writes the top-k logits fuzz seeds from the format description alone (include/distill/data/topk_logits.hpp),
so that test_data_topk checks our reader against an independent writer (Python's struct, little-endian).

    python3 tools/fuzz/make_topk_seeds.py [fuzz/corpus/topk_logits]

two_records.bin: K = 3, vocab 20; records "0" (2 positions) and "12" (1 position); header_only.bin: the header;
torn.bin: two_records.bin cut inside its second record.
"""
import math
import pathlib
import struct
import sys

K, VOCAB = 3, 20


def header():
    return b"DSTLTOPK" + struct.pack("<IIII", 2, K, VOCAB, 0)


def record(rid, rows, tokens):
    # rows: per position, K (id, prob) pairs sorted by prob, highest first
    ids = [i for row in rows for i, _ in row]
    lps = [math.log(p) for row in rows for _, p in row]
    tail = [math.log(1.0 - sum(p for _, p in row)) for row in rows]
    b = rid.encode()
    out = struct.pack("<IIII", 0x314B5054, len(b), len(rows), 0) + b
    out += struct.pack(f"<{len(ids)}i", *ids) + struct.pack(f"<{len(lps)}f", *lps)
    out += struct.pack(f"<{len(tail)}f", *tail) + struct.pack(f"<{len(tokens)}i", *tokens)
    return out


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/topk_logits")
    out.mkdir(parents=True, exist_ok=True)
    r0 = record("0", [[(4, 0.5), (7, 0.25), (1, 0.125)], [(19, 0.9), (0, 0.05), (3, 0.01)]], [4, 19])
    r1 = record("12", [[(2, 0.4), (5, 0.3), (6, 0.2)]], [5])
    two = header() + r0 + r1
    (out / "two_records.bin").write_bytes(two)
    (out / "header_only.bin").write_bytes(header())
    (out / "torn.bin").write_bytes(two[:-7])
    print(f"wrote {out}: two_records.bin ({len(two)} bytes), header_only.bin, torn.bin")


if __name__ == "__main__":
    main()
