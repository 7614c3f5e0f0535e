#!/usr/bin/env bash
# The main job on the embedded default, on one machine: fetch the default model, generate a
# small synthetic corpus with ground truth, print its tables, and annotate a sample of its
# test split (spread over the five languages) with the real model (three temperatures, one
# shared prefill, early stop), and score the answers against the ground truth.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data/quickstart}
sample=${SAMPLE:-12}

deploy/fetch_model.sh
cargo build --quiet -p automaldesc-coordinator
bin=target/debug/automaldesc

$bin corpus synth --out "$out/corpus" --scale 0.01 --seed 1
$bin annotate --from "$out/corpus/test" --spread "$sample" --early-stop \
  --max-new-tokens 256 --prompt-budget 1024 --slots 24 --out "$out/answers.jsonl"
$bin eval --answers "$out/answers.jsonl" --references "$out/corpus/test" --answered-only \
  --json "$out/evaluation.json"
