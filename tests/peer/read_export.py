#!/usr/bin/env python3
"""Reads a dataset written by `automaldesc export DIR` the way its users would, and prints
what each reader saw as one JSON object: pyarrow (every split's rows, columns and types,
sha256s, label probabilities), DuckDB and Hugging Face `datasets` (rows per split through
the card's configs, which leave empty splits out), and the checksum list checked with hashlib. A reader that cannot be
imported is listed under "missing"; the Rust test decides whether that is a failure.

usage: read_export.py DIR parquet|jsonl
"""

import glob
import hashlib
import json
import os
import sys
import tempfile

SPLITS = {"train": "data/train-*", "seed": "data/seed-*", "rejected": "rejected/rejected-*"}


def with_pyarrow(root, ext):
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    out = {}
    for split, pattern in SPLITS.items():
        files = sorted(glob.glob(os.path.join(root, f"{pattern}.{ext}")))
        if not files:
            continue
        if ext == "parquet":
            tables = [pq.read_table(f) for f in files]
        else:
            tables = [pj.read_json(f) for f in files if os.path.getsize(f) > 0]
        t = pa.concat_tables(tables, promote_options="permissive") if tables else None
        info = {"files": len(files), "rows": 0 if t is None else t.num_rows}
        if t is not None:
            info["schema"] = {f.name: str(f.type) for f in t.schema}
            rows = t.to_pylist()
            info["sha256"] = sorted(r["sha256"] for r in rows)
            if split != "rejected":
                probs = [r["label_prob"] for r in rows]
                known = [p for p in probs if p is not None]
                info["label_prob_nulls"] = len(probs) - len(known)
                info["label_prob_min"] = min(known) if known else None
                info["iterations"] = sorted({r["iteration"] for r in rows})
                counts = {}
                for r in rows:
                    key = f'{r["language"]}/{r["label"]}'
                    counts[key] = counts.get(key, 0) + 1
                info["counts"] = counts
            else:
                info["reasons"] = sorted({r["reason"] for r in rows})
        out[split] = info
    return out


def with_duckdb(root, ext):
    import duckdb

    read = "read_parquet" if ext == "parquet" else "read_json_auto"
    out = {}
    for split, pattern in SPLITS.items():
        path = os.path.join(root, f"{pattern}.{ext}")
        if not glob.glob(path):
            continue
        if ext == "jsonl" and all(os.path.getsize(f) == 0 for f in glob.glob(path)):
            out[split] = 0
            continue
        ((n,),) = duckdb.sql(f"SELECT count(*) FROM {read}('{path}')").fetchall()
        out[split] = n
    return out


def card_configs(root):
    """The config names the card's YAML header declares (empty splits are left out)."""
    with open(os.path.join(root, "README.md")) as f:
        header = f.read().split("\n---\n", 1)[0]
    configs = header.split("\nconfigs:\n", 1)[1]
    return [line.split(": ", 1)[1] for line in configs.splitlines() if line.startswith("- config_name: ")]


def with_datasets(root):
    with tempfile.TemporaryDirectory() as cache:
        os.environ.update(HF_HOME=cache, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
        import datasets

        datasets.disable_progress_bars()
        configs = card_configs(root)
        out = {"configs": configs}
        if "default" in configs:
            default = datasets.load_dataset(root, "default", cache_dir=cache)
            out.update({s: d.num_rows for s, d in default.items()})
            first = next(iter(default.values()))
            out["features"] = {k: str(v) for k, v in first.features.items()}
        if "rejected" in configs:
            out["rejected"] = datasets.load_dataset(root, "rejected", cache_dir=cache)["train"].num_rows
        return out


def checksums(root):
    listed = {}
    with open(os.path.join(root, "SHA256SUMS")) as f:
        for line in f:
            digest, path = line.rstrip("\n").split("  ", 1)
            listed[path] = digest
    present = sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, _, names in os.walk(root)
        for n in names
        if n != "SHA256SUMS"
    )
    bad = [p for p in present if p not in listed]
    for path, digest in listed.items():
        with open(os.path.join(root, path), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digest:
                bad.append(path)
    return {"listed": sorted(listed), "present": present, "bad": bad}


def main():
    root, ext = sys.argv[1], sys.argv[2]
    out = {"missing": [], "checksums": checksums(root)}
    for name, read in [
        ("pyarrow", lambda: with_pyarrow(root, ext)),
        ("duckdb", lambda: with_duckdb(root, ext)),
        ("datasets", lambda: with_datasets(root)),
    ]:
        try:
            out[name] = read()
        except ImportError as e:
            out["missing"].append(f"{name} ({e})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
