#!/usr/bin/env bash
# Embeddings per second on the bitnet-embedding-0.6b shape (synthetic I2_S file in the
# converter's layout, `bitnet fixture --preset embed-0.6b`): 1 and 32 inputs of 64 tokens,
# read together, at 1 and 2 threads; medians of REPS. Prints one JSON line per row.
#
#   bench/embeddings.sh            # REPS=5
# Then llama.cpp's `llama-embedding` (built by bench/llama_build.sh) on the same shapes: it cannot
# load the BitNet architecture (per-projection norms, I2_S), so it runs a vanilla Qwen3 file of
# the same shape with random F16 weights (bench/qwen3_same_shape.py; needs numpy and gguf in
# $PYTHON). Its rows are wall time less the same command on a one-word prompt (load), medians of
# 3; its 64-word lines are 60 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}
CACHE=${BITNET_BENCH_CACHE:-$HOME/.cache/bitnet-bench}
MODEL=$CACHE/models/embed-0.6b-i2_s.gguf
mkdir -p "$CACHE/models"
cargo build --release -q -p bitnet-cli
BITNET=$PWD/target/release/bitnet
[[ -f $MODEL ]] || "$BITNET" fixture --preset embed-0.6b --type i2_s --seed 1 -o "$MODEL"
for th in 1 2; do
    for shape in 1x64 32x64; do
        "$BITNET" embed --model "$MODEL" --threads "$th" --bench "$shape" --reps "$REPS"
    done
done

# llama.cpp baseline.
PYTHON=${PYTHON:-python3}
# shellcheck source=bench/llama_build.sh
source bench/llama_build.sh
llama_build llama-embedding
VANILLA=$CACHE/models/qwen3-0.6b-shape-f16.gguf
[[ -f $VANILLA ]] || "$PYTHON" bench/qwen3_same_shape.py "$LLAMA_SRC/models/ggml-vocab-qwen2.gguf" "$VANILLA"
work=$(mktemp -d)
python3 - "$work" <<'PY'
import random, sys
random.seed(1)
words = ("the of and to in is was for on are with as his they be at one have this from or had by word but "
         "what some we can out other were all there when up use your how said an each she which do their").split()
lines = [" ".join(random.choice(words) for _ in range(60)) for _ in range(32)]
open(f"{sys.argv[1]}/load.txt", "w").write("hello")
open(f"{sys.argv[1]}/1x64.txt", "w").write(lines[0])
open(f"{sys.argv[1]}/32x64.txt", "w").write("\n".join(lines))
PY
run() { # threads file -> median seconds of 3
    for _ in 1 2 3; do
        s=$(date +%s.%N)
        "$LLAMA_BIN/llama-embedding" -m "$VANILLA" -f "$work/$2.txt" -t "$1" --pooling last -c 4096 -b 4096 \
            -ub 4096 --embd-output-format json >/dev/null 2>&1
        echo "$(date +%s.%N) - $s" | bc
    done | sort -n | sed -n 2p
}
for th in 1 2; do
    load=$(run "$th" load)
    for shape in 1x64 32x64; do
        t=$(run "$th" "$shape")
        n=${shape%x*}
        python3 -c "import json; s=$t-$load; print(json.dumps({'engine':'llama.cpp f16','inputs':$n,'threads':$th,'median_s':s,'embeddings_per_s':$n/s}))"
    done
done
rm -rf "$work"
