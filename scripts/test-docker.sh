#!/usr/bin/env bash
# Builds the container image with no image registry and checks it:
#   1. debootstraps a Debian bookworm minbase from Debian's packages and `docker import`s it
#      (once; kept as qabridge-base:bookworm),
#   2. builds docker/Dockerfile on it (BASE_IMAGE build arg) from the files git knows,
#   3. runs it on a loopback port, waits for its HEALTHCHECK to say healthy, asks a SQuAD question
#      and compares the answer with the embedded engine (.venv, same GGUF) on this machine,
#   4. builds an Ollama image from this project's Ollama build (scripts/ollama.sh) and brings up
#      docker/docker-compose.yml with it (OLLAMA_IMAGE overridden): the bridge must answer the
#      same through the Ollama-served model (QABRIDGE_DOCKER_COMPOSE=0 skips this part).
# Needs root (apt-get, debootstrap, dockerd). Slow the first time: llama.cpp compiles in the image.
#   QABRIDGE_DOCKER_WORK  work folder (default ~/.cache/qabridge/docker)
#   QABRIDGE_IMAGE        tag to build (default qabridge:test); QABRIDGE_DOCKER_PORT (default 18080)
#   QABRIDGE_DOCKER_REBUILD_BASE=1 to debootstrap the base again
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${QABRIDGE_DOCKER_WORK:-${QABRIDGE_CACHE:-$HOME/.cache/qabridge}/docker}
BASE=qabridge-base:bookworm
IMAGE=${QABRIDGE_IMAGE:-qabridge:test}
PORT=${QABRIDGE_DOCKER_PORT:-18080}
MIRROR=${QABRIDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$WORK"
t_start=$(date +%s)
say() { printf '[test-docker %4ss] %s\n' "$(( $(date +%s) - t_start ))" "$*" >&2; }

# -- tools and daemon ---------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $WORK/dockerd.log)"
  nohup dockerd >"$WORK/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }
fi

# -- base image: Debian bookworm minbase, made here --------------------------------------------
if [ "${QABRIDGE_DOCKER_REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
  say "debootstrap bookworm minbase from $MIRROR"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  # The same package sources as the public debian:bookworm-slim image (updates and security too).
  cat >"$WORK/rootfs/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
fi
say "base $BASE: $(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}')"

# -- build -------------------------------------------------------------------------------------
# The context is what git knows (tracked, or new and not ignored): no .venv, caches or models
# built here. CA certificates this machine adds to the system store go into docker/ca/ of the
# context only, for a build behind a TLS-inspecting proxy.
ctx="$WORK/context.tar"
git ls-files -co --exclude-standard -z | tar --null -T - --ignore-failed-read -cf "$ctx" 2>/dev/null
extra="$WORK/ca-extra"
rm -rf "$extra" && mkdir -p "$extra/docker/ca"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$extra/docker/ca/"
  tar -rf "$ctx" -C "$extra" docker/ca
fi
say "building $IMAGE on $BASE (context $(du -h "$ctx" | cut -f1)); log: $WORK/build.log"
t_build=$(date +%s)
if ! docker build -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" - <"$ctx" >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log" >&2
  exit 1
fi
build_s=$(( $(date +%s) - t_build ))
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')
say "built $IMAGE in ${build_s}s, $size"

# -- run and check -----------------------------------------------------------------------------
name="qabridge-test-$$"
docker run -d --name "$name" -p "127.0.0.1:$PORT:8080" "$IMAGE" >/dev/null
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
URL="http://127.0.0.1:$PORT"
health=starting
for _ in $(seq 1 180); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)
  [ "$health" = healthy ] || [ "$health" = unhealthy ] || [ "$health" = gone ] && break
  sleep 1
done
if [ "$health" != healthy ]; then
  docker logs "$name" 2>&1 | tail -30 >&2
  say "FAIL: container health is $health"
  exit 1
fi
say "container healthy (HEALTHCHECK on /api/health)"

uid=$(docker exec "$name" id -u)
[ "$uid" != 0 ] || { say "FAIL: the bridge runs as root"; exit 1; }
if docker exec "$name" python3 -c "import torch" 2>/dev/null; then say "FAIL: torch is in the runtime image"; exit 1; fi
curl -fsS "$URL/" | grep -q '<title>qabridge</title>' || { say "FAIL: no page at /"; exit 1; }

# One SQuAD dev question, through the container and through the embedded engine here.
python3 - "$ROOT/tests/fixtures/squad_dev_sample.json" "$WORK" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
para = data["data"][0]["paragraphs"][0]
qa = para["qas"][0]
json.dump({"question": qa["question"], "context": para["context"], "top_k": 1}, open(sys.argv[2] + "/request.json", "w"))
json.dump([a["text"] for a in qa["answers"]], open(sys.argv[2] + "/gold.json", "w"))
PY
curl -fsS "$URL/api/qa" -H 'Content-Type: application/json' --data-binary @"$WORK/request.json" >"$WORK/container.json"
gguf=$(docker exec "$name" readlink -f /models/bert-qa.gguf)
docker cp "$name:$gguf" "$WORK/image-model.gguf" >/dev/null
PY=${QABRIDGE_PYTHON:-$ROOT/.venv/bin/python}
"$PY" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
req = json.loads((work / "request.json").read_text())
got = json.loads((work / "container.json").read_text())
gold = json.loads((work / "gold.json").read_text())
from qabridge import pipeline

qa = pipeline(model=str(work / "image-model.gguf"))
ref = qa(question=req["question"], context=req["context"], top_k=1)
ref = ref[0] if isinstance(ref, list) else ref
print(f"container: {got['answer']!r} [{got['start']}:{got['end']}] score {got['score']:.4f} model {got['model']} engine {got['engine']}")
print(f"embedded : {ref['answer']!r} [{ref['start']}:{ref['end']}] score {ref['score']:.4f}")
print(f"gold     : {gold}")
ok = (got["answer"], got["start"], got["end"]) == (ref["answer"], ref["start"], ref["end"])
ok = ok and abs(got["score"] - ref["score"]) < 0.02 and got["model"] == "bert-qa"
sys.exit(0 if ok else 1)
PY
say "PASS: $IMAGE ($size, built in ${build_s}s) answers as the embedded engine, healthy, non-root (uid $uid), no torch"
cleanup

# -- compose: the bridge beside an Ollama built here (scripts/ollama.sh) ------------------------
[ "${QABRIDGE_DOCKER_COMPOSE:-1}" = 1 ] || exit 0
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  if ! command -v docker-compose >/dev/null 2>&1; then
    say "installing docker-compose from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends docker-compose >/dev/null
  fi
  compose=(docker-compose)
fi
# An image of the Ollama this project builds and tests against, standing in for ollama/ollama.
bin=$(scripts/ollama.sh build | tail -1)
octx="$WORK/ollama-image"
rm -rf "$octx" && mkdir -p "$octx/usr/local/bin"
if [ "$(basename "$(dirname "$bin")")" = bin ] && [ -d "$(dirname "$(dirname "$bin")")/lib" ]; then
  cp -a "$(dirname "$(dirname "$bin")")/lib" "$octx/usr/local/"   # >= 0.30: lib/ollama/llama-server
fi
cp -a "$bin" "$octx/usr/local/bin/ollama"
cat >"$octx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libstdc++6 libgomp1 \\
 && rm -rf /var/lib/apt/lists/*
COPY usr/ /usr/
ENV OLLAMA_HOST=0.0.0.0:11434
EXPOSE 11434
ENTRYPOINT ["/usr/local/bin/ollama"]
CMD ["serve"]
DOCKERFILE
OLLAMA_IMAGE=qabridge-ollama:local
docker build -q -t "$OLLAMA_IMAGE" "$octx" >/dev/null
say "built $OLLAMA_IMAGE from ollama $("$bin" --version 2>&1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | tail -1)"
CPORT=$((PORT + 1))
project="qabridge-test-$$"
dc() { QABRIDGE_IMAGE="$IMAGE" OLLAMA_IMAGE="$OLLAMA_IMAGE" QABRIDGE_PORT="$CPORT" "${compose[@]}" -p "$project" -f docker/docker-compose.yml "$@"; }
cleanup_compose() { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup_compose EXIT
dc up -d >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log" >&2; exit 1; }
CURL="http://127.0.0.1:$CPORT"
ready=""
for _ in $(seq 1 240); do
  ready=$(curl -fsS "$CURL/api/health" 2>/dev/null || true)
  case "$ready" in *'"ready":true'*) break ;; esac
  sleep 1
done
case "$ready" in *'"ready":true'*) ;; *)
  dc logs --tail 40 >&2 || true
  say "FAIL: the compose bridge is not ready: $ready"; exit 1 ;;
esac
curl -fsS "$CURL/api/models" >"$WORK/compose-models.json"
curl -fsS "$CURL/api/qa" -H 'Content-Type: application/json' --data-binary @"$WORK/request.json" >"$WORK/compose.json"
python3 - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
models = json.loads((work / "compose-models.json").read_text())
got = json.loads((work / "compose.json").read_text())
ref = json.loads((work / "container.json").read_text())
src = {m["name"]: m["source"] for m in models["models"]}
print(f"compose  : {got['answer']!r} [{got['start']}:{got['end']}] score {got['score']:.4f} model {got['model']} ({src.get(got['model'])})")
ok = src.get(got["model"]) == "ollama" and (got["answer"], got["start"], got["end"]) == (ref["answer"], ref["start"], ref["end"])
sys.exit(0 if ok else 1)
PY
say "PASS: docker compose: the bridge answers through the Ollama-served model (Ollama image $OLLAMA_IMAGE)"
