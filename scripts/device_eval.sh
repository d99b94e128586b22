#!/usr/bin/env bash
# Runs on the lent GPU machine: torch-engine SQuAD dev evaluation of the committed adapter,
# with per-question predictions (to compare with the llama.cpp engine's, question by question).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1 PYTHONSAFEPATH=1
rm -rf /tmp/site && mkdir -p /tmp/site/qabridge
cp -r qabridge/. /tmp/site/qabridge/ && for d in train bridge export; do cp -r "$d" "/tmp/site/qabridge/$d"; done
export PYTHONPATH=/tmp/site QABRIDGE_OFFLINE_BASE_DIR=$PWD/.dev/base
OUTDIR=${OUT:-/tmp/out}
mkdir -p "$OUTDIR"
python3 -m qabridge.cli eval --adapter models/lora --data .dev/squad/dev-v1.1.json.gz --device cuda --json --quiet \
  --predictions "$OUTDIR/pred-torch-gpu.json" | tee "$OUTDIR/torch-gpu.json"
