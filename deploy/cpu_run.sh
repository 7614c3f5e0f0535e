#!/usr/bin/env bash
# The real CPU run: the loop of deploy/loop/cpu.toml, two iterations with the real
# SmolLM2-135M-Instruct, over 470 seed, 418 test and 737 unlabelled synthetic scripts.
# About 93 minutes on a 2-core CPU as measured; its figures are in ARCHITECTURE.md ("The real
# CPU run"). Everything it writes is under data/cpu; see deploy/run_loop.sh for the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
exec deploy/run_loop.sh cpu data/cpu \
  --scale 0.115 --seed-scale 0.52 --unlabelled-scale 0.0047 --seed 2
