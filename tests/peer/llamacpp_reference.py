#!/usr/bin/env python3
"""Greedy-decoding conformance reference produced by llama.cpp (via llama-cpp-python).

For every conversation in --prompts this script
  1. renders it with the model's own chat template (GGUF `tokenizer.chat_template`,
     add_generation_prompt=True),
  2. tokenizes the rendered text with llama.cpp (special tokens parsed; BOS only if the
     GGUF asks for it via `tokenizer.ggml.add_bos_token`),
  3. greedily decodes --n-predict tokens with llama.cpp's low-level eval loop (argmax over
     the raw logits, no sampler, no repeat penalty, never stopping at EOS),
and writes a JSON file with the prompt ids, each step's chosen id, its log-softmax
log-probability, the top-5 ids with log-probs, the top-1/top-2 gap in nats, and the
top-50 at the first decode step.

By default the decode runs on an F32 copy of the model made with llama.cpp's own
quantizer (`llama_model_quantize`, ftype ALL_F32, allow_requantize): llama.cpp's Q4_1
matmul kernels quantize the activations to 8 bits (Q8_1), so a runtime that dequantizes
Q4_1 weights to f32 and multiplies in f32 must be compared against llama.cpp running the
F32 file. `--no-f32` decodes on the given file as is (to show how far Q4_1 drifts).

`--compare A.json B.json` reports, per prompt, the first step at which two reference
files disagree.

Usage:
  python3 tests/peer/llamacpp_reference.py \
      --model /path/SmolLM2-135M-Instruct.Q4_1.gguf \
      --prompts tests/data/conformance_prompts.json \
      --out tests/data/llamacpp_reference_f32.json
  python3 tests/peer/llamacpp_reference.py --model ... --no-f32 --out /tmp/ref_q4_1.json
  python3 tests/peer/llamacpp_reference.py --compare a.json b.json
"""

import argparse
import hashlib
import json
import os
import sys
import time


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_metadata(llm):
    """Model metadata as llama.cpp reports it (dict of str -> str)."""
    return dict(llm.metadata)


def render_chat(template_src, messages, bos_token, eos_token):
    """Render like HF transformers' apply_chat_template (and llama-cpp-python's
    Jinja2ChatFormatter): trim_blocks + lstrip_blocks, add_generation_prompt=True."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True
    )

    def raise_exception(message):
        raise ValueError(message)

    tmpl = env.from_string(template_src)
    return tmpl.render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
        raise_exception=raise_exception,
    )


def make_f32(llama_cpp, src, dst, nthread):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32  # 0
    params.allow_requantize = True
    params.nthread = nthread
    tmp = dst + ".tmp"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc}")
    os.replace(tmp, dst)


def log_softmax(np, logits):
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def top_k(np, lp, k):
    # stable ordering: by log-prob descending, then by id ascending
    idx = np.argpartition(-lp, k)[: k + 8] if k + 8 < lp.shape[0] else np.arange(lp.shape[0])
    idx = sorted(idx.tolist(), key=lambda i: (-lp[i], i))[:k]
    return [[int(i), float(lp[i])] for i in idx]


def piece(llm, tok):
    return llm.detokenize([tok], special=True).decode("utf-8", errors="replace")


def run(args):
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    model = os.path.abspath(args.model)
    out = os.path.abspath(args.out)
    model_sha = sha256_file(model)

    if args.no_f32:
        run_model = model
        f32_path = None
    else:
        f32_path = os.path.abspath(
            args.f32 or os.path.join(os.path.dirname(out), os.path.basename(model).rsplit(".", 2)[0] + ".F32.gguf")
        )
        stamp = f32_path + ".source-sha256"
        have = os.path.exists(f32_path) and os.path.exists(stamp) and open(stamp).read().strip() == model_sha
        if not have:
            print(f"[ref] quantizing {model} -> {f32_path} (F32)", file=sys.stderr)
            t0 = time.time()
            make_f32(llama_cpp, model, f32_path, args.threads)
            with open(stamp, "w") as f:
                f.write(model_sha + "\n")
            print(f"[ref] F32 written in {time.time() - t0:.1f}s", file=sys.stderr)
        run_model = f32_path

    with open(args.prompts) as f:
        prompt_doc = json.load(f)
    prompts = prompt_doc["prompts"] if isinstance(prompt_doc, dict) else prompt_doc

    llm = Llama(
        model_path=run_model,
        n_ctx=args.n_ctx,
        n_batch=args.n_batch,
        n_ubatch=args.n_batch,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=True,
        flash_attn=False,
        seed=0,
        verbose=args.verbose,
    )
    meta = gguf_metadata(llm)
    template = meta["tokenizer.chat_template"]
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
    bos_id = llm.token_bos()
    eos_id = llm.token_eos()
    bos_tok = piece(llm, bos_id) if bos_id >= 0 else ""
    eos_tok = piece(llm, eos_id) if eos_id >= 0 else ""
    n_vocab = llm.n_vocab()
    # end-of-generation ids: EOS plus any end-of-turn marker the vocab knows
    eog_ids = {eos_id}
    for marker in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        t = llm.tokenize(marker.encode(), add_bos=False, special=True)
        if len(t) == 1:
            eog_ids.add(t[0])

    results = []
    for p in prompts:
        t0 = time.time()
        rendered = render_chat(template, p["messages"], bos_tok, eos_tok)
        ids = llm.tokenize(rendered.encode("utf-8"), add_bos=add_bos, special=True)
        if len(ids) + args.n_predict > args.n_ctx:
            raise SystemExit(f"prompt {p['name']} too long for n_ctx={args.n_ctx}")
        llm.reset()
        llm.eval(ids)
        steps = []
        gen = []
        first_top50 = None
        eos_step = None
        for step in range(args.n_predict):
            logits = np.array(llm.scores[llm.n_tokens - 1, :n_vocab], copy=True)
            lp = log_softmax(np, logits)
            tok = int(np.argmax(logits))  # first index of the max, like llama.cpp's greedy sampler
            top = top_k(np, lp, max(5, args.top_k))
            if step == 0:
                first_top50 = top_k(np, lp, 50)
            gap = top[0][1] - top[1][1]
            steps.append(
                {
                    "id": tok,
                    "piece": piece(llm, tok),
                    "logprob": float(lp[tok]),
                    "logit": float(logits[tok]),
                    "top": top[: max(5, args.top_k)],
                    "gap": float(gap),
                }
            )
            gen.append(tok)
            if eos_step is None and tok in eog_ids:
                eos_step = step
            if step + 1 < args.n_predict:
                llm.eval([tok])
        text = llm.detokenize(gen, special=True).decode("utf-8", errors="replace")
        text_to_eos = (
            llm.detokenize(gen[:eos_step], special=True).decode("utf-8", errors="replace")
            if eos_step is not None
            else text
        )
        results.append(
            {
                "name": p["name"],
                "messages": p["messages"],
                "rendered": rendered,
                "prompt_ids": [int(i) for i in ids],
                "n_prompt": len(ids),
                "generated_ids": gen,
                "eos_step": eos_step,
                "first_step_top50": first_top50,
                "steps": steps,
                "min_gap": float(min(s["gap"] for s in steps)),
                "text": text,
                "text_to_eos": text_to_eos,
            }
        )
        print(
            f"[ref] {p['name']}: {len(ids)} prompt tokens, {len(gen)} generated "
            f"(eos at {eos_step}), min gap {results[-1]['min_gap']:.4f} nats, "
            f"{time.time() - t0:.1f}s: {text_to_eos[:80]!r}",
            file=sys.stderr,
        )

    doc = {
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_version": (args.llama_cpp_commit if llama_cpp.__version__ == "0.3.36"
                              else f"vendored by llama-cpp-python {llama_cpp.__version__}"),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        "model_path": model,
        "model_sha256": model_sha,
        "f32_model_path": f32_path,
        "f32_model_sha256": sha256_file(f32_path) if f32_path else None,
        "decoded_model": "F32 copy (llama_model_quantize ALL_F32)" if f32_path else "as given",
        "config": {
            "n_predict": args.n_predict,
            "n_ctx": args.n_ctx,
            "n_batch": args.n_batch,
            "n_threads": args.threads,
            "flash_attn": False,
            "add_bos": add_bos,
            "bos_id": bos_id,
            "eos_id": eos_id,
            "eog_ids": sorted(eog_ids),
            "n_vocab": n_vocab,
            "sampling": "greedy argmax over raw logits (low-level eval loop, no sampler); does not stop at EOS",
            "logprob": "log-softmax over the full vocabulary, float64",
            "gap": "top-1 minus top-2 log-prob (nats)",
        },
        "chat_template": template,
        "prompts": results,
    }
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"[ref] wrote {out}", file=sys.stderr)


def compare(a_path, b_path):
    a = json.load(open(a_path))
    b = json.load(open(b_path))
    bp = {p["name"]: p for p in b["prompts"]}
    report = []
    for pa in a["prompts"]:
        pb = bp.get(pa["name"])
        if pb is None:
            continue
        same_prompt = pa["prompt_ids"] == pb["prompt_ids"]
        ga, gb = pa["generated_ids"], pb["generated_ids"]
        first = next((i for i, (x, y) in enumerate(zip(ga, gb)) if x != y), None)
        report.append(
            {
                "name": pa["name"],
                "same_prompt_ids": same_prompt,
                "n_compared": min(len(ga), len(gb)),
                "first_divergence": first,
                "a_gap_at_divergence": pa["steps"][first]["gap"] if first is not None else None,
                "b_gap_at_divergence": pb["steps"][first]["gap"] if first is not None else None,
            }
        )
    print(json.dumps(report, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--prompts", default=os.path.join(os.path.dirname(__file__), "..", "data", "conformance_prompts.json"))
    ap.add_argument("--n-predict", type=int, default=48)
    ap.add_argument("--out")
    ap.add_argument("--f32", help="where to cache the F32 copy (default: next to --out)")
    ap.add_argument("--no-f32", action="store_true", help="decode on --model as given")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=5, help="top-k recorded per step (>=5)")
    ap.add_argument("--llama-cpp-commit", default="ggml-org/llama.cpp@0c1e57098 (vendored by llama-cpp-python 0.3.36)",
                    help="recorded as llama_cpp_version")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if not args.model or not args.out:
        ap.error("--model and --out are required")
    run(args)


if __name__ == "__main__":
    main()
