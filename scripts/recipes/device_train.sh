#!/usr/bin/env bash
# Runs on the lent GPU machine (no registry there). Three runs share the GPU at once, each the
# default recipe (scripts/recipes/default_recipe.sh) with one change, so their learning curves compare
# step for step: the recipe itself (a rerun of what produced models/lora), full fine-tuning
# (lr 1e-4), and QLoRA (4-bit nf4 base). Logs and summaries land in $OUT/runs as they are written,
# so a run cut short still reports its curve. Prepared here by `python scripts/recipes/prepare_device.py`.
set -uo pipefail
. "$(dirname "$0")/device_env.sh"
. "$(dirname "$0")/default_recipe.sh"
RUNS=$OUTDIR/runs
mkdir -p "$RUNS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" 2>&1 | tail -n 1
T0=$(date +%s)
run() {
  local name=$1; shift
  echo "== start $name: ${DEFAULT_RECIPE[*]} $*"
  timeout "${RUN_TIMEOUT:-500}" python3 -m qabridge.cli train \
    --data .dev/squad/train-v1.1.json.xz --eval-data .dev/squad/dev-v1.1.json.gz \
    --output "$RUNS/$name" --quiet --device cuda "${DEFAULT_RECIPE[@]}" "$@" > "$RUNS/$name.log" 2>&1
  echo "== $name rc=$? after $(( $(date +%s) - T0 )) s: $(grep -v '^Loading' "$RUNS/$name.log" | tail -n 2 | tr '\n' ' ')"
}
run recipe &
run full --full --lr 1e-4 &
run qlora --quantize 4bit &
wait
# The full model and the checkpoints stay behind (size); the adapters and summaries come back in
# one archive (only a few files come back from the machine one by one).
find "$RUNS" \( -name checkpoint -o -name model.safetensors \) -prune -exec rm -rf {} +
tar czf "$OUTDIR/runs.tgz" -C "$RUNS" --exclude='*.log' .
du -sh "$RUNS"/* "$OUTDIR/runs.tgz"; echo "total $(( $(date +%s) - T0 )) s"
