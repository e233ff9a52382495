#!/usr/bin/env bash
# Embeddings per second on the bitnet-embedding-0.6b shape (synthetic I2_S file in the
# converter's layout, `bitnet fixture --preset embed-0.6b`): 1 and 32 inputs of 64 tokens,
# read together, at 1 and 2 threads; medians of REPS. Prints one JSON line per row.
#
#   bench/embeddings.sh            # REPS=5
# llama.cpp's `llama-embedding` is not run beside it: upstream llama.cpp cannot load this
# architecture (the per-projection norms, I2_S), and a same-shape vanilla Qwen3 F16 file is not
# something the fixture writer makes (see the closing note of the change that added this).
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
