"""Exports f32 -> bf16 / f16 rounding fixtures from the reference implementations.

bf16: ml_dtypes.bfloat16 (the NumPy bfloat16 used by JAX/TensorFlow); f16: numpy.float16 (IEEE binary16).
Both round to nearest, ties to even. Writes tests/golden/dtype_rounding.txt with one line per case:
    <f32 bits hex> <bf16 bits hex> <f16 bits hex>
For NaN inputs the exact NaN payload is implementation-defined; the C++ test only checks NaN-ness there.

Run: tools/.venv/bin/python tools/export_dtype_fixtures.py
"""
import pathlib
import numpy as np
import ml_dtypes

rng = np.random.default_rng(20261127)
special = [
    0x00000000, 0x80000000,  # +-0
    0x3F800000, 0xBF800000,  # +-1
    0x3F808000,  # 1 + 2^-8: exact tie for bf16 -> rounds to even (0x3F80)
    0x3F818000,  # tie -> rounds up to even (0x3F82)
    0x3F808001,  # just above the tie -> up
    0x3F807FFF,  # just below the tie -> down
    0x7F7FFFFF,  # max float: bf16 rounds to +inf
    0x7F7F0000,  # exactly representable bf16 max
    0x7F800000, 0xFF800000,  # +-inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF,  # NaNs (quiet, signalling)
    0x00000001, 0x00400000, 0x807FFFFF,  # subnormals
    0x477FE000,  # 65504 (f16 max)
    0x477FF000,  # 65520: f16 tie between max and overflow -> inf
    0x477FEFFF,  # just below: f16 max
    0x33800000,  # 2^-24: smallest f16 subnormal
    0x33000000,  # 2^-25: f16 tie with 0 -> 0 (even)
    0x33000001,  # just above -> smallest subnormal
    0x3A800100,  # f16 rounding tie region
    0x3DCCCCCD,  # 0.1
    0x40490FDB,  # pi
]
rand_bits = rng.integers(0, 2**32, size=400, dtype=np.uint64).astype(np.uint32)
# Also many values in the typical activation range, including exact ties for both formats.
normal = rng.standard_normal(200).astype(np.float32).view(np.uint32)
ties_bf16 = (normal & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
ties_f16 = (rng.standard_normal(100).astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)) | np.uint32(0x1000)
bits = np.concatenate([np.array(special, dtype=np.uint32), rand_bits, normal, ties_bf16, ties_f16])

f32 = bits.view(np.float32)
with np.errstate(over="ignore"):
    bf = f32.astype(ml_dtypes.bfloat16).view(np.uint16)
    hf = f32.astype(np.float16).view(np.uint16)

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "dtype_rounding.txt"
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "w") as f:
    f.write(f"# f32 -> bf16 (ml_dtypes {ml_dtypes.__version__}) and f16 (numpy {np.__version__}); "
            "made by tools/export_dtype_fixtures.py\n")
    for a, b, c in zip(bits, bf, hf):
        f.write(f"{int(a):08x} {int(b):04x} {int(c):04x}\n")
print(f"wrote {len(bits)} cases to {out}")
