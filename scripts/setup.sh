#!/usr/bin/env bash
# Idempotent set-up: .venv in the repo with the project, every extra and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.qabridge-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import qabridge, llama_cpp, torch" 2>/dev/null; then
  exit 0
fi
python -m pip install -q --upgrade pip wheel setuptools
# A CPU-only torch wheel where the machine can reach one (PyTorch's own index);
# otherwise whatever PyPI gives.
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 \
     || ! timeout 60 python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
    python -m pip install -q torch
  fi
fi
# llama-cpp-python compiles llama.cpp (minutes); pip's wheel cache keeps the result.
CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF"} \
  python -m pip install -q "llama-cpp-python>=0.3.16"
python -m pip install -q -e ".[train,report,test]"
echo "$want" > "$stamp"
