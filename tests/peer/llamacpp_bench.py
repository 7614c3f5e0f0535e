#!/usr/bin/env python3
"""Throughput of llama.cpp on a GGUF model, measured the way llama.cpp measures it.

Primary path: llama.cpp's own `llama-batched-bench` (built by
tests/peer/build_llamacpp_tools.sh into --tools-dir):

    llama-batched-bench -m MODEL -c CTX -b 2048 -ub 512 -npp NPP -ntg NTG -npl NPL -t THREADS

Each of the B (= npl) sequences gets its own NPP-token random prompt (not shared), decoded
in n_batch chunks (prefill: S_PP = B*NPP / T_PP), then NTG steps each decoding one token
for every sequence (decode: S_TG = B*NTG / T_TG).

Fallback (no tools dir, or --backend python): the same procedure re-implemented with
llama-cpp-python's low-level API (llama_batch with several seq_ids).

Prints one JSON object on stdout:
  {"backend", "llama_cpp_python_version", "models": [{"model", "file_type", "results":
    [{"pl", "pp", "tg", "t_pp", "s_pp", "t_tg", "s_tg", "t", "s"}],
    "prefill_tps": S_PP at B=1, "decode_tps": {"1": S_TG at B=1, "8": ..., "32": ...}}]}

Usage:
  python3 tests/peer/llamacpp_bench.py --model M.gguf --threads 2 --npp 512 --ntg 128 \
      --npl 1,8,32 --tools-dir ../peer-bin
  (--model may be given several times; --make-f32/--make-f16 also bench F32/F16 copies
   made with llama.cpp's quantizer, cached in --cache-dir)
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time


def ints(s):
    return [int(x) for x in str(s).split(",") if x.strip()]


def file_type_name(path):
    try:
        from gguf import GGUFReader  # optional

        r = GGUFReader(path)
        ft = int(r.fields["general.file_type"].contents())
        names = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 32: "BF16"}
        return names.get(ft, str(ft))
    except Exception:
        return None


def run_batched_bench(exe, model, a):
    cmd = [
        exe, "-m", model, "-c", str(a.ctx), "-b", str(a.batch), "-ub", str(a.ubatch),
        "-npp", a.npp, "-ntg", a.ntg, "-npl", a.npl, "-t", str(a.threads), "-tb", str(a.threads),
        "-fa", a.flash_attn, "--output-format", "jsonl",
    ]
    print("[bench] " + " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"llama-batched-bench failed ({p.returncode})")
    rows = []
    for line in (p.stdout + "\n" + p.stderr).splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            d = json.loads(line)
            rows.append(
                {
                    "pl": d["pl"], "pp": d["pp"], "tg": d["tg"], "n_kv": d["n_kv"],
                    "t_pp": d["t_pp"], "s_pp": d["speed_pp"],
                    "t_tg": d["t_tg"], "s_tg": d["speed_tg"],
                    "t": d["t"], "s": d["speed"],
                    "flash_attn": d.get("flash_attn"), "n_threads": d.get("n_threads"),
                }
            )
        else:
            # markdown table fallback: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
            m = re.match(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|" + r"\s*([\d.]+)\s*\|" * 6 + "$", line)
            if m:
                v = m.groups()
                rows.append(
                    {
                        "pl": int(v[2]), "pp": int(v[0]), "tg": int(v[1]), "n_kv": int(v[3]),
                        "t_pp": float(v[4]), "s_pp": float(v[5]), "t_tg": float(v[6]),
                        "s_tg": float(v[7]), "t": float(v[8]), "s": float(v[9]),
                    }
                )
    if not rows:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit("could not parse llama-batched-bench output")
    return rows


def run_python(model, a):
    import random

    import llama_cpp as lc

    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mdl = lc.llama_model_load_from_file(model.encode(), mp)
    if not mdl:
        raise SystemExit("failed to load model")
    npl = ints(a.npl)
    cp = lc.llama_context_default_params()
    cp.n_ctx = a.ctx
    cp.n_batch = a.batch
    cp.n_ubatch = a.ubatch
    cp.n_seq_max = max(npl)
    cp.n_threads = a.threads
    cp.n_threads_batch = a.threads
    cp.flash_attn_type = {
        "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }.get(a.flash_attn, getattr(lc, "LLAMA_FLASH_ATTN_TYPE_AUTO", -1))
    cp.no_perf = True
    ctx = lc.llama_init_from_model(mdl, cp)
    if not ctx:
        raise SystemExit("failed to create context")
    vocab = lc.llama_model_get_vocab(mdl)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    mem = lc.llama_get_memory(ctx)
    rnd = random.Random(0)

    def decode(entries, sync):
        # entries: list of (token, pos, seq, want_logits); split into n_batch chunks
        for i in range(0, len(entries), a.batch):
            chunk = entries[i : i + a.batch]
            b = lc.llama_batch_init(len(chunk), 0, 1)
            try:
                for k, (tok, pos, seq, lg) in enumerate(chunk):
                    b.token[k] = tok
                    b.pos[k] = pos
                    b.n_seq_id[k] = 1
                    b.seq_id[k][0] = seq
                    b.logits[k] = 1 if lg else 0
                b.n_tokens = len(chunk)
                rc = lc.llama_decode(ctx, b)
                if rc != 0:
                    raise SystemExit(f"llama_decode failed: {rc}")
                if sync:
                    lc.llama_synchronize(ctx)
            finally:
                lc.llama_batch_free(b)

    decode([(rnd.randrange(n_vocab), i, 0, False) for i in range(16)], True)  # warm up
    rows = []
    for pp in ints(a.npp):
        for tg in ints(a.ntg):
            for pl in npl:
                if pl * (pp + tg) > a.ctx:
                    continue
                entries = [(rnd.randrange(n_vocab), i, j, i == pp - 1) for j in range(pl) for i in range(pp)]
                lc.llama_memory_clear(mem, False)
                t0 = time.perf_counter()
                decode(entries, False)
                lc.llama_synchronize(ctx)
                t1 = time.perf_counter()
                for i in range(tg):
                    decode([(rnd.randrange(n_vocab), pp + i, j, True) for j in range(pl)], True)
                t2 = time.perf_counter()
                t_pp, t_tg = t1 - t0, t2 - t1
                rows.append(
                    {
                        "pl": pl, "pp": pp, "tg": tg, "n_kv": pl * (pp + tg),
                        "t_pp": t_pp, "s_pp": pl * pp / t_pp, "t_tg": t_tg, "s_tg": pl * tg / t_tg,
                        "t": t_pp + t_tg, "s": (pl * pp + pl * tg) / (t_pp + t_tg),
                    }
                )
                print(f"[bench] python pl={pl} pp={pp} tg={tg}: S_PP {rows[-1]['s_pp']:.1f} S_TG {rows[-1]['s_tg']:.1f}", file=sys.stderr)
    lc.llama_free(ctx)
    lc.llama_model_free(mdl)
    return rows


def make_copy(src, dst, ftype, tools_dir, threads):
    if os.path.exists(dst):
        return dst
    tmp = dst + ".tmp"
    q = os.path.join(tools_dir, "llama-quantize") if tools_dir else None
    if q and os.access(q, os.X_OK):
        subprocess.run([q, "--allow-requantize", src, tmp, ftype, str(threads)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        import llama_cpp as lc

        p = lc.llama_model_quantize_default_params()
        p.ftype = {"F32": lc.LLAMA_FTYPE_ALL_F32, "F16": lc.LLAMA_FTYPE_MOSTLY_F16}[ftype]
        p.allow_requantize = True
        p.nthread = threads
        if lc.llama_model_quantize(src.encode(), tmp.encode(), p) != 0:
            raise SystemExit("quantize failed")
    os.replace(tmp, dst)
    return dst


def summarize(rows, npp):
    pp0 = ints(npp)[0]
    b1 = [r for r in rows if r["pl"] == 1 and r["pp"] == pp0]
    return {
        "prefill_tps": b1[0]["s_pp"] if b1 else None,
        "decode_tps": {str(r["pl"]): r["s_tg"] for r in rows if r["pp"] == pp0},
        "total_tps": {str(r["pl"]): r["s"] for r in rows if r["pp"] == pp0},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--npp", default="512")
    ap.add_argument("--ntg", default="128")
    ap.add_argument("--npl", default="1,8,32")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"],
                    help="llama.cpp's -fa (default auto, llama.cpp's default)")
    ap.add_argument("--tools-dir", default=os.environ.get("LLAMACPP_TOOLS_DIR"))
    ap.add_argument("--backend", choices=["auto", "tools", "python"], default="auto")
    ap.add_argument("--make-f32", action="store_true", help="also bench an F32 copy of the first model")
    ap.add_argument("--make-f16", action="store_true", help="also bench an F16 copy of the first model")
    ap.add_argument("--cache-dir", default=None, help="where F32/F16 copies go (default: next to the model)")
    a = ap.parse_args()

    exe = os.path.join(a.tools_dir, "llama-batched-bench") if a.tools_dir else shutil.which("llama-batched-bench")
    have_tool = bool(exe) and os.access(exe, os.X_OK)
    backend = a.backend
    if backend == "auto":
        backend = "tools" if have_tool else "python"
    if backend == "tools" and not have_tool:
        raise SystemExit("llama-batched-bench not found (give --tools-dir)")

    models = [os.path.abspath(m) for m in a.model]
    base = models[0]
    cache = a.cache_dir or os.path.dirname(base)
    stem = os.path.basename(base).rsplit(".", 2)[0]
    for flag, ft in ((a.make_f32, "F32"), (a.make_f16, "F16")):
        if flag:
            models.append(make_copy(base, os.path.join(cache, f"{stem}.{ft}.gguf"), ft, a.tools_dir, a.threads))

    version = None
    try:
        import llama_cpp

        version = llama_cpp.__version__
    except Exception:
        pass

    out = {
        "backend": "llama-batched-bench" if backend == "tools" else "llama-cpp-python low-level API",
        "tools_dir": a.tools_dir if backend == "tools" else None,
        "llama_cpp_python_version": version,
        "threads": a.threads, "npp": ints(a.npp), "ntg": ints(a.ntg), "npl": ints(a.npl),
        "ctx": a.ctx, "batch": a.batch, "ubatch": a.ubatch, "flash_attn": a.flash_attn,
        "host": {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "models": [],
    }
    for m in models:
        t0 = time.time()
        rows = run_batched_bench(exe, m, a) if backend == "tools" else run_python(m, a)
        entry = {"model": m, "file_type": file_type_name(m), "results": rows, "wall_s": time.time() - t0}
        entry.update(summarize(rows, a.npp))
        out["models"].append(entry)
        print(f"[bench] {os.path.basename(m)}: prefill {entry['prefill_tps']} t/s, decode {entry['decode_tps']}", file=sys.stderr)
    out["host"]["loadavg_end"] = os.getloadavg()
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
