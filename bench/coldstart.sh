#!/usr/bin/env bash
# Cold start: process start to first streamed token with an empty cache, for the front doors
# (bitnet serve, the Azure handler, the Lambda bootstrap under `cargo lambda watch`) and the
# model behind nginx (Range requests), local S3 (moto) and Azure Blob (Azurite). See
# bench/coldstart.py for the columns.
#
#   bash bench/coldstart.sh                                  # serve, nginx, 3 runs
#   DOORS=serve,azure,lambda SOURCES=http,s3,azure bash bench/coldstart.sh
#   RATE=200m bash bench/coldstart.sh                        # nginx limit_rate per connection
#   DOORS=lambda SOURCES=file bash bench/coldstart.sh --evict  # the model baked into the image
#
# Nothing is built with cargo: binaries come from $BINS (default target/release; build them with
# `cargo build --release -p bitnet-cli -p bitnet-lambda -p bitnet-azure`). The 2B4T-shaped
# I2_S fixture is made once into $BITNET_BENCH_CACHE/models (default ~/.cache/bitnet-bench).
# Installs nginx (Debian) when missing, and its Python needs into .cache/coldstart-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BINS=${BINS:-$ROOT/target/release}
DOORS=${DOORS:-serve}
SOURCES=${SOURCES:-http}
RUNS=${RUNS:-3}
RATE=${RATE:-}
PRESET=${PRESET:-2b4t}
CACHE=${BITNET_BENCH_CACHE:-$HOME/.cache/bitnet-bench}
MODEL=${MODEL:-$CACHE/models/$PRESET-i2_s.gguf}

[[ -x $BINS/bitnet ]] || { echo "no bitnet binary in $BINS (cargo build --release -p bitnet-cli ...)" >&2; exit 1; }
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    echo "coldstart.sh: installing nginx" >&2
    apt-get install -y -q nginx-light >/dev/null 2>&1 || apt-get install -y -q nginx >/dev/null
fi
VENV=$ROOT/.cache/coldstart-venv
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import requests, boto3, azure.storage.blob' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check requests boto3 azure-storage-blob
fi
if [[ ,$SOURCES, == *,s3,* || ,$SOURCES, == *,azure,* ]] && [[ -z ${BITNET_TEST_S3_ENDPOINT:-} ]]; then
    # shellcheck source=/dev/null
    source .ci/services.sh
fi
if [[ ,$DOORS, == *,lambda,* ]] && ! command -v cargo-lambda >/dev/null; then
    PATH=$ROOT/.cache/functions-venv/bin:$PATH
    command -v cargo-lambda >/dev/null || { echo "cargo-lambda not found (bash tests/functions/run.sh installs it)" >&2; exit 1; }
fi
mkdir -p "$(dirname "$MODEL")"
[[ -f $MODEL ]] || { "$BINS/bitnet" fixture --preset "$PRESET" --seed 1 -o "$MODEL.part" && mv "$MODEL.part" "$MODEL"; }

"$VENV/bin/python" bench/coldstart.py --model "$MODEL" --bins "$BINS" --doors "$DOORS" --sources "$SOURCES" \
    --runs "$RUNS" ${RATE:+--rate "$RATE"} "$@"
