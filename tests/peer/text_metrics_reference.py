#!/usr/bin/env python3
"""Reference values of the summary metrics from the reference implementations.

sacrebleu (corpus BLEU and chrF with their defaults) and rouge-score (ROUGE-L F1 without
stemming) on fixed (hypothesis, reference) pairs: every pair alone, and the whole list as
one corpus. The Rust implementations are tested against this file.

    pip install sacrebleu rouge-score
    tests/peer/text_metrics_reference.py tests/data/text_metrics_examples.json OUT.json
"""
import json
import sys

import sacrebleu
from rouge_score import rouge_scorer


def main():
    pairs = json.load(open(sys.argv[1], encoding="utf-8"))
    hyps = [h for h, _ in pairs]
    refs = [r for _, r in pairs]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    per_pair = []
    for h, r in pairs:
        per_pair.append({
            "bleu": sacrebleu.corpus_bleu([h], [[r]]).score,
            "chrf": sacrebleu.corpus_chrf([h], [[r]]).score,
            "rouge_l": scorer.score(r, h)["rougeL"].fmeasure,
        })
    out = {
        "versions": {"sacrebleu": sacrebleu.__version__},
        "corpus": {
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "mean_rouge_l": sum(p["rouge_l"] for p in per_pair) / len(per_pair),
        },
        "pairs": per_pair,
        "tokens_13a": [sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()(h.rstrip()).split() for h in hyps],
    }
    json.dump(out, open(sys.argv[2], "w", encoding="utf-8"), indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
