#!/usr/bin/env python3
"""The training recipe of `automaldesc train` run in PyTorch + PEFT on the very same tokens,
so that a recipe that does not learn can be told apart from a trainer that does not.

Input: the JSON lines `automaldesc train --dump-examples FILE --dump-only` writes (one
example per line: split train/val/eval, prompt and target token ids, the role of each
target token, the label). The objective is ours: summary tokens (role "Free") by
cross-entropy over the vocabulary with weight 1; the language's first token over the five
language candidates with --language-weight; the label digit over the two label candidates
with --label-weight, scaled per class by inverse class frequency (unless --no-balance);
forced tokens not at all; the step's loss is the weighted sum divided by the step's total
weight. LoRA on the seven projections of the chosen blocks, AdamW, linear warmup and decay.

After every epoch the val and eval splits are scored label-only (the language given, as the
reference says): P(malicious) from the two label logits; accuracy at 0.5, balanced accuracy,
AUC, label NLL. One JSON object per epoch on stdout.

Usage: peft_recipe.py --model HF_DIR --examples FILE --label-ids 15,33 --language-ids a,b,c,d,e
         [--rank 8 --alpha 16 --dropout 0.05 --lr 3e-4 --epochs 3 --examples-per-step 8
          --label-weight 10 --language-weight 1 --layers all|top:K --threads 2 --seed 0]
"""

import argparse
import json
import math
import random
import time

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM


def auc(ps, ys):
    pos = [p for p, y in zip(ps, ys) if y == 1]
    neg = [p for p, y in zip(ps, ys) if y == 0]
    if not pos or not neg:
        return None
    wins = 0.0
    for a in pos:
        for b in neg:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (len(pos) * len(neg))


def scores(ps, ys):
    n = len(ys)
    acc = sum((p >= 0.5) == (y == 1) for p, y in zip(ps, ys)) / n
    rec = []
    for c in (0, 1):
        of = [(p, y) for p, y in zip(ps, ys) if y == c]
        if of:
            rec.append(sum((p >= 0.5) == (c == 1) for p, _ in of) / len(of))
    nll = -sum(math.log(max(p if y == 1 else 1 - p, 1e-12)) for p, y in zip(ps, ys)) / n
    return {
        "n": n,
        "label_accuracy": acc,
        "balanced_accuracy": sum(rec) / len(rec) if len(rec) == 2 else None,
        "auc": auc(ps, ys),
        "label_nll": nll,
        "malicious_share_predicted": sum(p >= 0.5 for p in ps) / n,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--label-ids", required=True)
    ap.add_argument("--language-ids", required=True)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.001)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--examples-per-step", type=int, default=8)
    ap.add_argument("--label-weight", type=float, default=10.0)
    ap.add_argument("--language-weight", type=float, default=1.0)
    ap.add_argument("--no-balance", action="store_true")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    label_ids = [int(x) for x in args.label_ids.split(",")]
    language_ids = [int(x) for x in args.language_ids.split(",")]
    sets = {"train": [], "val": [], "eval": []}
    with open(args.examples) as f:
        for line in f:
            e = json.loads(line)
            sets[e["split"]].append(e)
    base = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    n_layers = base.config.num_hidden_layers
    layers = None
    if args.layers.startswith("top:"):
        k = int(args.layers[4:])
        layers = list(range(n_layers - k, n_layers))
    elif args.layers != "all":
        layers = [int(x) for x in args.layers.split(",")]
    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    train = sets["train"]
    counts = [sum(1 for e in train if e["label"] == c) for c in (0, 1)]
    n = counts[0] + counts[1]
    label_w = [
        args.label_weight * (n / (2 * counts[c]) if not args.no_balance and counts[c] else 1.0)
        for c in (0, 1)
    ]
    per_epoch = math.ceil(len(train) / args.examples_per_step)
    total = per_epoch * args.epochs
    warm = max(1, math.ceil(total * args.warmup))

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        return args.lr * max(0.0, min(1.0, (total - step) / max(1, total - warm)))

    inner = model.base_model.model  # LlamaForCausalLM with the LoRA layers in place

    def rows_logits(seq, rows):
        """Logits of the listed positions only: the decoder once, the head on those rows."""
        h = inner.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
        return inner.lm_head(h[rows])

    def example_terms(e):
        """Weighted NLL sum and weight of one example."""
        seq = e["prompt"] + e["target"]
        p0 = len(e["prompt"]) - 1
        scored = [k for k, r in enumerate(e["roles"]) if r != "Forced"]
        logits = rows_logits(seq[:-1], [p0 + k for k in scored])
        total_l, total_w = 0.0, 0.0
        for row, k in zip(logits, scored):
            tok, role = e["target"][k], e["roles"][k]
            if role == "Free":
                total_l = total_l - torch.log_softmax(row, -1)[tok]
                total_w += 1.0
            elif "Language" in role:
                lp = torch.log_softmax(row[language_ids], -1)
                total_l = total_l - args.language_weight * lp[role["Language"]]
                total_w += args.language_weight
            elif "Label" in role:
                c = role["Label"]
                lp = torch.log_softmax(row[label_ids], -1)
                total_l = total_l - label_w[c] * lp[c]
                total_w += label_w[c]
        return total_l, total_w

    def p_malicious(e):
        seq = e["prompt"] + e["target"]
        k = next(i for i, r in enumerate(e["roles"]) if isinstance(r, dict) and "Label" in r)
        with torch.no_grad():
            row = rows_logits(seq[:-1], [len(e["prompt"]) - 1 + k])[0]
        return torch.softmax(row[label_ids], -1)[1].item()

    def score_split(name):
        model.eval()
        ps = [p_malicious(e) for e in sets[name]]
        ys = [e["label"] for e in sets[name]]
        model.train()
        return scores(ps, ys) if ps else None

    started = time.perf_counter()
    step = 0
    base_eval = score_split("eval")
    print(json.dumps({"epoch": 0, "eval": base_eval, "seconds": time.perf_counter() - started}), flush=True)
    model.train()
    for epoch in range(args.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        # Both classes in every step, in proportion: interleave the shuffled classes.
        by = [[i for i in order if train[i]["label"] == c] for c in (0, 1)]
        keyed = sorted(
            [((r + 0.5) / len(lst), i) for lst in by for r, i in enumerate(lst)]
        )
        order = [i for _, i in keyed]
        losses = []
        for s in range(0, len(order), args.examples_per_step):
            group = [train[i] for i in order[s : s + args.examples_per_step]]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            terms = [example_terms(e) for e in group]
            weight = sum(w for _, w in terms)
            loss = sum(l for l, _ in terms) / weight
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            step += 1
        print(
            json.dumps(
                {
                    "epoch": epoch + 1,
                    "train_loss": sum(losses) / len(losses),
                    "val": score_split("val"),
                    "eval": score_split("eval"),
                    "seconds": time.perf_counter() - started,
                    "torch": torch.__version__,
                    "peft": peft.__version__,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
