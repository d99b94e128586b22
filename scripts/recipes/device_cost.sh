#!/usr/bin/env bash
# Runs on the lent GPU machine: benchmarks/experiments/train_cost.py there (LoRA, QLoRA, full fine-tuning, one at a
# time, 300 steps of 64 windows each), for clean per-method speed and peak GPU memory;
# scripts/recipes/device_train.sh runs the three full trainings side by side, so its speeds are shared.
set -uo pipefail
. "$(dirname "$0")/device_env.sh"
python3 benchmarks/experiments/train_cost.py --device cuda --steps "${STEPS:-300}" --batch-size 64 --subset 20000 \
  --data .dev/squad/train-v1.1.json.xz --out "$OUTDIR/train-cost-gpu.json" 2>&1 | grep -v '^Loading weights'
