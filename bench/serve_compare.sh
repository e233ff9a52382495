#!/usr/bin/env bash
# Serving under concurrency: `bitnet serve` against upstream llama-server (continuous batching,
# TQ2_0) on the same synthetic 2B4T-shaped model, with bench/concurrency.py as the client.
# In one run, one server at a time, all on 127.0.0.1:
#   1. bitnet serve (I2_S), prefix cache on:  scaling, prefix, long-prompt
#   2. bitnet serve, BITNET_PREFIX_CACHE_MB=0: prefix
#   3. llama-server -np $PARALLEL -cb (TQ2_0): scaling, prefix, long-prompt
# then one side-by-side table.
#
#   bench/serve_compare.sh
#   BITNET_BIN=target/ci/bitnet PRESET=small CONC_ARGS="--reps 1" bench/serve_compare.sh
#
# Nothing is built with cargo: the binary is $BITNET_BIN (default target/release/bitnet).
# llama-server is built once by bench/llama_build.sh; models and results are kept in
# $BITNET_BENCH_CACHE (default ~/.cache/bitnet-bench; results in serve-<time>/ unless $OUT).
# Other knobs (environment): PRESET (2b4t), BITNET_TYPE (i2_s), THREADS (2), PARALLEL (8),
# CTX (4096 tokens per sequence), PORT (18181), CLIENTS (1,2,4,8), SCENARIOS and
# LLAMA_SCENARIOS (scaling,prefix,long-prompt), CONC_ARGS (more concurrency.py arguments),
# READY_TIMEOUT (300 s), RUN_TIMEOUT (1800 s per server), SKIP (bitnet, bitnet-nocache, llama:
# phases to leave out, comma-separated).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BITNET_BIN=${BITNET_BIN:-target/release/bitnet}
[[ $BITNET_BIN == /* ]] || BITNET_BIN=$ROOT/$BITNET_BIN
PRESET=${PRESET:-2b4t}
BITNET_TYPE=${BITNET_TYPE:-i2_s}
THREADS=${THREADS:-2}
PARALLEL=${PARALLEL:-8}
CTX=${CTX:-4096}
PORT=${PORT:-18181}
CLIENTS=${CLIENTS:-1,2,4,8}
SCENARIOS=${SCENARIOS:-scaling,prefix,long-prompt}
LLAMA_SCENARIOS=${LLAMA_SCENARIOS:-scaling,prefix,long-prompt}
CONC_ARGS=${CONC_ARGS:-}
READY_TIMEOUT=${READY_TIMEOUT:-300}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
SKIP=${SKIP:-}
CACHE=${BITNET_BENCH_CACHE:-$HOME/.cache/bitnet-bench}
OUT=${OUT:-$CACHE/serve-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$CACHE" "$OUT"

log() { echo "== $*" >&2; }
skipped() { [[ ,$SKIP, == *,$1,* ]]; }

[[ -x $BITNET_BIN ]] || { echo "no bitnet binary at $BITNET_BIN (build it, or set BITNET_BIN)" >&2; exit 1; }

# 1. llama-server (cached build).
# shellcheck source=bench/llama_build.sh
source bench/llama_build.sh
skipped llama || llama_build llama-server
LLAMA_SERVER=$LLAMA_BIN/llama-server

# 2. Models, named as bench/compare.sh names them (same seed, shared cache).
MODELS=$CACHE/models
mkdir -p "$MODELS"
fixture() { # type arch file
    [[ -f $3 ]] || "$BITNET_BIN" fixture --preset "$PRESET" --type "$1" --arch "$2" --seed 1 -o "$3.part"
    [[ -f $3 ]] || mv "$3.part" "$3"
}
BITNET_MODEL_FILE=$MODELS/$PRESET-$BITNET_TYPE.gguf
LLAMA_MODEL_FILE=$MODELS/$PRESET-tq2_0-upstream.gguf
fixture "$BITNET_TYPE" bitnet-b1.58 "$BITNET_MODEL_FILE"
fixture tq2_0 bitnet "$LLAMA_MODEL_FILE"

# 3. One server at a time.
PID=
LOGF=
stop_server() {
    [[ -n $PID ]] || return 0
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}
trap stop_server EXIT INT TERM

port_busy() {
    python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$PORT"
}

# wait_ready PATH: polls until 200, the server's exit or READY_TIMEOUT.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$PID" 2>/dev/null; then
            log "server exited before it was ready; its log ($LOGF):"; tail -20 "$LOGF" >&2; return 1
        fi
        if python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
            "http://127.0.0.1:$PORT$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    log "server not ready after $READY_TIMEOUT s; its log ($LOGF):"; tail -20 "$LOGF" >&2
    return 1
}

# run_phase NAME READY_PATH SCENARIOS -- SERVER COMMAND...: starts the server, benchmarks it, stops it.
run_phase() {
    local name=$1 ready=$2 scen=$3
    shift 4
    if port_busy; then
        log "something already listens on 127.0.0.1:$PORT; set PORT"; return 1
    fi
    LOGF=$OUT/$name.log
    log "$name: $*"
    "$@" >"$LOGF" 2>&1 &
    PID=$!
    if wait_ready "$ready"; then
        # shellcheck disable=SC2086
        timeout "$RUN_TIMEOUT" python3 bench/concurrency.py --url "http://127.0.0.1:$PORT" --label "$name" \
            --scenario "$scen" --clients "$CLIENTS" --json "$OUT/$name.json" $CONC_ARGS ||
            log "$name: concurrency.py failed (exit $?)"
    fi
    stop_server
}

if ! skipped bitnet; then
    run_phase bitnet /ready "$SCENARIOS" -- env BITNET_PARALLEL="$PARALLEL" \
        BITNET_MAX_QUEUE=$((4 * PARALLEL)) BITNET_CTX_SIZE="$CTX" BITNET_ALLOW_NO_AUTH=1 \
        "$BITNET_BIN" serve --model "$BITNET_MODEL_FILE" --host 127.0.0.1 --port "$PORT" --threads "$THREADS"
fi
if ! skipped bitnet-nocache && [[ $SCENARIOS == *prefix* ]]; then
    run_phase bitnet-nocache /ready prefix -- env BITNET_PARALLEL="$PARALLEL" \
        BITNET_MAX_QUEUE=$((4 * PARALLEL)) BITNET_CTX_SIZE="$CTX" BITNET_ALLOW_NO_AUTH=1 \
        BITNET_PREFIX_CACHE_MB=0 \
        "$BITNET_BIN" serve --model "$BITNET_MODEL_FILE" --host 127.0.0.1 --port "$PORT" --threads "$THREADS"
fi
if ! skipped llama; then
    run_phase llama-server /health "$LLAMA_SCENARIOS" -- \
        "$LLAMA_SERVER" -m "$LLAMA_MODEL_FILE" --host 127.0.0.1 --port "$PORT" -t "$THREADS" \
        -np "$PARALLEL" -cb -c $((PARALLEL * CTX)) --no-webui
fi

# 4. Side by side.
python3 - "$OUT" "$PRESET" "$BITNET_TYPE" "$THREADS" "$PARALLEL" <<'PY'
import json, os, sys
out, preset, btype, threads, par = sys.argv[1:6]
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p))["scenarios"] if os.path.exists(p) else {}
B, N, L = load("bitnet"), load("bitnet-nocache"), load("llama-server")
def f(x, w=9):
    if x is None:
        return f"{'-':>{w}}"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e6:
        x = int(x)
    return f"{x:>{w}.1f}" if isinstance(x, float) else f"{x:>{w}}"
print(f"\n{preset} shapes, {threads} thread(s); bitnet serve ({btype}) vs llama-server (TQ2_0, -np {par} -cb); results in {out}")
if "scaling" in B or "scaling" in L:
    print("\nscaling (medians): aggregate completion tok/s, inter-token latency, time to first token")
    print(f"{'clients':>7} |{'bitnet tok/s':>13}{'ITL p50':>9}{'ITL p99':>9}{'TTFT p50':>9}{'fail':>6} |"
          f"{'llama tok/s':>12}{'ITL p50':>9}{'ITL p99':>9}{'TTFT p50':>9}{'fail':>6} |{'bitnet/llama':>13}")
    cs = sorted({int(c) for s in (B, L) for c in s.get("scaling", {}).get("by_clients", {})})
    for c in cs:
        b = B.get("scaling", {}).get("by_clients", {}).get(str(c), {}).get("median", {})
        l = L.get("scaling", {}).get("by_clients", {}).get(str(c), {}).get("median", {})
        ratio = b["agg_tok_s"] / l["agg_tok_s"] if b.get("agg_tok_s") and l.get("agg_tok_s") else None
        def part(m, w):
            fl = f"{m['failed_requests']}/{m['requests']}" if m else None
            return (f(m.get("agg_tok_s"), w) + f(m.get("itl_p50_ms")) + f(m.get("itl_p99_ms")) +
                    f(m.get("ttft_p50_ms")) + f(fl, 6))
        print(f"{c:>7} |{part(b, 13)} |{part(l, 12)} |{f'{ratio:.2f}' if ratio else '-':>12}x")
    print("(ms; fail = failed requests / requests, e.g. HTTP 429)")
    for name, s in (("bitnet", B), ("llama-server", L)):
        loads = [r.get("loadavg_1m") for v in s.get("scaling", {}).get("by_clients", {}).values() for r in v["reps"]]
        loads = [x for x in loads if x is not None]
        if loads:
            print(f"  {name}: 1-min load average {min(loads):.2f} to {max(loads):.2f} over its phases"
                  f"{'  (ABOVE the thread count: something else shared the CPUs)' if max(loads) > float(threads) + 0.75 else ''}")
if any("prefix" in s for s in (B, N, L)):
    print("\nprefix: TTFT (ms) of a ~1,000-token prompt, first seen (miss) and again with a new suffix (hit)")
    print(f"{'server':<28}{'prompt tok':>11}{'miss':>9}{'hit':>9}{'miss/hit':>10}{'hit cached tok':>16}")
    for name, s in (("bitnet, prefix cache on", B), ("bitnet, prefix cache off", N), ("llama-server", L)):
        p = s.get("prefix")
        if p:
            print(f"{name:<28}{f(p['miss']['prompt_tokens'], 11)}{f(p['miss']['ttft_ms_median'])}"
                  f"{f(p['hit']['ttft_ms_median'])}{f(p['speedup'], 9)}x{f(p['hit']['cached_tokens'], 16)}")
if any("long-prompt" in s for s in (B, L)):
    print("\nlong-prompt: running streams' inter-token latency (ms) while a ~1,000-token prompt is read")
    print(f"{'server':<16}{'streams':>8}{'ITL p50':>9}{'win p99':>9}{'win max':>9}{'p99/p50':>9}{'long TTFT':>11}")
    for name, s in (("bitnet", B), ("llama-server", L)):
        lp = s.get("long-prompt")
        if lp:
            lt = (lp.get("long_prompt") or {}).get("ttft_ms")
            print(f"{name:<16}{str(lp['streams_active_at_arrival']) + '/' + str(lp['streams']):>8}{f(lp['itl_p50_ms'])}"
                  f"{f(lp['window_itl_p99_ms'])}{f(lp['window_itl_max_ms'])}{f(lp['ratio_p99_window_over_p50'])}{f(lt, 11)}")
PY
