#!/usr/bin/env bash
# Runs on the lent GPU machine (no registry there): trains the default adapter and the
# comparison runs with `qabridge train`, then packs what comes back into $OUT/results.tgz.
# Prepared here by `python scripts/prepare_device.py` (fp16 base + SQuAD files in .dev/).
set -uo pipefail
. "$(dirname "$0")/device_env.sh"
RUNS=$OUTDIR/runs
mkdir -p "$RUNS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
T0=$(date +%s)
run() {
  local name=$1 start_before=$2; shift 2
  local now; now=$(date +%s)
  if (( now - T0 > start_before )); then echo "skip $name (elapsed $((now - T0)) s)"; return; fi
  echo "== $name: $*"
  python3 -m qabridge.cli train --data .dev/squad/train-v1.1.json.gz --eval-data .dev/squad/dev-v1.1.json.gz \
    --output "$RUNS/$name" --quiet --device cuda "$@" > "$RUNS/$name.log" 2>&1
  echo "rc=$? $(tail -n 3 "$RUNS/$name.log" | tr '\n' ' ')"
}
# The shipped default (scripts/train_default.sh runs the same command).
run lora_r32 0 --epochs 3 --batch-size 64 --lr 1e-3 --lora-r 32 --lora-alpha 64 --eval-every 700 --time-budget 300
tar czf "$OUTDIR/results.tgz" -C "$RUNS" --exclude='model.safetensors' --exclude='checkpoint' .
ls -la "$OUTDIR"; echo "total $(( $(date +%s) - T0 )) s"
