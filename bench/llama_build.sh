#!/usr/bin/env bash
# Builds upstream llama.cpp's `llama-bench` and `llama-server` (the baselines of bench/compare.sh
# and bench/serve_compare.sh) from the sources vendored in the llama-cpp-python sdist on PyPI
# (version and sha256 pinned below), into one cached source and build tree:
#
#   bench/llama_build.sh                      # both targets
#   bench/llama_build.sh llama-server         # just one
#   source bench/llama_build.sh; llama_build llama-bench   # from another script
#
# After `llama_build`, $LLAMA_SRC is the source tree and $LLAMA_BIN the folder of the binaries
# ($BITNET_BENCH_CACHE/llama.cpp-<version>/build/bin, default ~/.cache/bitnet-bench/...).
# The build is `nice`d and uses $LLAMA_JOBS jobs (default: all cores). Already built targets
# are not rebuilt; the tree is configured once (GGML_NATIVE=ON, no libcurl), with AMX
# switched off where the CPU advertises it (AMX faults in these VMs).
LCP_VERSION=${LCP_VERSION:-0.3.36}
LCP_SHA256=${LCP_SHA256:-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}
LLAMA_CACHE=${BITNET_BENCH_CACHE:-$HOME/.cache/bitnet-bench}
LLAMA_SRC=$LLAMA_CACHE/llama.cpp-$LCP_VERSION
LLAMA_BIN=$LLAMA_SRC/build/bin

_llama_log() { echo "== $*" >&2; }

# Fetches and unpacks the sources (once).
_llama_sources() {
    [[ -f $LLAMA_SRC/CMakeLists.txt ]] && return 0
    mkdir -p "$LLAMA_CACHE"
    local sdist=$LLAMA_CACHE/llama_cpp_python-$LCP_VERSION.tar.gz
    if [[ ! -f $sdist ]]; then
        _llama_log "downloading llama-cpp-python $LCP_VERSION sdist from PyPI"
        python3 - "$LCP_VERSION" "$sdist" <<'PY'
import json, os, sys, urllib.request
ver, out = sys.argv[1], sys.argv[2]
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
url = next(f["url"] for f in files if f["filename"] == f"llama_cpp_python-{ver}.tar.gz")
urllib.request.urlretrieve(url, out + ".part")
os.replace(out + ".part", out)
PY
    fi
    echo "$LCP_SHA256  $sdist" | sha256sum -c - >&2
    rm -rf "$LLAMA_SRC" "$LLAMA_CACHE/src-tmp"
    mkdir -p "$LLAMA_CACHE/src-tmp"
    tar -xzf "$sdist" -C "$LLAMA_CACHE/src-tmp"
    mv "$LLAMA_CACHE/src-tmp/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" "$LLAMA_SRC"
    rm -rf "$LLAMA_CACHE/src-tmp"
    # The sdist keeps a submodule's .git pointer that leads nowhere outside its repository.
    rm -f "$LLAMA_SRC/.git"
}

# llama_build [TARGET...]: builds the targets (default llama-bench llama-server) not built yet.
llama_build() {
    local targets=("$@") missing=() t
    [[ ${#targets[@]} -gt 0 ]] || targets=(llama-bench llama-server)
    for t in "${targets[@]}"; do
        [[ -x $LLAMA_BIN/$t ]] || missing+=("$t")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if ! command -v cmake >/dev/null; then
        python3 -m pip install -q cmake
        # pip's scripts folder is not always on PATH (pyenv shims need a rehash).
        PATH=$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    fi
    _llama_sources
    local flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON
        -DLLAMA_BUILD_SERVER=ON)
    if grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | grep -qw 'amx_tile\|amx_int8\|amx_bf16'; then
        flags+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    fi
    # Configure when the tree was never configured or was configured with other flags
    # (an older compare.sh configured it with the server off).
    local stamp=$LLAMA_SRC/build/.bitnet-bench-flags
    if [[ ! -f $LLAMA_SRC/build/CMakeCache.txt || "$(cat "$stamp" 2>/dev/null)" != "${flags[*]}" ]]; then
        _llama_log "configuring llama.cpp ${flags[*]}"
        cmake -S "$LLAMA_SRC" -B "$LLAMA_SRC/build" "${flags[@]}" >/dev/null
        echo "${flags[*]}" >"$stamp"
    fi
    _llama_log "building ${missing[*]} (several minutes on 2 cores)"
    nice -n 10 cmake --build "$LLAMA_SRC/build" --target "${missing[@]}" -j "${LLAMA_JOBS:-$(nproc)}" >/dev/null
    for t in "${missing[@]}"; do
        [[ -x $LLAMA_BIN/$t ]] || { _llama_log "llama.cpp build produced no $LLAMA_BIN/$t"; return 1; }
    done
}

# Executed rather than sourced: build what the command line names.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    llama_build "$@"
    echo "$LLAMA_BIN"
fi
