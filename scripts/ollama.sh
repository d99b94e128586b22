#!/usr/bin/env bash
# Build and run a real Ollama (default v0.34.4; v0.24.0 kept as a second version) for qabridge
# tests and CI.
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
# are reachable, so llama.cpp comes from the llama-cpp-python sdist on PyPI
# (vendor/llama.cpp, the same tree qabridge's embedded engine is built from).
# Two build recipes, chosen by version:
#   >= 0.30 (v0.34.4): ollama runs llama.cpp's `llama-server` as a subprocess.
#           cmake builds llama-server from ollama's llama/server/CMakeLists.txt
#           with OLLAMA_LLAMA_CPP_SOURCE=<sdist llama.cpp> (no git fetch; the
#           compat patch for old published blobs is not applied) and installs
#           it into $PREFIX/lib/ollama; `go build` writes $PREFIX/bin/ollama,
#           which finds ../lib/ollama/llama-server beside itself.
#   <  0.30 (v0.24.0): llama.cpp/ggml are compiled into the Go binary by cgo.
#           The module zip drops every `vendor` folder, so
#           llama/llama.cpp/vendor/{nlohmann,stb,miniaudio} are taken from the
#           sdist.
# v0.30-v0.33 build with the first recipe but rewrite every imported GGUF
# through llama-quantize at create time; they are not test targets.
#
# Environment:
#   QABRIDGE_CACHE              cache root (default ~/.cache/qabridge); builds
#                               under $QABRIDGE_CACHE/ollama/v$VERSION/<flags>/
#   QABRIDGE_OLLAMA_VERSION     ollama version to build (default 0.34.4)
#   QABRIDGE_OLLAMA_BIN         use this binary, never build
#   QABRIDGE_USE_SYSTEM_OLLAMA  =1: use `ollama` from PATH if there is one
#   QABRIDGE_OLLAMA_STATE       state dir: models, log, pidfile
#                               (default $PWD/.cache/ollama)
#   QABRIDGE_OLLAMA_MODELS      models dir (default $STATE/models)
#   QABRIDGE_OLLAMA_PORT        fixed port instead of a free one
#   QABRIDGE_OLLAMA_START_TIMEOUT  seconds to wait for the server (default 60)
#   QABRIDGE_OLLAMA_STOP_TIMEOUT   seconds before SIGKILL (default 15)
#   QABRIDGE_LCP_VERSION        llama-cpp-python sdist for llama.cpp (0.3.36)
#   QABRIDGE_OLLAMA_BUILD_JOBS  cmake -j / go build -p (default: nproc)
#   QABRIDGE_OLLAMA_CMAKE_ARGS  (>= 0.30) ggml CPU options for llama-server
#                               (default: -DGGML_NATIVE=OFF plus the CPU's
#                               AVX/AVX2/FMA/F16C/AVX-512 switches, as
#                               scripts/setup.sh builds llama-cpp-python)
#   QABRIDGE_OLLAMA_REUSE_WHEEL (>= 0.30) =0: build all of llama.cpp even when
#                               scripts/setup.sh's llama-cpp-python wheel (same
#                               sdist, same switches) has its libraries (default
#                               1: compile only llama-server and link to those)
#   QABRIDGE_OLLAMA_CFLAGS      (< 0.30) CGO_CFLAGS/CGO_CXXFLAGS (default -O2
#                               plus the CPU's -mavx -mavx2 -mfma -mf16c)
set -euo pipefail

OLLAMA_VERSION="${QABRIDGE_OLLAMA_VERSION:-0.34.4}"
OLLAMA_VERSION="${OLLAMA_VERSION#v}"
CACHE_ROOT="${QABRIDGE_CACHE:-${HOME:-/tmp}/.cache/qabridge}"
OLLAMA_CACHE="$CACHE_ROOT/ollama/v$OLLAMA_VERSION"
LCP_VERSION="${QABRIDGE_LCP_VERSION:-0.3.36}"
BUILD_JOBS="${QABRIDGE_OLLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

version_ge() {  # $1 >= $2 (dotted versions)
    [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]
}
# Ollama v0.30 replaced its cgo engine with an upstream llama-server subprocess.
if version_ge "$OLLAMA_VERSION" 0.30.0; then ENGINE=llama-server; else ENGINE=cgo; fi

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
# The same switches scripts/setup.sh gives llama-cpp-python: explicit ones rather than
# GGML_NATIVE, so the cache key below names every instruction set the build may use and a
# machine with another CPU builds its own instead of crashing on ours.
ggml_cpu_args() {
    local args="-DGGML_NATIVE=OFF" have pair
    have=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512_vnni:AVX512_VNNI \
                avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI; do
        if [[ "$have" == *" ${pair%%:*} "* ]]; then args="$args -DGGML_${pair##*:}=ON"; fi
    done
    printf '%s' "$args"
}
if [[ $ENGINE == llama-server ]]; then
    LLAMA_CMAKE_ARGS="${QABRIDGE_OLLAMA_CMAKE_ARGS:-$(ggml_cpu_args)}"
    FLAGS_TAG=$(printf 'lcp-%s %s' "$LCP_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)
    PREFIX="$OLLAMA_CACHE/$FLAGS_TAG"   # bin/ollama + lib/ollama/llama-server, libllama.so, ...
    BUILT_BIN="$PREFIX/bin/ollama"
else
    OLLAMA_CFLAGS="${QABRIDGE_OLLAMA_CFLAGS:--O2$(simd_flags)}"
    FLAGS_TAG=$(printf '%s' "$OLLAMA_CFLAGS" | sha256sum | cut -c1-8)
    BUILT_BIN="$OLLAMA_CACHE/$FLAGS_TAG/ollama"
fi

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

# The llama-cpp-python sdist from PyPI, downloaded once and checked; prints its path.
fetch_sdist() {
    local dl="$CACHE_ROOT/downloads" py sdist tmp f
    py="$(python_bin)"
    mkdir -p "$dl"
    sdist="$dl/llama_cpp_python-$LCP_VERSION.tar.gz"
    if [[ ! -s "$sdist" ]]; then
        log "downloading llama-cpp-python==$LCP_VERSION sdist from PyPI (vendored llama.cpp)"
        tmp="$(mktemp -d "$dl/pip.XXXXXX")"
        if ! "$py" -m pip download --quiet --no-deps --no-binary :all: \
                "llama-cpp-python==$LCP_VERSION" -d "$tmp" >&2; then
            log "pip download failed; trying the PyPI JSON API directly"
            local url
            url="$("$py" - "$LCP_VERSION" <<'PYEOF'
import json, sys, urllib.request
v = sys.argv[1]
with urllib.request.urlopen(f"https://pypi.org/pypi/llama-cpp-python/{v}/json", timeout=60) as r:
    data = json.load(r)
print(next(u["url"] for u in data["urls"] if u["packagetype"] == "sdist"))
PYEOF
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
    printf '%s\n' "$sdist"
}

# Extract the vendor headers of the sdist's llama.cpp into $1 (the < 0.30 recipe).
fetch_vendor_headers() {
    local dest="$1" sdist top f
    sdist="$(fetch_sdist)"
    top="llama_cpp_python-$LCP_VERSION"
    mkdir -p "$dest"
    local members=()
    for f in "${VENDOR_FILES[@]}"; do members+=("$top/vendor/llama.cpp/vendor/$f"); done
    tar -xzf "$sdist" -C "$dest" --strip-components=4 "${members[@]}"
    for f in "${VENDOR_FILES[@]}"; do
        [[ -s "$dest/$f" ]] || die "sdist lacks vendor/llama.cpp/vendor/$f"
    done
}

# The sdist's whole llama.cpp tree, extracted once and shared read-only by every build
# (cmake writes only into its build dir); prints its path. Caller holds a build lock.
llama_cpp_source() {
    local dest="$CACHE_ROOT/src/llama.cpp-lcp-$LCP_VERSION" sdist tmp
    if [[ ! -f "$dest/CMakeLists.txt" || ! -d "$dest/tools/server" ]]; then
        sdist="$(fetch_sdist)"
        mkdir -p "$CACHE_ROOT/src"
        tmp="$(mktemp -d "$CACHE_ROOT/src/.extract.XXXXXX")"
        tar -xzf "$sdist" -C "$tmp" --strip-components=2 "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
        [[ -f "$tmp/llama.cpp/tools/server/CMakeLists.txt" ]] || die "sdist lacks vendor/llama.cpp/tools/server"
        rm -rf "$dest"
        mv "$tmp/llama.cpp" "$dest"
        rm -rf "$tmp"
    fi
    printf '%s\n' "$dest"
}

# `go mod download` the ollama module; prints its (read-only) dir in the module cache.
ollama_module_dir() {  # $1 = a scratch dir to run go in
    local modjson moddir
    modjson="$(cd "$1" && GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-local}" \
        go mod download -json "github.com/ollama/ollama@v$OLLAMA_VERSION")" \
        || die "go mod download github.com/ollama/ollama@v$OLLAMA_VERSION failed"
    moddir="$(printf '%s' "$modjson" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p' | head -n1)"
    [[ -d "$moddir" ]] || die "no module Dir in: $modjson"
    printf '%s\n' "$moddir"
}

# Serialise concurrent builds (parallel CI jobs sharing a cache): holds the lock on fd 9 and
# returns 1 to build; returns 0 (lock released) when another build already made the binary.
build_lock() {
    mkdir -p "$OLLAMA_CACHE"
    exec 9>"$OLLAMA_CACHE/.build.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9 || die "cannot lock $OLLAMA_CACHE/.build.lock"
    fi
    if [[ -x "$BUILT_BIN" ]]; then exec 9>&-; return 0; fi
    return 1
}

# Ollama < 0.30: one Go binary with llama.cpp/ggml compiled in by cgo.
build_go_engine() {
    build_lock && return 0

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

# The llama-cpp-python wheel scripts/setup.sh built from the same sdist with the same ggml
# switches (its cache key, recomputed here) holds libggml*, libllama, libllama-common and libmtmd:
# all llama-server needs besides its own sources, about 80% of its compile time. Extracts them into
# $1/lib and prints $1; fails when there is no such wheel (then llama.cpp is built in full).
wheel_lib_dir() {
    local dest="$1" args tag whl f
    [[ -z "${QABRIDGE_OLLAMA_CMAKE_ARGS:-}" ]] || return 1
    args="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
    args="$args -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF${LLAMA_CMAKE_ARGS#-DGGML_NATIVE=OFF}"
    tag=$(printf '%s %s' "$LCP_VERSION" "$args" | sha256sum | cut -c1-12)
    whl=$(find "$CACHE_ROOT/wheels/llama-cpp-python-$tag" -maxdepth 1 \
        -name "llama_cpp_python-$LCP_VERSION-*.whl" 2>/dev/null | head -n1)
    [[ -n "$whl" ]] || return 1
    rm -rf "$dest"
    "$(python_bin)" - "$whl" "$dest/lib" <<'PYEOF' || return 1
import os, sys, zipfile
whl, dest = sys.argv[1:]
os.makedirs(dest)
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("lib/") and n.count("/") == 1 and ".so" in n:
            with z.open(n) as src, open(os.path.join(dest, n[4:]), "wb") as out:
                out.write(src.read())
PYEOF
    for f in libggml-base libggml-cpu libggml libllama libllama-common libmtmd; do
        [[ -f "$dest/lib/$f.so.0" ]] || return 1
    done
    printf '%s\n' "$dest"
}

# Compile only llama-server's own objects in the configured build dir $1 and link them against
# the libraries in $2; install into $3/lib/ollama as `cmake --install` would ($4: llama.cpp source).
server_on_wheel_libs() {
    local bdir="$1" libs="$2" stage="$3" lsrc="$4" objs cxx
    set -x
    objs=$(ninja -C "$bdir" -t targets all | sed -n \
        -e 's/^\([^:]*\/\(tools\/server\|tools\/ui\|vendor\/cpp-httplib\)\/CMakeFiles\/[^:]*\.o\): .*/\1/p' \
        -e 's/^\([^:]*\/common\/CMakeFiles\/llama-common-base\.dir\/[^:]*\.o\): .*/\1/p' | sort -u)
    [[ -n "$objs" ]] || return 1
    # shellcheck disable=SC2086  # a list of object paths
    ninja -C "$bdir" -j "$BUILD_JOBS" $objs || return 1
    cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$bdir/CMakeCache.txt")
    rm -rf "$stage"
    mkdir -p "$stage/lib/ollama"
    cp -a "$libs"/*.so* "$stage/lib/ollama/"
    # shellcheck disable=SC2086,SC2016  # object paths; $ORIGIN is for the dynamic linker
    (cd "$bdir" && "${cxx:-g++}" -O3 -o "$stage/lib/ollama/llama-server" $objs -L"$stage/lib/ollama" \
        -l:libllama-common.so.0 -l:libmtmd.so.0 -l:libllama.so.0 -l:libggml.so.0 \
        -l:libggml-cpu.so.0 -l:libggml-base.so.0 -pthread -Wl,-rpath,'$ORIGIN') || return 1
    cp "$lsrc/LICENSE" "$stage/lib/ollama/LLAMA_CPP_LICENSE"
    cp "$lsrc/vendor/cpp-httplib/LICENSE" "$stage/lib/ollama/CPP_HTTPLIB_LICENSE"
    cp "$bdir/ollama-vendor-licenses/LLAMA_CPP_VENDORS_LICENSE" "$stage/lib/ollama/" 2>/dev/null || true
    "$stage/lib/ollama/llama-server" --version || return 1
}

# Ollama >= 0.30: llama-server (cmake, from the sdist's llama.cpp) + the Go binary, installed
# as $PREFIX/{bin/ollama,lib/ollama/}. The work dir survives a failed build, so a rerun
# continues cmake's build instead of starting over; a success replaces $PREFIX atomically.
build_llama_server() {
    build_lock && return 0

    command -v go >/dev/null 2>&1 || die "go is needed to build ollama"
    command -v cmake >/dev/null 2>&1 || die "cmake (>= 3.24) is needed to build llama-server"
    command -v gcc >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 \
        || die "gcc and g++ are needed (llama.cpp)"

    local t0 t1 work src lsrc bdir stage gen=() blog rc=0 llama_secs go_secs
    t0="$(date +%s)"
    work="$OLLAMA_CACHE/build-$FLAGS_TAG"
    src="$work/src"
    bdir="$work/llama-server"
    stage="$work/prefix"
    blog="$OLLAMA_CACHE/build.log"
    mkdir -p "$work"
    log "building ollama v$OLLAMA_VERSION with llama-server (one-time; 5-25 min on 2 cores); log: $blog"
    : >"$blog"

    # A fresh writable copy of the module each time (cmake's build dir keys on this path).
    [[ -e "$src" ]] && { chmod -R u+w "$src"; rm -rf "$src"; }
    cp -R "$(ollama_module_dir "$work")" "$src"
    chmod -R u+w "$src"
    lsrc="$(llama_cpp_source)"
    command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
    if [[ -f "$bdir/CMakeCache.txt" ]] && ! grep -q "^CMAKE_GENERATOR:INTERNAL=${gen[1]:-Unix Makefiles}\$" "$bdir/CMakeCache.txt"; then
        rm -rf "$bdir"
    fi

    # shellcheck disable=SC2086  # LLAMA_CMAKE_ARGS is a list of -D switches
    (
        set -x
        OLLAMA_LLAMA_CPP_SOURCE="$lsrc" cmake -S "$src/llama/server" -B "$bdir" "${gen[@]}" \
            -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=OFF \
            -DGGML_OPENMP=OFF -DOLLAMA_RUNNER_DIR= $LLAMA_CMAKE_ARGS
    ) >>"$blog" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || { tail -n 40 "$blog" >&2; die "cmake configure failed (rc=$rc); full log: $blog"; }

    local wheel_libs="" llama_libs="built here"
    if [[ "${QABRIDGE_OLLAMA_REUSE_WHEEL:-1}" == 1 && "${gen[1]:-}" == Ninja ]] \
            && wheel_libs="$(wheel_lib_dir "$work/wheel-libs")"; then
        log "reusing the llama.cpp libraries of scripts/setup.sh's llama-cpp-python wheel; compiling llama-server only"
        if (server_on_wheel_libs "$bdir" "$wheel_libs/lib" "$stage" "$lsrc") >>"$blog" 2>&1; then
            llama_libs="llama-cpp-python==$LCP_VERSION wheel (scripts/setup.sh)"
        else
            log "reusing them failed (see $blog); building llama.cpp in full"
        fi
    fi
    if [[ "$llama_libs" == "built here" ]]; then
        (
            set -x
            cmake --build "$bdir" --target llama-server -j "$BUILD_JOBS"
            rm -rf "$stage"
            cmake --install "$bdir" --prefix "$stage" --component llama-server
        ) >>"$blog" 2>&1 || rc=$?
        if [[ $rc -ne 0 ]]; then
            tail -n 40 "$blog" >&2
            die "llama-server build failed (rc=$rc); full log: $blog (rerun continues it)"
        fi
    fi
    [[ -x "$stage/lib/ollama/llama-server" ]] || die "no $stage/lib/ollama/llama-server after cmake --install"
    t1="$(date +%s)"; llama_secs=$(( t1 - t0 ))
    log "llama-server built in ${llama_secs}s"

    mkdir -p "$stage/bin"
    (
        cd "$src"
        export CGO_ENABLED=1 GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
        set -x
        go build -p "$BUILD_JOBS" -trimpath -buildvcs=false \
            -ldflags "-w -s -X=github.com/ollama/ollama/version.Version=$OLLAMA_VERSION -X=github.com/ollama/ollama/server.mode=release" \
            -o "$stage/bin/ollama" .
    ) >>"$blog" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 40 "$blog" >&2
        die "go build failed (rc=$rc); full log: $blog"
    fi
    go_secs=$(( $(date +%s) - t1 ))
    "$stage/bin/ollama" --version >/dev/null 2>&1 || die "built binary does not run"
    "$stage/lib/ollama/llama-server" --version >>"$blog" 2>&1 || die "built llama-server does not run (see $blog)"

    local secs=$(( $(date +%s) - t0 ))
    {
        echo "version=$OLLAMA_VERSION"
        echo "engine=llama-server"
        echo "llama_cpp=llama-cpp-python==$LCP_VERSION sdist (vendor/llama.cpp)"
        echo "go=$(go env GOVERSION)"
        echo "cmake=$(cmake --version | head -n1)"
        echo "jobs=$BUILD_JOBS"
        echo "cmake_args=$LLAMA_CMAKE_ARGS"
        echo "llama_libs=$llama_libs"
        echo "llama_server_seconds=$llama_secs"
        echo "go_seconds=$go_secs"
        echo "build_seconds=$secs"
        echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$stage/build-info.txt"
    cp "$stage/build-info.txt" "$OLLAMA_CACHE/build-info.txt"
    rm -rf "$PREFIX"
    mv "$stage" "$PREFIX"   # publish: bin/ollama appears with its lib/ollama
    log "built $BUILT_BIN in ${secs}s (llama-server ${llama_secs}s, go ${go_secs}s)"
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
    exec 9>&-
}

do_build() {
    if [[ $ENGINE == llama-server ]]; then build_llama_server; else build_go_engine; fi
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
