#!/usr/bin/env bash
# The whole test suite: set up (idempotent), start a real Ollama on loopback, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-debian.sh   # Debian packages: headless Chromium + chromedriver (tests/test_page.py), tcmalloc
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
# A real Ollama with its own models dir: v0.34.4 (llama-server runner), built by scripts/ollama.sh
# from the Go module proxy and the llama-cpp-python sdist, cached per version and CPU flags.
export QABRIDGE_OLLAMA_STATE="$PWD/.cache/ollama-test"
OLLAMA_BIN=$(bash scripts/ollama.sh build | tail -n 1)
export OLLAMA_BIN
host_line=$(bash scripts/ollama.sh start | tail -n 1)
export "${host_line?}"
trap 'bash scripts/ollama.sh stop >/dev/null 2>&1 || true' EXIT
echo "Ollama: $OLLAMA_BIN at $OLLAMA_HOST"
python -m pytest "$@"
# QABRIDGE_TEST_OLLAMA_ALSO="0.24.0": the Ollama tests again against each of these versions
# (each one built once, ~20 more minutes on 2 cores; each with its own models dir).
for version in ${QABRIDGE_TEST_OLLAMA_ALSO:-}; do
  bash scripts/ollama.sh stop >/dev/null 2>&1 || true
  export QABRIDGE_OLLAMA_VERSION="$version" QABRIDGE_OLLAMA_STATE="$PWD/.cache/ollama-test-v$version"
  OLLAMA_BIN=$(bash scripts/ollama.sh build | tail -n 1)
  host_line=$(bash scripts/ollama.sh start | tail -n 1)
  export "${host_line?}"
  echo "Ollama: $OLLAMA_BIN at $OLLAMA_HOST"
  python -m pytest tests/test_ollama.py
done
