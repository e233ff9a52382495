#!/usr/bin/env bash
# End-to-end tests of the front doors against the real release binaries:
#   cargo build --release -p bitnet-cli -p bitnet-lambda -p bitnet-azure
#   tests/functions/run.sh [pytest args]
# Installs its Python needs (tests/functions/requirements.txt) into .cache/functions-venv when
# missing. Binaries are taken from $BITNET_BIN_DIR, else $CARGO_TARGET_DIR/release, else
# target/release. Uses $BITNET_TEST_S3_ENDPOINT (from .ci/services.sh) when set, else starts
# its own moto server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${BITNET_FUNCTIONS_VENV:-$ROOT/.cache/functions-venv}"
REQ="$ROOT/tests/functions/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "run.sh: installing test dependencies into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
    echo "$want" > "$STAMP"
fi

# examples/rag's library (neo4j-graphrag) in a venv of its own: test_rag_example.py runs the
# example with it.
RAG_VENV="${BITNET_RAG_VENV:-$ROOT/.cache/rag-venv}"
RAG_REQ="$ROOT/examples/rag/requirements.txt"
rag_want="$(sha256sum "$RAG_REQ" | cut -d' ' -f1)"
if [ ! -x "$RAG_VENV/bin/python" ] || [ "$(cat "$RAG_VENV/.requirements.sha256" 2>/dev/null)" != "$rag_want" ]; then
    echo "run.sh: installing the RAG example's dependencies into $RAG_VENV" >&2
    python3 -m venv "$RAG_VENV"
    "$RAG_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$RAG_REQ"
    echo "$rag_want" > "$RAG_VENV/.requirements.sha256"
fi
export BITNET_RAG_PYTHON="$RAG_VENV/bin/python"

export PATH="$VENV/bin:$PATH"
cd "$ROOT"
exec python -m pytest tests/functions --confcutdir=tests/functions -p no:cacheprovider -q -rs "$@"
