#!/usr/bin/env bash
# Runs on the lent GPU machine (issue 13): the default recipe (scripts/recipes/default_recipe.sh) from
# scratch with generated unanswerable examples, two mixes side by side on the one GPU (EPOCHS, default
# 2 as in the issue's measurement: 3 epochs of both would not fit one 10-minute call), then per run
# the torch SQuAD 2.0 dev metric with the null threshold tuned on articles 1-17 (stored in the
# adapter's qabridge.json); training_summary.json holds SQuAD v1.1 dev with abstention off and the
# learning curve. Each run also stops at RUN_BUDGET seconds (default 390) so the call fits. The GGUF
# numbers the issue asks for are measured back on the CPU machine (llama.cpp is not installed here):
#   qabridge export --adapter A --outtype bf16 --output A.bf16.gguf
#   qabridge eval --model A.bf16.gguf --data dev-v2.0.json.gz --tune-articles 17 --json
# Prepared by `python scripts/recipes/prepare_device.py --squad2 --no-bitsandbytes` (.dev/, 51 MiB: carry it);
# on the device: `bash scripts/recipes/device_abstain.sh` (timeout ~560 s). Dry run on this CPU (tiny, ~1 min):
#   PATH=$PWD/.venv/bin:$PATH DEVICE=cpu EXTRA="--max-steps 2 --subset-size 64 --batch-size 8" \
#     EVAL_LIMIT=30 OUT=/tmp/dry bash scripts/recipes/device_abstain.sh
set -uo pipefail
. "$(dirname "$0")/device_env.sh"
. "$(dirname "$0")/default_recipe.sh"
RUNS=$OUTDIR/runs
mkdir -p "$RUNS"
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
LIMIT=()
[[ -n "${EVAL_LIMIT:-}" ]] && LIMIT=(--limit "$EVAL_LIMIT")
[[ -n "${EVAL_LIMIT:-}" ]] && EXTRA_ARGS+=(--eval-limit "$EVAL_LIMIT" --curve-limit "$EVAL_LIMIT")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: $DEVICE"
T0=$(date +%s)
run() {
  local name=$1; shift
  echo "== start $name: $*"
  timeout "${RUN_TIMEOUT:-460}" python3 -m qabridge.cli train \
    --data .dev/squad/train-v1.1.json.xz --eval-data .dev/squad/dev-v1.1.json.gz \
    --output "$RUNS/$name" --quiet --device "$DEVICE" "${DEFAULT_RECIPE[@]}" --epochs "${EPOCHS:-2}" \
    --time-budget "${RUN_BUDGET:-390}" "$@" "${EXTRA_ARGS[@]}" > "$RUNS/$name.log" 2>&1
  echo "== $name trained rc=$? after $(( $(date +%s) - T0 )) s"
  python3 -m qabridge.cli eval --adapter "$RUNS/$name" --data .dev/squad2/dev-v2.0.json.gz --device "$DEVICE" \
    --tune-articles 17 --save-threshold "$RUNS/$name" --json --quiet "${LIMIT[@]}" > "$RUNS/$name.v2.json" 2>> "$RUNS/$name.log"
  echo "== $name v2 rc=$? after $(( $(date +%s) - T0 )) s: $(tail -c 400 "$RUNS/$name.v2.json")"
}
# The issue's measurement: adversarial negatives bought most (63.4 vs 57.6 F1 for topical alone).
run neg33 --negatives topical,adversarial --negative-ratio 0.33 &
run adv50 --negatives adversarial --negative-ratio 0.5 &
wait
find "$RUNS" \( -name checkpoint -o -name model.safetensors \) -prune -exec rm -rf {} +
tar czf "$OUTDIR/runs.tgz" -C "$RUNS" --exclude='*.log' .
for f in "$RUNS"/*.log; do tail -n 3 "$f"; done
du -sh "$RUNS"/* "$OUTDIR/runs.tgz"; echo "total $(( $(date +%s) - T0 )) s"
