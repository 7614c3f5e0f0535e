#!/usr/bin/env python3
"""The echo stage written plainly with pyarrow and multiprocessing: the peer that
`automaldesc bench engine` compares the distributed runtime with.

Every row group of every Parquet file under --input is one work item; a Pool of --workers
processes reads each item, keeps every row unchanged (the echo), and writes it to its own
Parquet file under --output (zstd, as the runtime writes). Prints one JSON object:
  {"workers", "scripts", "files", "seconds", "scripts_per_s"}

Usage: python3 tests/peer/echo_dataflow.py --input DIR --output DIR --workers 4
"""

import argparse
import json
import multiprocessing
import os
import shutil
import time

import pyarrow.parquet as pq


def echo(item):
    path, group, out_dir = item
    table = pq.ParquetFile(path).read_row_group(group)
    name = "%s-%05d.parquet" % (os.path.basename(path)[: -len(".parquet")], group)
    pq.write_table(table, os.path.join(out_dir, name), compression="zstd")
    return table.num_rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(args.input)
        for f in names
        if f.endswith(".parquet")
    )
    if not files:
        raise SystemExit("no Parquet files under %s" % args.input)
    shutil.rmtree(args.output, ignore_errors=True)
    os.makedirs(args.output)

    started = time.perf_counter()
    items = [
        (f, g, args.output)
        for f in files
        for g in range(pq.ParquetFile(f).metadata.num_row_groups)
    ]
    with multiprocessing.Pool(args.workers) as pool:
        rows = sum(pool.imap_unordered(echo, items))
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "workers": args.workers,
                "scripts": rows,
                "files": len(items),
                "seconds": seconds,
                "scripts_per_s": rows / seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
