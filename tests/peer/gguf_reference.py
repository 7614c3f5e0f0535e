#!/usr/bin/env python3
"""Reference dequantisation of tensors of a real GGUF file, via the `gguf` package.

usage: gguf_reference.py MODEL.gguf OUT.json TENSOR [TENSOR ...]

For each tensor writes: ggml type name, dims (GGUF order), the first 4096
dequantised values, and the sum and sum of absolute values over the whole
tensor (accumulated in float64). Exit code 3 if the gguf package is missing.
"""
import json
import sys

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:
    print(f"python gguf package unavailable: {e}", file=sys.stderr)
    sys.exit(3)

FIRST = 4096


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    path, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    result = {}
    for name in names:
        t = by_name[name]
        raw = np.asarray(t.data)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            values = raw.astype(np.float32).reshape(-1)
        else:
            values = quants.dequantize(raw.view(np.uint8), t.tensor_type).astype(np.float32).reshape(-1)
        as64 = values.astype(np.float64)
        result[name] = {
            "dtype": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "n_elements": int(values.size),
            "first": [float(v) for v in values[:FIRST]],
            "sum": float(as64.sum()),
            "abs_sum": float(np.abs(as64).sum()),
        }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
