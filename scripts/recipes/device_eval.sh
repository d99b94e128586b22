#!/usr/bin/env bash
# Runs on the lent GPU machine: torch-engine SQuAD dev evaluation of the committed adapter,
# with per-question predictions (to compare with the llama.cpp engine's, question by question).
set -uo pipefail
. "$(dirname "$0")/device_env.sh"
python3 -m qabridge.cli eval --adapter models/lora --data .dev/squad/dev-v1.1.json.gz --device cuda --json --quiet \
  --predictions "$OUTDIR/pred-torch-gpu.json" | tee "$OUTDIR/torch-gpu.json"
