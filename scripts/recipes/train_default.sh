#!/usr/bin/env bash
# The recipe that produced models/lora (the shipped default adapter), in two stages, both taught by
# models/lora-accurate (bert-qa-accurate; its start/end logits cached on disk):
#   1. the LoRA recipe of scripts/recipes/default_recipe.sh, distilled for 7,137 steps (DEFAULT_DISTILL, 5.16
#      epochs, fresh LoRA). On the lent NVIDIA H200 this ran in 405 s (scripts/recipes/device_accurate.sh
#      sweep with SWEEP_RUNS=long); on a 2-core CPU it would take about 6.5 hours (~20 windows/s),
#      so the run checkpoints every 200 steps and resumes when started again with the same
#      arguments (or give --time-budget).
#   2. a warm start from stage 1 with topical negatives (DEFAULT_WARM_NEGATIVES): 844 steps, 74 s on
#      the H200 (the earlier default's stage 2 took 1,123 s for 738 steps on the 2-core AMD EPYC).
# Data: SQuAD v1.1 from $QABRIDGE_SQUAD_DIR or ../shared/data/squad. OUT overrides the output,
# RUNS where stage 1 and the teacher's logits go; extra arguments go to both stages.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
. .venv/bin/activate
. scripts/recipes/default_recipe.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
SQUAD=${QABRIDGE_SQUAD_DIR:-../shared/data/squad}
RUNS=${RUNS:-runs/default}
TEACH=(--teacher models/lora-accurate --student all-minilm-l6-v2 --cache-teacher "$RUNS/teacher-logits"
       --data "$SQUAD/train-v1.1.json.gz" --eval-data "$SQUAD/dev-v1.1.json.gz")
qabridge distill "${TEACH[@]}" --output "$RUNS/stage1" "${DEFAULT_DISTILL[@]}" "$@"
exec qabridge distill "${TEACH[@]}" --init-adapter "$RUNS/stage1" --output "${OUT:-models/lora}" \
  "${DEFAULT_WARM_NEGATIVES[@]}" "$@"
