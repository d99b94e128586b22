#!/usr/bin/env bash
# Issues 18 and 13 on the CPU, over several sittings, for a task without a GPU. The accurate model
# itself was trained on the lent GPU (scripts/recipes/device_accurate.sh) and is committed as
# models/lora-accurate: abstain and distill start from it unless $RUNS/bge-accurate holds a newer run.
# $RUNS lies outside the repository: a new machine starts without it (a run paused there is lost).
#   bash scripts/recipes/cpu_accurate.sh [train] [SECONDS]   the accurate model: bge-small-en-v1.5 + LoRA, the
#                                                    default recipe, 3 epochs (4,152 steps of 64)
#   bash scripts/recipes/cpu_accurate.sh abstain [SECONDS]   then a warm start of it with generated negatives
#                                                    (issue 13), as runs/lora-neg was for MiniLM: 40k
#                                                    questions + 20k negatives, 1 epoch, lr 3e-4
#   bash scripts/recipes/cpu_accurate.sh eval                once trained: GGUF f16 + q8_0 and ONNX int8 files
#                                                    in $RUNS, SQuAD v1.1 dev through each (JSON in $RUNS);
#                                                    a run trained with negatives first gets its null
#                                                    threshold tuned on SQuAD 2.0 dev articles 1-17 and
#                                                    stored, and is scored on 18-35
#   bash scripts/recipes/cpu_accurate.sh distill [SECONDS]   the fast default distilled from it: the shipped
#                                                    MiniLM-L6 adapter warm-started for DISTILL_EPOCHS
#                                                    (default 1) at lr 3e-4, the teacher's logits cached;
#                                                    the teacher is the abstaining one when it exists
#                                                    (and then the student gets the same negatives)
# Each training call trains for SECONDS (default 2700), then pauses with a checkpoint; the same call
# goes on from there with the schedule unchanged, and the last one writes the adapter and its
# training summary (torch's dev EM/F1 and the learning curve). The distillation's first call computes
# the teacher's logits for every training window first (not counted in SECONDS).
#   RUNS=/work/runs DATA=../shared/data/squad/train-v1.1.json.gz (defaults)
# Dry run of the eval step: mkdir -p /tmp/dry && cp -r models/lora /tmp/dry/bge-accurate &&
#   RUNS=/tmp/dry EVAL_LIMIT=30 bash scripts/recipes/cpu_accurate.sh eval
# The recipe's batch of 64 goes as 2 micro-batches of 32 (the same steps and schedule, less memory).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/recipes/default_recipe.sh
STEP=train
if [[ "${1:-}" =~ ^(train|abstain|eval|distill)$ ]]; then STEP=$1; shift; fi
SECONDS_NOW="${1:-2700}"
RUNS="${RUNS:-/work/runs}"
TEACHER="${OUT:-$RUNS/bge-accurate}"
if [[ $STEP != train && ! -f $TEACHER/adapter_config.json ]]; then TEACHER=$PWD/models/lora-accurate; fi
ABSTAIN="$RUNS/bge-accurate-neg"
STUDENT="$RUNS/minilm-distilled"
DATA="${DATA:-$(cd .. && pwd)/shared/data/squad/train-v1.1.json.gz}"
DEV="$(dirname "$DATA")/dev-v1.1.json.gz"
DEV2="${DEV2:-$(dirname "$(dirname "$DATA")")/squad2/dev-v2.0.json.gz}"
NEGATIVES=(--negatives topical,adversarial --negative-ratio 0.5)
# `qabridge train`/`distill` run on tcmalloc when it is installed (train/allocator.py: 1.4-1.6x the
# windows/s of glibc's malloc on this CPU); `bash scripts/setup-debian.sh` installs it.
# The curve's 2,000-question evaluations cost ~2 min each on 2 cores: every 700 steps as on the GPU.
COMMON=(--data "$DATA" "${DEFAULT_RECIPE[@]}" --batch-size 32 --grad-accum 2 --eval-data "$DEV"
        --checkpoint-every 25 --stop-after "$SECONDS_NOW" --quiet)
has_negatives() { grep -q '"negatives": "[a-z]' "$1/qabridge.json" 2>/dev/null; }
case $STEP in
  train)
    exec .venv/bin/qabridge train --base bge-small-en-v1.5 --output "$TEACHER" "${COMMON[@]}" ;;
  abstain)
    [[ -f $TEACHER/adapter_config.json ]] || { echo "no teacher yet: $TEACHER (finish the train step first)" >&2; exit 1; }
    # Later options win (click): the warm start's own length, rate and batch over the recipe's.
    exec .venv/bin/qabridge train --base bge-small-en-v1.5 --init-adapter "$TEACHER" --output "$ABSTAIN" "${COMMON[@]}" \
      "${NEGATIVES[@]}" --subset-size 40000 --epochs 1 --lr 3e-4 --batch-size 32 --grad-accum 1 --eval-every 400 ;;
  distill)
    teacher=$TEACHER; neg=()
    if [[ -f $ABSTAIN/adapter_config.json ]]; then teacher=$ABSTAIN; neg=("${NEGATIVES[@]}"); fi
    [[ -f $teacher/adapter_config.json ]] || { echo "no teacher yet: $teacher (finish the train step first)" >&2; exit 1; }
    # A warm start from the shipped MiniLM adapter (F1 83.5 after the recipe's 3 epochs): the CPU
    # cost of distilling is then one pass (~2 h here with negatives) instead of three from scratch.
    exec .venv/bin/qabridge distill --teacher "$teacher" --student all-minilm-l6-v2 --output "$STUDENT" \
      --cache-teacher "$RUNS/teacher-logits-$(basename "$teacher")" "${COMMON[@]}" "${neg[@]}" \
      --init-adapter models/lora --epochs "${DISTILL_EPOCHS:-1}" --lr 3e-4 --eval-every 500 ;;
  eval)
    LIMIT=(); [[ -n ${EVAL_LIMIT:-} ]] && LIMIT=(--limit "$EVAL_LIMIT")  # a dry run on a few questions
    for run in "$TEACHER" "$ABSTAIN" "$STUDENT"; do
      [[ -f $run/adapter_config.json ]] || continue
      name=$(basename "$run")
      if has_negatives "$run" && ! grep -q '"null_threshold"' "$run/qabridge.json"; then
        # Tune the threshold on articles 1-17 through the f16 GGUF and store it in the adapter; the
        # files below are exported after, so their metadata carries it.
        f="$RUNS/$name.tune.f16.gguf"
        .venv/bin/qabridge export --adapter "$run" --outtype f16 --output "$f" --modelfile '' --force
        .venv/bin/qabridge eval --model "$f" --data "$DEV2" --tune-articles 17 --save-threshold "$run" --json \
          "${LIMIT[@]}" > "$RUNS/$name.f16.eval-v2.json"
        rm -f "$f" "$RUNS/$name".{f16,q8_0}.gguf "$RUNS/$name.int8.onnx"
      fi
      # v1.1 with abstention at the stored threshold too (the JSON keeps the score without it).
      thr=(); has_negatives "$run" && thr=(--null-threshold "$(.venv/bin/python -c \
        'import json, sys; print(json.load(open(sys.argv[1]))["null_threshold"])' "$run/qabridge.json")")
      for t in f16 q8_0; do
        f="$RUNS/$name.$t.gguf"
        [[ -f $f ]] || .venv/bin/qabridge export --adapter "$run" --outtype "$t" --output "$f" --modelfile ''
        .venv/bin/qabridge eval --model "$f" --data "$DEV" --json "${LIMIT[@]}" "${thr[@]}" > "$RUNS/$name.$t.eval.json"
        if has_negatives "$run"; then
          .venv/bin/qabridge eval --model "$f" --data "$DEV2" --tune-articles 17 --json "${LIMIT[@]}" > "$RUNS/$name.$t.eval-v2.json"
        fi
      done
      f="$RUNS/$name.int8.onnx"
      [[ -f $f ]] || .venv/bin/qabridge export --format onnx --adapter "$run" --output "$f"
      .venv/bin/qabridge eval --model "$f" --data "$DEV" --json "${LIMIT[@]}" "${thr[@]}" > "$RUNS/$name.int8.onnx.eval.json"
      grep -h -o '"f1": [0-9.]*' "$RUNS/$name".*.json || true
    done ;;
esac
