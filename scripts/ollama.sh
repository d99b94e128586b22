#!/usr/bin/env bash
# Build and run a real Ollama (default v0.24.0) for qabridge tests and CI.
#
# Usage: scripts/ollama.sh [build|start|stop|status|help]
#
#   build   (default) build ollama from the Go module proxy unless cached;
#           last line of stdout: the binary path.
#   start   build if needed, start `ollama serve` on a free loopback port,
#           wait until GET /api/version answers; last line of stdout:
#           OLLAMA_HOST=127.0.0.1:PORT. Reuses a server this script started.
#   stop    stop the server this script started (TERM, then KILL); exit 0 if
#           none is running.
#   status  print host and version of that server; exit 1 if not running.
#
# Why a source build: only PyPI, the Go module proxy, npm and Debian mirrors
# are reachable. The module zip of github.com/ollama/ollama drops every
# `vendor` folder, so llama/llama.cpp/vendor/{nlohmann,stb,miniaudio} are
# missing; they are taken from the llama-cpp-python sdist on PyPI, which
# vendors the same llama.cpp tree.
#
# Environment:
#   QABRIDGE_CACHE              cache root (default ~/.cache/qabridge); binary
#                               at $QABRIDGE_CACHE/ollama/v$VERSION/ollama
#   QABRIDGE_OLLAMA_VERSION     ollama version to build (default 0.24.0)
#   QABRIDGE_OLLAMA_BIN         use this binary, never build
#   QABRIDGE_USE_SYSTEM_OLLAMA  =1: use `ollama` from PATH if there is one
#   QABRIDGE_OLLAMA_STATE       state dir: models, log, pidfile
#                               (default $PWD/.cache/ollama)
#   QABRIDGE_OLLAMA_MODELS      models dir (default $STATE/models)
#   QABRIDGE_OLLAMA_PORT        fixed port instead of a free one
#   QABRIDGE_OLLAMA_START_TIMEOUT  seconds to wait for the server (default 60)
#   QABRIDGE_OLLAMA_STOP_TIMEOUT   seconds before SIGKILL (default 15)
#   QABRIDGE_LCP_VERSION        llama-cpp-python sdist for the headers (0.3.36)
#   QABRIDGE_OLLAMA_BUILD_JOBS  go build -p (default: nproc)
#   QABRIDGE_OLLAMA_CFLAGS      CGO_CFLAGS/CGO_CXXFLAGS (default -O2 plus the
#                               CPU's -mavx -mavx2 -mfma -mf16c)
set -euo pipefail

OLLAMA_VERSION="${QABRIDGE_OLLAMA_VERSION:-0.24.0}"
OLLAMA_VERSION="${OLLAMA_VERSION#v}"
CACHE_ROOT="${QABRIDGE_CACHE:-${HOME:-/tmp}/.cache/qabridge}"
OLLAMA_CACHE="$CACHE_ROOT/ollama/v$OLLAMA_VERSION"
# ggml's SIMD paths are chosen at compile time by -m flags; a plain build is generic
# x86-64 and ran ~10x slower here. Use what this CPU has (the binary is cached per flags).
simd_flags() {
    local f="" have
    have=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
    for x in avx avx2 fma f16c; do
        if [[ " $have " == *" $x "* ]]; then f="$f -m$x"; fi
    done
    printf '%s' "$f"
}
OLLAMA_CFLAGS="${QABRIDGE_OLLAMA_CFLAGS:--O2$(simd_flags)}"
FLAGS_TAG=$(printf '%s' "$OLLAMA_CFLAGS" | sha256sum | cut -c1-8)
BUILT_BIN="$OLLAMA_CACHE/$FLAGS_TAG/ollama"

LCP_VERSION="${QABRIDGE_LCP_VERSION:-0.3.36}"
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI (checked when pinned).
LCP_SHA256_0_3_36="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# Header files ollama's llama.cpp vendor dir must provide (see .rsync-filter).
VENDOR_FILES=(nlohmann/json.hpp nlohmann/json_fwd.hpp stb/stb_image.h miniaudio/miniaudio.h)

STATE_DIR="${QABRIDGE_OLLAMA_STATE:-$PWD/.cache/ollama}"
PIDFILE="$STATE_DIR/ollama.pid"
HOSTFILE="$STATE_DIR/ollama.host"
LOGFILE="$STATE_DIR/ollama.log"
START_TIMEOUT="${QABRIDGE_OLLAMA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${QABRIDGE_OLLAMA_STOP_TIMEOUT:-15}"

log() { printf 'ollama.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- build ----

python_bin() {
    if command -v python3 >/dev/null 2>&1; then echo python3
    elif command -v python >/dev/null 2>&1; then echo python
    else die "python3 is needed (pip download, free port)"; fi
}

# Download the llama-cpp-python sdist and extract the vendor headers into $1.
fetch_vendor_headers() {
    local dest="$1" dl="$CACHE_ROOT/downloads" py sdist top tmp f
    py="$(python_bin)"
    mkdir -p "$dl"
    sdist="$dl/llama_cpp_python-$LCP_VERSION.tar.gz"
    if [[ ! -s "$sdist" ]]; then
        log "downloading llama-cpp-python==$LCP_VERSION sdist from PyPI (vendored llama.cpp headers)"
        tmp="$(mktemp -d "$dl/pip.XXXXXX")"
        if ! "$py" -m pip download --quiet --no-deps --no-binary :all: \
                "llama-cpp-python==$LCP_VERSION" -d "$tmp" >&2; then
            log "pip download failed; trying the PyPI JSON API directly"
            local url
            url="$("$py" - "$LCP_VERSION" <<'EOF'
import json, sys, urllib.request
v = sys.argv[1]
with urllib.request.urlopen(f"https://pypi.org/pypi/llama-cpp-python/{v}/json", timeout=60) as r:
    data = json.load(r)
print(next(u["url"] for u in data["urls"] if u["packagetype"] == "sdist"))
EOF
)"
            curl -fsSL --retry 3 -o "$tmp/llama_cpp_python-$LCP_VERSION.tar.gz" "$url"
        fi
        f="$tmp/llama_cpp_python-$LCP_VERSION.tar.gz"
        [[ -s "$f" ]] || die "no llama-cpp-python sdist downloaded"
        mv "$f" "$sdist"
        rm -rf "$tmp"
    fi
    if [[ "$LCP_VERSION" == "0.3.36" ]]; then
        echo "$LCP_SHA256_0_3_36  $sdist" | sha256sum -c --quiet - >&2 \
            || { rm -f "$sdist"; die "sha256 mismatch for $sdist (removed; rerun)"; }
    fi
    top="llama_cpp_python-$LCP_VERSION"
    mkdir -p "$dest"
    local members=()
    for f in "${VENDOR_FILES[@]}"; do members+=("$top/vendor/llama.cpp/vendor/$f"); done
    tar -xzf "$sdist" -C "$dest" --strip-components=4 "${members[@]}"
    for f in "${VENDOR_FILES[@]}"; do
        [[ -s "$dest/$f" ]] || die "sdist lacks vendor/llama.cpp/vendor/$f"
    done
}

do_build() {
    mkdir -p "$OLLAMA_CACHE"
    # Serialise concurrent builds (parallel CI jobs sharing a cache).
    exec 9>"$OLLAMA_CACHE/.build.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9 || die "cannot lock $OLLAMA_CACHE/.build.lock"
    fi
    if [[ -x "$BUILT_BIN" ]]; then exec 9>&-; return 0; fi

    command -v go >/dev/null 2>&1 || die "go is needed to build ollama"
    command -v gcc >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 \
        || die "gcc and g++ are needed (cgo build of llama.cpp/ggml)"

    local t0 work src modjson moddir jobs flags rc=0
    t0="$(date +%s)"
    # Fixed path (we hold the lock): Go's build cache keys cgo objects on the
    # source path, so a rebuild after deleting the binary reuses them.
    work="$OLLAMA_CACHE/build"
    [[ -e "$work" ]] && { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
    mkdir -p "$work"
    # shellcheck disable=SC2064
    trap "chmod -R u+w '$work' 2>/dev/null; rm -rf '$work'" EXIT
    log "building ollama v$OLLAMA_VERSION (one-time; ~tens of minutes on 2 cores); log: $OLLAMA_CACHE/build.log"

    modjson="$(cd "$work" && GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-local}" \
        go mod download -json "github.com/ollama/ollama@v$OLLAMA_VERSION")" \
        || die "go mod download github.com/ollama/ollama@v$OLLAMA_VERSION failed"
    moddir="$(printf '%s' "$modjson" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p' | head -n1)"
    [[ -d "$moddir" ]] || die "no module Dir in: $modjson"

    src="$work/src"
    cp -R "$moddir" "$src"
    chmod -R u+w "$src"
    fetch_vendor_headers "$src/llama/llama.cpp/vendor"

    jobs="${QABRIDGE_OLLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
    flags="$OLLAMA_CFLAGS"
    mkdir -p "$(dirname "$BUILT_BIN")"
    (
        cd "$src"
        export CGO_ENABLED=1 CGO_CFLAGS="$flags" CGO_CXXFLAGS="$flags"
        export GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
        go build -p "$jobs" -trimpath -buildvcs=false \
            -ldflags "-w -s -X=github.com/ollama/ollama/version.Version=$OLLAMA_VERSION -X=github.com/ollama/ollama/server.mode=release" \
            -o "$work/ollama" .
    ) >"$OLLAMA_CACHE/build.log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 40 "$OLLAMA_CACHE/build.log" >&2
        die "go build failed (rc=$rc); full log: $OLLAMA_CACHE/build.log"
    fi
    "$work/ollama" --version >/dev/null 2>&1 || die "built binary does not run"
    mv -f "$work/ollama" "$BUILT_BIN.tmp"
    mv -f "$BUILT_BIN.tmp" "$BUILT_BIN"   # atomic publish
    local secs=$(( $(date +%s) - t0 ))
    {
        echo "version=$OLLAMA_VERSION"
        echo "headers=llama-cpp-python==$LCP_VERSION"
        echo "go=$(go env GOVERSION)"
        echo "jobs=$jobs"
        echo "cflags=$flags"
        echo "build_seconds=$secs"
        echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$OLLAMA_CACHE/build-info.txt"
    log "built $BUILT_BIN in ${secs}s"
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
    trap - EXIT
    exec 9>&-
}

# Decide which binary to use; build when needed. Prints the path.
resolve_bin() {
    local bin
    if [[ -n "${QABRIDGE_OLLAMA_BIN:-}" ]]; then
        bin="$QABRIDGE_OLLAMA_BIN"
        [[ -x "$bin" ]] || die "QABRIDGE_OLLAMA_BIN=$bin is not executable"
        log "using ollama from QABRIDGE_OLLAMA_BIN: $bin"
    elif [[ "${QABRIDGE_USE_SYSTEM_OLLAMA:-0}" == 1 ]] && bin="$(command -v ollama 2>/dev/null)"; then
        log "using system ollama (QABRIDGE_USE_SYSTEM_OLLAMA=1): $bin"
    else
        if [[ -z "${QABRIDGE_USE_SYSTEM_OLLAMA:-}" ]] && command -v ollama >/dev/null 2>&1; then
            log "note: ignoring $(command -v ollama) on PATH (set QABRIDGE_USE_SYSTEM_OLLAMA=1 to use it)"
        fi
        if [[ -x "$BUILT_BIN" ]]; then
            log "using cached ollama v$OLLAMA_VERSION: $BUILT_BIN"
        else
            do_build
            log "using built ollama v$OLLAMA_VERSION: $BUILT_BIN"
        fi
        bin="$BUILT_BIN"
    fi
    printf '%s\n' "$bin"
}

# --------------------------------------------------------------- server ----

free_port() {
    "$(python_bin)" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# PID from the pidfile if that process is alive and is an ollama server.
running_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then   # guard against PID reuse
        local argv1
        argv1="$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 2p)"
        [[ "$argv1" == serve ]] || return 1
    fi
    printf '%s\n' "$pid"
}

version_reply() {  # $1 = host:port
    curl -fsS --max-time 3 "http://$1/api/version" 2>/dev/null
}

# $1 = pid, $2 = host:port, $3 = log offset of this start (optional).
# 0 when answering, 2 when the process died, 1 on timeout. With $3, the answer
# only counts once the log says this process listens on $2 (another server
# could hold the port).
wait_ready() {
    local deadline=$(( $(date +%s) + START_TIMEOUT ))
    while (( $(date +%s) < deadline )); do
        kill -0 "$1" 2>/dev/null || return 2
        if [[ -z "${3:-}" ]] || tail -c "+$(( $3 + 1 ))" "$LOGFILE" 2>/dev/null | grep -qF "Listening on $2"; then
            if version_reply "$2" >/dev/null; then
                kill -0 "$1" 2>/dev/null || return 2
                return 0
            fi
        fi
        sleep 0.25
    done
    return 1
}

do_stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE" "$HOSTFILE"
        log "no ollama server running (state: $STATE_DIR)"
        return 0
    fi
    log "stopping ollama server pid $pid"
    # The server is a session/group leader (setsid): signal the group so that
    # runner subprocesses go too.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < STOP_TIMEOUT * 4; i++ )); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after ${STOP_TIMEOUT}s; SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$PIDFILE" "$HOSTFILE"
    return 0
}

do_start() {
    local bin pid host port attempt rc models offset
    mkdir -p "$STATE_DIR"
    if pid="$(running_pid)" && [[ -s "$HOSTFILE" ]]; then
        host="$(cat "$HOSTFILE")"
        if wait_ready "$pid" "$host"; then
            log "ollama already running: pid $pid at $host"
            printf 'OLLAMA_HOST=%s\n' "$host"
            return 0
        fi
        log "pid $pid does not answer at $host; restarting"
        do_stop
    fi
    rm -f "$PIDFILE" "$HOSTFILE"

    bin="$(resolve_bin)"
    models="${QABRIDGE_OLLAMA_MODELS:-$STATE_DIR/models}"
    mkdir -p "$models" "$STATE_DIR/home"

    for attempt in 1 2 3; do
        port="${QABRIDGE_OLLAMA_PORT:-$(free_port)}"
        host="127.0.0.1:$port"
        log "starting $bin serve at $host (models: $models, log: $LOGFILE)"
        printf '\n==== %s start %s at %s\n' "$(date -u +%FT%TZ)" "$bin" "$host" >>"$LOGFILE"
        offset="$(wc -c <"$LOGFILE")"
        # setsid: own session/process group (no SIGHUP from the caller's
        # terminal; `stop` signals the whole group). HOME is private so the
        # server's ~/.ollama key does not touch the user's.
        env -u OLLAMA_ORIGINS \
            HOME="$STATE_DIR/home" \
            OLLAMA_HOST="$host" \
            OLLAMA_MODELS="$models" \
            OLLAMA_NOPRUNE=1 \
            OLLAMA_NO_CLOUD=1 \
            OLLAMA_NOHISTORY=1 \
            DO_NOT_TRACK=1 \
            setsid "$bin" serve >>"$LOGFILE" 2>&1 </dev/null &
        pid=$!
        printf '%s\n' "$pid" >"$PIDFILE"
        printf '%s\n' "$host" >"$HOSTFILE"
        rc=0; wait_ready "$pid" "$host" "$offset" || rc=$?
        if [[ $rc -eq 0 ]]; then
            log "ollama $(version_reply "$host") ready: pid $pid at $host"
            printf 'OLLAMA_HOST=%s\n' "$host"
            return 0
        fi
        if [[ $rc -eq 2 ]]; then
            log "server exited during startup (attempt $attempt); log tail:"
            tail -n 20 "$LOGFILE" >&2
            rm -f "$PIDFILE" "$HOSTFILE"
            [[ -z "${QABRIDGE_OLLAMA_PORT:-}" ]] && tail -n 20 "$LOGFILE" | grep -q 'address already in use' && continue
            die "ollama serve failed to start"
        fi
        log "no answer from $host within ${START_TIMEOUT}s; log tail:"
        tail -n 20 "$LOGFILE" >&2
        do_stop
        die "ollama serve did not become ready"
    done
    die "ollama serve failed to start after 3 attempts"
}

do_status() {
    local pid host ver
    if pid="$(running_pid)" && [[ -s "$HOSTFILE" ]]; then
        host="$(cat "$HOSTFILE")"
        if ver="$(version_reply "$host")"; then
            printf 'OLLAMA_HOST=%s\n' "$host"
            printf 'pid=%s\n' "$pid"
            printf 'version=%s\n' "$(printf '%s' "$ver" | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')"
            return 0
        fi
        log "pid $pid alive but not answering at $host"
        return 1
    fi
    log "not running (state: $STATE_DIR)"
    return 1
}

case "${1:-build}" in
    build) resolve_bin ;;
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown command: $1 (build|start|stop|status)" ;;
esac
