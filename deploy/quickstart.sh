#!/usr/bin/env bash
# The main job on the embedded default, on one machine: the self-training loop of
# deploy/loop/small.toml, two iterations with the real SmolLM2-135M-Instruct, over a small
# synthetic corpus: about 100 seed scripts (every template family at least once), 200 test
# scripts (enough for McNemar to speak) and 100 unlabelled ones. Everything it writes is
# under data/quickstart; see deploy/run_loop.sh for the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
exec deploy/run_loop.sh small data/quickstart \
  --scale 0.062 --seed-scale 0.11 --unlabelled-scale 0.0007 --seed 1
