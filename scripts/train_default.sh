#!/usr/bin/env bash
# The recipe that produced models/lora (the shipped default adapter); its arguments are in
# scripts/default_recipe.sh. On the lent NVIDIA H200 it runs in about 3 minutes
# (scripts/device_train.sh runs the same arguments there); on this 2-core CPU one epoch takes
# hours, so the run checkpoints every 200 steps and resumes when started again with the same arguments.
# Data: SQuAD v1.1 from $QABRIDGE_SQUAD_DIR or ../shared/data/squad; OUT overrides the output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
. scripts/default_recipe.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
SQUAD=${QABRIDGE_SQUAD_DIR:-../shared/data/squad}
exec qabridge train \
  --data "$SQUAD/train-v1.1.json.gz" --eval-data "$SQUAD/dev-v1.1.json.gz" \
  --output "${OUT:-models/lora}" "${DEFAULT_RECIPE[@]}" "$@"
