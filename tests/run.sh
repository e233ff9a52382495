#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls it after its lint steps).
#   bash tests/run.sh
# Starts its own services (moto for S3, Azurite for Azure Blob) unless they are already
# exported by `source .ci/services.sh`, installs Python needs into .cache/ venvs, builds the
# binaries with the `ci` profile (release optimisation, no fat LTO) and runs:
#   1. cargo tests of every crate (engine kernels/tokenizer/GGUF, model store against the
#      real local servers, API units);
#   2. the independent numpy reference: its self-tests, then engine-vs-reference parity;
#   3. end-to-end tests of the local server, the Lambda adapter, the Azure handler and the
#      container's static binary (built by infra/build-static.sh, as infra/Dockerfile does);
#   4. the infrastructure checks (terraform fmt, checkov, Bicep parsing, HCL rule tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR=never
PROFILE=${BITNET_TEST_PROFILE:-ci}
export BITNET_BIN_DIR="$ROOT/target/$PROFILE"
export BITNET_BIN="$BITNET_BIN_DIR/bitnet"

step() { echo; echo "=== $* ($(date +%T))"; }

if [ -z "${BITNET_TEST_S3_ENDPOINT:-}" ] || [ -z "${BITNET_TEST_AZURITE_ENDPOINT:-}" ]; then
    step "starting local S3 (moto) and Azure Blob (Azurite)"
    # shellcheck source=/dev/null
    source .ci/services.sh
fi

step "building binaries and tests (profile $PROFILE)"
# One invocation for binaries and tests, so that both see the same dependency features and
# nothing is compiled twice.
cargo build --profile "$PROFILE" --workspace --all-targets

step "cargo tests"
cargo test --profile "$PROFILE" --workspace

step "kernel and batching tests again with the AVX2 kernels (BITNET_ISA=avx2: the serverless baseline)"
BITNET_ISA=avx2 cargo test --profile "$PROFILE" -p bitnet-engine --test kernel_parity --test batching

step "numpy reference: self-tests and engine parity"
VENV="$ROOT/.cache/test-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import numpy, pytest, gguf' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -r tests/requirements.txt
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/reference tests/test_reference_parity.py tests/test_embedding_parity.py

step "container binary: the static musl build of infra/Dockerfile"
BITNET_CONTAINER_BIN="$(bash infra/build-static.sh | tail -n 1)"
export BITNET_CONTAINER_BIN

step "front doors: local server, Lambda, Azure handler, container binary"
bash tests/functions/run.sh

step "infrastructure checks"
bash .ci/iac.sh

step "all tests passed"
