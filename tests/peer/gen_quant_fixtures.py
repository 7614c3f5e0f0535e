#!/usr/bin/env python3
"""Generate dequantisation fixtures for worker/tests/gguf_quant.rs.

Uses the independent `gguf` package from PyPI (pip install gguf numpy) as the
reference: for every ggml type it writes `<TYPE>.bin` (raw stored bytes) and
`<TYPE>.f32` (expected little-endian f32 values from gguf.quants.dequantize),
plus `manifest.json` listing type ids and element counts.

Types with a Python quantizer get random Gaussian data quantized; k-quants
(no quantizer in gguf-py) get random raw blocks whose f16 scale fields are set
to finite values, so every bit pattern of the packed quants is exercised.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import quants

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "worker", "tests", "data", "quant")
N = 1024  # elements per type: 4 super-blocks of 256, 32 legacy blocks
T = gguf.GGMLQuantizationType

# byte offsets of f16 scale fields within one block of each k-quant
K_SCALE_FIELDS = {
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}
QUANTIZED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16"]


def main():
    rng = np.random.default_rng(20261124)
    os.makedirs(OUT, exist_ok=True)
    manifest = {}
    for name in QUANTIZED + ["F16"] + list(K_SCALE_FIELDS):
        qt = getattr(T, name)
        if name == "F16":
            raw = (rng.standard_normal(N) * 3).astype("<f2").view(np.uint8)
        elif name in QUANTIZED:
            x = (rng.standard_normal(N) * rng.uniform(0.01, 2.0)).astype(np.float32)
            raw = quants.quantize(x, qt).reshape(-1)
        else:
            block, size = gguf.GGML_QUANT_SIZES[qt]
            nb = N // block
            raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
            for off in K_SCALE_FIELDS[name]:
                scales = rng.uniform(-0.05, 0.05, size=nb).astype("<f2")
                raw[:, off:off + 2] = scales.view(np.uint8).reshape(nb, 2)
            raw = raw.reshape(-1)
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        deq = quants.dequantize(raw, qt).astype("<f4").reshape(-1)
        assert deq.size == N, (name, deq.size)
        assert np.all(np.isfinite(deq)), name
        raw.tofile(os.path.join(OUT, f"{name}.bin"))
        deq.tofile(os.path.join(OUT, f"{name}.f32"))
        manifest[name] = {"type_id": int(qt), "n_elements": N}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(manifest)} fixtures to {OUT} (gguf {gguf.__version__ if hasattr(gguf, '__version__') else '?'})")


if __name__ == "__main__":
    main()
