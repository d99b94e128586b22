#!/usr/bin/env bash
# Runs on the lent GPU machine (issue 18): the accurate model (bge-small-en-v1.5 + LoRA, the default
# recipe of scripts/default_recipe.sh) and the fast default distilled from it. bge's fp16 weights
# (63 MiB) do not fit one 64 MiB carry beside the tree, so they travel in two calls on the warm
# machine (it keeps ignored paths between calls, and gives itself back after ~30 s idle: chain them):
#   1. carry .dev/bge-a                    command: bash scripts/device_accurate.sh check
#   2. carry .dev/bge-b .dev/squad         command: bash scripts/device_accurate.sh train    (~8 min)
#   3. carry .dev/base .dev/squad          command: bash scripts/device_accurate.sh distill  (~8 min)
# Prepared by `python scripts/prepare_device.py --bge --no-bitsandbytes`. Each run stops at
# RUN_BUDGET seconds (default 450); training_summary.json holds SQuAD v1.1 dev EM/F1 (torch) and the
# learning curve. The GGUF numbers (the issue's F1 >= 87 through the bridge's engine) are measured
# back on the CPU machine: qabridge export --adapter bge --base bge-small-en-v1.5 ... then qabridge eval.
# Dry run on this CPU (tiny): PATH=$PWD/.venv/bin:$PATH DEVICE=cpu OUT=/tmp/dry \
#   EXTRA="--max-steps 2 --subset-size 64 --batch-size 8 --eval-limit 20 --curve-limit 20" bash scripts/device_accurate.sh train
set -uo pipefail
STEP=${1:?check, train or distill}
. "$(dirname "$0")/device_env.sh"
. "$(dirname "$0")/default_recipe.sh"
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
BGE=$PWD/.dev/bge-full
KEEP=$PWD/.dev/runs-accurate  # stays on the warm machine for the next call (the teacher)
mkdir -p "$KEEP"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: $DEVICE"
ls -la .dev/ 2>/dev/null
assemble() {
  [[ -f $BGE/model.safetensors ]] && return 0
  [[ -f .dev/bge-a/model.part0 && -f .dev/bge-b/model.part1 ]] || { echo "bge parts missing: carry .dev/bge-a, then .dev/bge-b"; return 1; }
  mkdir -p "$BGE" && cp .dev/bge-a/*.json .dev/bge-a/vocab.txt .dev/bge-a/NOTICE "$BGE"/ 2>/dev/null
  rm -f "$BGE/manifest.json"
  cat .dev/bge-a/model.part0 .dev/bge-b/model.part1 > "$BGE/model.safetensors"
  python3 - "$BGE/model.safetensors" .dev/bge-a/manifest.json <<'PY' || { rm -f "$BGE/model.safetensors"; return 1; }
import hashlib, json, sys
want = json.load(open(sys.argv[2]))["model.safetensors"]
got = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
print("bge fp16 sha256", "ok" if got == want else f"MISMATCH {got} != {want}")
sys.exit(got != want)
PY
}
T0=$(date +%s)
case $STEP in
  check)
    [[ -f .dev/bge-a/model.part0 ]] && echo "bge-a here: $(du -sh .dev/bge-a)" || { echo "bge-a missing"; exit 1; } ;;
  train)
    assemble || exit 1
    timeout "${RUN_TIMEOUT:-540}" python3 -m qabridge.cli train --base "$BGE" \
      --data .dev/squad/train-v1.1.json.xz --eval-data .dev/squad/dev-v1.1.json.gz \
      --output "$KEEP/bge" --quiet --device "$DEVICE" "${DEFAULT_RECIPE[@]}" --epochs "${EPOCHS:-3}" \
      --time-budget "${RUN_BUDGET:-450}" "${EXTRA_ARGS[@]}" > "$OUTDIR/bge.log" 2>&1
    echo "bge trained rc=$? after $(( $(date +%s) - T0 )) s"
    tar czf "$OUTDIR/bge.tgz" -C "$KEEP" --exclude=checkpoint --exclude=model.safetensors bge ;;
  distill)
    [[ -f $KEEP/bge/adapter_config.json ]] || { echo "no teacher: run the train step first on this machine"; exit 1; }
    [[ -f $BGE/model.safetensors ]] || { echo "bge base gone from this machine"; exit 1; }
    timeout "${RUN_TIMEOUT:-540}" python3 -m qabridge.cli distill --teacher "$KEEP/bge" --student "$PWD/.dev/base" \
      --data .dev/squad/train-v1.1.json.xz --eval-data .dev/squad/dev-v1.1.json.gz \
      --output "$KEEP/distilled" --quiet --device "$DEVICE" "${DEFAULT_RECIPE[@]}" --epochs "${EPOCHS:-3}" \
      --time-budget "${RUN_BUDGET:-450}" "${EXTRA_ARGS[@]}" > "$OUTDIR/distill.log" 2>&1
    echo "distilled rc=$? after $(( $(date +%s) - T0 )) s"
    tar czf "$OUTDIR/distilled.tgz" -C "$KEEP" --exclude=checkpoint distilled ;;
  *) echo "unknown step $STEP"; exit 2 ;;
esac
tail -n 3 "$OUTDIR"/*.log 2>/dev/null; ls -la "$OUTDIR"
