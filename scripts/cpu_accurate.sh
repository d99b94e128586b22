#!/usr/bin/env bash
# Issue 18 on the CPU, over several sittings, for a task without a GPU:
#   bash scripts/cpu_accurate.sh [train] [SECONDS]   the accurate model: bge-small-en-v1.5 + LoRA, the
#                                                    default recipe, 3 epochs (4,152 steps of 64)
#   bash scripts/cpu_accurate.sh eval                once trained: GGUF f16 + q8_0 and ONNX int8 files
#                                                    in $RUNS, SQuAD v1.1 dev through each (JSON in $RUNS)
#   bash scripts/cpu_accurate.sh distill [SECONDS]   the fast default distilled from it: MiniLM-L6 +
#                                                    LoRA, the same recipe, the teacher's logits cached
# Each training call trains for SECONDS (default 2700), then pauses with a checkpoint; the same call
# goes on from there with the schedule unchanged, and the last one writes the adapter and its
# training summary (torch's dev EM/F1 and the learning curve). The distillation's first call computes
# the teacher's logits for every training window first (not counted in SECONDS).
#   RUNS=/work/runs DATA=../shared/data/squad/train-v1.1.json.gz (defaults)
# Dry run of the eval step: mkdir -p /tmp/dry && cp -r models/lora /tmp/dry/bge-accurate &&
#   RUNS=/tmp/dry EVAL_LIMIT=30 bash scripts/cpu_accurate.sh eval
# The recipe's batch of 64 goes as 2 micro-batches of 32 (the same steps and schedule, less memory).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/default_recipe.sh
STEP=train
if [[ "${1:-}" =~ ^(train|eval|distill)$ ]]; then STEP=$1; shift; fi
SECONDS_NOW="${1:-2700}"
RUNS="${RUNS:-/work/runs}"
TEACHER="${OUT:-$RUNS/bge-accurate}"
STUDENT="$RUNS/minilm-distilled"
DATA="${DATA:-$(cd .. && pwd)/shared/data/squad/train-v1.1.json.gz}"
DEV="$(dirname "$DATA")/dev-v1.1.json.gz"
# `qabridge train`/`distill` run on tcmalloc when it is installed (train/allocator.py: 1.4-1.6x the
# windows/s of glibc's malloc on this CPU); `bash scripts/setup-debian.sh` installs it.
# The curve's 2,000-question evaluations cost ~2 min each on 2 cores: every 700 steps as on the GPU.
COMMON=(--data "$DATA" "${DEFAULT_RECIPE[@]}" --batch-size 32 --grad-accum 2 --eval-data "$DEV"
        --checkpoint-every 25 --stop-after "$SECONDS_NOW" --quiet)
case $STEP in
  train)
    exec .venv/bin/qabridge train --base bge-small-en-v1.5 --output "$TEACHER" "${COMMON[@]}" ;;
  distill)
    [[ -f $TEACHER/adapter_config.json ]] || { echo "no teacher yet: $TEACHER (finish the train step first)" >&2; exit 1; }
    exec .venv/bin/qabridge distill --teacher "$TEACHER" --student all-minilm-l6-v2 --output "$STUDENT" \
      --cache-teacher "$RUNS/teacher-logits" "${COMMON[@]}" ;;
  eval)
    LIMIT=(); [[ -n ${EVAL_LIMIT:-} ]] && LIMIT=(--limit "$EVAL_LIMIT")  # a dry run on a few questions
    for run in "$TEACHER" "$STUDENT"; do
      [[ -f $run/adapter_config.json ]] || continue
      name=$(basename "$run")
      for t in f16 q8_0; do
        f="$RUNS/$name.$t.gguf"
        [[ -f $f ]] || .venv/bin/qabridge export --adapter "$run" --outtype "$t" --output "$f" --modelfile ''
        .venv/bin/qabridge eval --model "$f" --data "$DEV" --json "${LIMIT[@]}" > "$RUNS/$name.$t.eval.json"
      done
      f="$RUNS/$name.int8.onnx"
      [[ -f $f ]] || .venv/bin/qabridge export --format onnx --adapter "$run" --output "$f"
      .venv/bin/qabridge eval --model "$f" --data "$DEV" --json "${LIMIT[@]}" > "$RUNS/$name.int8.onnx.eval.json"
      grep -h '"f1"' "$RUNS/$name".*.eval.json || true
    done ;;
esac
