#!/usr/bin/env bash
# Side-by-side benchmark: upstream llama.cpp (TQ2_0, built from the sources vendored in the
# llama-cpp-python sdist on PyPI) against `bitnet bench` (I2_S, TQ2_0, TQ1_0) on the same
# synthetic 2B4T-shaped model, at 1 and 2 threads, plus the decode roofline.
#
#   bench/compare.sh                 # REPS=5 by default; REPS=9 for the issue's figure
# Reference build and models are cached in $BITNET_BENCH_CACHE (default ~/.cache/bitnet-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}
PP=${PP:-128}
TG=${TG:-128}
THREADS=${THREADS:-"1 2"}
LCP_VERSION=${LCP_VERSION:-0.3.36}
LCP_SHA256=${LCP_SHA256:-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}
CACHE=${BITNET_BENCH_CACHE:-$HOME/.cache/bitnet-bench}
mkdir -p "$CACHE"

log() { echo "== $*" >&2; }

# 1. This project's binary.
log "building bitnet (release)"
cargo build --release -q -p bitnet-cli
BITNET=$PWD/target/release/bitnet

# 2. The reference llama.cpp build (cached).
LLAMA_BENCH=$CACHE/llama.cpp-$LCP_VERSION/build/bin/llama-bench
if [[ ! -x $LLAMA_BENCH ]]; then
    command -v cmake >/dev/null || python3 -m pip install -q cmake
    SDIST=$CACHE/llama_cpp_python-$LCP_VERSION.tar.gz
    if [[ ! -f $SDIST ]]; then
        log "downloading llama-cpp-python $LCP_VERSION sdist from PyPI"
        python3 - "$LCP_VERSION" "$SDIST" <<'PY'
import json, sys, urllib.request
ver, out = sys.argv[1], sys.argv[2]
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
url = next(f["url"] for f in files if f["filename"] == f"llama_cpp_python-{ver}.tar.gz")
urllib.request.urlretrieve(url, out + ".part")
import os; os.replace(out + ".part", out)
PY
    fi
    echo "$LCP_SHA256  $SDIST" | sha256sum -c - >&2
    SRC=$CACHE/llama.cpp-$LCP_VERSION
    rm -rf "$SRC" "$CACHE/src-tmp"
    mkdir -p "$CACHE/src-tmp"
    tar -xzf "$SDIST" -C "$CACHE/src-tmp"
    mv "$CACHE/src-tmp/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" "$SRC"
    rm -rf "$CACHE/src-tmp"
    # The sdist keeps a submodule's .git pointer that leads nowhere outside its repository.
    rm -f "$SRC/.git"
    log "building llama-bench (a few minutes on 2 cores)"
    cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF >/dev/null
    cmake --build "$SRC/build" --target llama-bench -j "$(nproc)" >/dev/null
fi

# 3. Models: same seed and shapes; llama.cpp needs the upstream architecture name.
MODELS=$CACHE/models
mkdir -p "$MODELS"
fixture() { # type arch file
    [[ -f $3 ]] || "$BITNET" fixture --preset 2b4t --type "$1" --arch "$2" --seed 1 -o "$3"
}
fixture tq2_0 bitnet "$MODELS/2b4t-tq2_0-upstream.gguf"
for t in i2_s tq2_0 tq1_0; do fixture "$t" bitnet-b1.58 "$MODELS/2b4t-$t.gguf"; done

# 4. Memory bandwidth for the roofline.
gcc -O2 -mavx2 -pthread -o "$CACHE/membw" bench/membw.c

RESULTS=$CACHE/results.jsonl
: >"$RESULTS"
for th in $THREADS; do
    bw=$("$CACHE/membw" "$th")
    echo "{\"engine\":\"membw\",\"threads\":$th,\"gb_s\":$bw}" >>"$RESULTS"
    log "llama.cpp TQ2_0, $th thread(s)"
    "$LLAMA_BENCH" -m "$MODELS/2b4t-tq2_0-upstream.gguf" -p "$PP" -n "$TG" -t "$th" -r "$REPS" -o jsonl 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    kind = "pp" if r["n_gen"] == 0 else "tg"
    s = sorted(r["samples_ts"]); m = s[len(s)//2] if len(s) % 2 else (s[len(s)//2-1] + s[len(s)//2]) / 2
    print(json.dumps({"engine": "llama.cpp", "type": "tq2_0", "threads": r["n_threads"], kind + "_tok_s": m}))
' >>"$RESULTS"
    for t in i2_s tq2_0 tq1_0; do
        log "bitnet $t, $th thread(s)"
        "$BITNET" bench --model "$MODELS/2b4t-$t.gguf" --threads "$th" --pp "$PP" --tg "$TG" --reps "$REPS" --json |
            python3 -c 'import json,sys; r=json.load(sys.stdin); r["engine"]="bitnet"; r["type"]=sys.argv[1]; print(json.dumps(r))' "$t" >>"$RESULTS"
    done
done

# 5. The table.
python3 - "$RESULTS" "$MODELS/2b4t-i2_s.gguf" "$BITNET" "$PP" <<'PY'
import json, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
info = json.loads(subprocess.check_output([sys.argv[3], "inspect", "--json", sys.argv[2]]))
tern = sum(t["size"] for t in info["tensors"] if t["type"] in ("I2_S", "TQ2_0", "TQ1_0"))
head = next(t["size"] for t in info["tensors"] if t["name"] == "token_embd.weight")
bytes_per_token = tern + head
ths = sorted({r["threads"] for r in rows})
print(f"\n2B4T shapes, F16 head, {bytes_per_token/1e9:.3f} GB read per decoded token (I2_S)")
print(f"{'engine':<22}{'thr':>4}{'decode tok/s':>14}{'pp'+sys.argv[4]+' tok/s':>13}{'vs llama.cpp':>20}{'load ms':>9}{'peak RSS MB':>12}{'roofline':>10}")
for th in ths:
    bw = next(r["gb_s"] for r in rows if r["engine"] == "membw" and r["threads"] == th)
    ceil = bw * 1e9 / bytes_per_token
    ref = {}
    for r in rows:
        if r["engine"] == "llama.cpp" and r["threads"] == th:
            ref.update(r)
    def line(name, tg, pp, load="", rss="", roof=True):
        ratio = f"{tg/ref['tg_tok_s']:.2f}x / {pp/ref['pp_tok_s']:.2f}x"
        pct = f"{100*tg/ceil:.0f} %" if roof else ""
        print(f"{name:<22}{th:>4}{tg:>14.2f}{pp:>13.2f}{ratio:>20}{load:>9}{rss:>12}{pct:>10}")
    line("llama.cpp TQ2_0", ref["tg_tok_s"], ref["pp_tok_s"])
    for r in rows:
        if r["engine"] == "bitnet" and r["threads"] == th:
            line(f"bitnet {r['type'].upper()}", r["tg_tok_s"], r["pp_tok_s"], f"{r['load_ms']:.0f}", f"{r['peak_rss_mb']:.0f}")
    print(f"{'memory read bandwidth':<22}{th:>4}{bw:>11.1f} GB/s -> decode ceiling {ceil:.1f} tok/s")
PY
