#!/usr/bin/env bash
# The accurate model of issue 18 (bge-small-en-v1.5 + LoRA, the default recipe, 3 epochs) trained on
# the CPU over several sittings, for a task without a GPU: each call trains for SECONDS (default
# 2700), then pauses with a checkpoint in $OUT; the same call goes on from there with the schedule
# unchanged, and the last one writes the adapter and its training summary.
#   bash scripts/cpu_accurate.sh [SECONDS]
#   OUT=/work/runs/bge-accurate DATA=../shared/data/squad/train-v1.1.json.gz (defaults)
# The recipe's batch of 64 goes as 2 micro-batches of 32 (the same steps and schedule, less memory).
# Once it has finished: qabridge export --adapter $OUT --base bge-small-en-v1.5 --outtype f16, then
# qabridge eval --model ... --data dev-v1.1.json.gz (issue 18: F1 >= 87 through the GGUF).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/default_recipe.sh
SECONDS_NOW="${1:-2700}"
OUT="${OUT:-/work/runs/bge-accurate}"
DATA="${DATA:-$(cd .. && pwd)/shared/data/squad/train-v1.1.json.gz}"
# glibc hands every tensor over 32 MB back to the kernel and faults it in again on the next step;
# tcmalloc keeps it: 1.47x the windows/s on this CPU (benchmarks/quality.md, "the allocator").
for lib in /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/*/libtcmalloc.so.4; do
  if [ -e "$lib" ] && [ -z "${LD_PRELOAD:-}" ]; then export LD_PRELOAD="$lib"; fi
done
RECIPE=()
for a in "${DEFAULT_RECIPE[@]}"; do RECIPE+=("$a"); done
# The curve's 2,000-question evaluations cost ~2 min each on 2 cores: every 700 steps as on the GPU.
exec .venv/bin/qabridge train --base bge-small-en-v1.5 --data "$DATA" --output "$OUT" "${RECIPE[@]}" \
  --batch-size 32 --grad-accum 2 --eval-data "$(dirname "$DATA")/dev-v1.1.json.gz" \
  --checkpoint-every 25 --stop-after "$SECONDS_NOW" --quiet
