#!/usr/bin/env bash
# The whole test suite: set up (idempotent), start a real Ollama on loopback, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
python -m pytest "$@"
