#!/usr/bin/env bash
# Parallel vs single-stream download from a local moto S3 server, through the model store.
#   bash tests/store/bench.sh [SIZE_MB] [PART_MiB] [CONCURRENCY]     (defaults 256 16 8)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=/dev/null
source .ci/services.sh
[ -n "${BITNET_TEST_S3_ENDPOINT:-}" ] || { echo "moto is not running" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-store}"
cargo run -q -p model-store --example fetch_bench --profile test -- "${@:-s3}"
