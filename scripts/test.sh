#!/usr/bin/env bash
# The whole test suite: set up (idempotent), start a real Ollama on loopback, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
# A real Ollama (v0.24.0, built from the Go module proxy and cached) with its own models dir.
export QABRIDGE_OLLAMA_STATE="$PWD/.cache/ollama-test"
OLLAMA_BIN=$(bash scripts/ollama.sh build | tail -n 1)
export OLLAMA_BIN
host_line=$(bash scripts/ollama.sh start | tail -n 1)
export "${host_line?}"
trap 'bash scripts/ollama.sh stop >/dev/null 2>&1 || true' EXIT
echo "Ollama: $OLLAMA_BIN at $OLLAMA_HOST"
python -m pytest "$@"
