#!/usr/bin/env bash
# Idempotent set-up: .venv in the repo with the project, every extra and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# One line per step on stderr, with how long it usually takes the first time (2-core CPU).
say() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.qabridge-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import qabridge, llama_cpp, torch" 2>/dev/null; then
  exit 0
fi
T0=$(date +%s)
say "installing into .venv: torch (CPU), llama-cpp-python, qabridge and its extras (first time ~6 min, then seconds)"
python -m pip install -q --upgrade pip wheel setuptools
# A CPU-only torch wheel where the machine can reach one (PyTorch's own index);
# otherwise whatever PyPI gives.
if ! python -c "import torch" 2>/dev/null; then
  say "torch: the CPU wheel (~200 MB download, ~1 min)"
  if command -v nvidia-smi >/dev/null 2>&1 \
     || ! timeout 60 python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
    python -m pip install -q torch
  fi
fi
# llama-cpp-python compiles llama.cpp (minutes). ggml picks its SIMD kernels at compile time, so the
# wheel is built for this CPU's instruction sets (AVX2/FMA/F16C, AVX-512 and VNNI where present) and
# cached per flag set: a machine with another CPU builds its own instead of crashing on ours.
LLAMA_CPP_PY=0.3.36
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
llama_args="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF"
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI; do
  if [[ "$cpu_flags" == *" ${pair%%:*} "* ]]; then llama_args="$llama_args -DGGML_${pair##*:}=ON"; fi
done
llama_args=${QABRIDGE_LLAMA_CMAKE_ARGS:-$llama_args}
tag=$(printf '%s %s' "$LLAMA_CPP_PY" "$llama_args" | sha256sum | cut -c1-12)
wheels="${QABRIDGE_CACHE:-$HOME/.cache/qabridge}/wheels/llama-cpp-python-$tag"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  say "llama-cpp-python $LLAMA_CPP_PY: compiling llama.cpp for this CPU's instruction sets (one-time, ~4 min; cached in $wheels)"
  CMAKE_ARGS="$llama_args" python -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$wheels" "llama-cpp-python==$LLAMA_CPP_PY"
fi
python -m pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
say "qabridge and its extras (train, report, test, ray, haystack, openvino; ~1-2 min)"
# setuptools always says that an editable install prefers same-named folders of the working
# directory (true of every editable install, nothing to act on): filtered by its message alone.
PYTHONWARNINGS="ignore:Editable installation:UserWarning" python -m pip install -q -e ".[train,report,test,ray,haystack,openvino]"
echo "$want" > "$stamp"
say "done in $(( $(date +%s) - T0 )) s"
