#!/usr/bin/env bash
# The recipe that produced models/lora (the shipped default adapter).
# On the GPU it ran in 178 s (NVIDIA H200); on this 2-core CPU one epoch takes hours, so the
# run checkpoints every 200 steps and resumes when started again with the same arguments.
# Data: SQuAD v1.1 from $QABRIDGE_SQUAD_DIR or ../shared/data/squad; OUT overrides the output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
SQUAD=${QABRIDGE_SQUAD_DIR:-../shared/data/squad}
exec qabridge train \
  --data "$SQUAD/train-v1.1.json.gz" --eval-data "$SQUAD/dev-v1.1.json.gz" \
  --output "${OUT:-models/lora}" \
  --epochs 3 --batch-size 64 --lr 1e-3 --lora-r 32 --lora-alpha 64 --lora-dropout 0 \
  --target-modules query,key,value,dense --max-seq-len 384 --doc-stride 128 --seed 42 \
  --eval-every 700 "$@"
