#!/usr/bin/env bash
# The main job: set up, build the default model if needed, serve the QA bridge on :8080.
# QABRIDGE_DEMO_EXIT=1 stops the bridge after the sample request (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PORT=${QABRIDGE_PORT:-8080}
URL="http://127.0.0.1:$PORT"
CACHE_DIR=$(python -c "from qabridge.paths import cache_dir; print(cache_dir())")
T0=$(date +%s)
qabridge serve --port "$PORT" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 600); do
  if ! kill -0 "$PID" 2>/dev/null; then echo "the bridge exited; see the messages above" >&2; exit 1; fi
  if curl -fsS "$URL/api/health" 2>/dev/null | grep -q '"ready":true'; then break; fi
  sleep 0.5
done
BODY='{"question": "What is machine learning?", "context": "Machine learning is a field of artificial intelligence that uses statistical techniques to give computer systems the ability to learn from data, without being explicitly programmed."}'
echo
echo "qabridge is ready on $URL"
echo "(up in $(( $(date +%s) - T0 )) s; the first start builds the built-in model's candidates and measures"
echo " them on this CPU once; the models and the engine choice are cached under $CACHE_DIR)"
echo "Try it:"
echo "  curl -s $URL/api/qa -H 'Content-Type: application/json' -d '$BODY'"
ANSWER=$(curl -fsS "$URL/api/qa" -H 'Content-Type: application/json' -d "$BODY")
echo "It answered:"
echo "  $ANSWER"
if [ "${QABRIDGE_DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "(Ctrl-C stops the bridge)"
wait $PID
