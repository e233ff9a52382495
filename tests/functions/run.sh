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

export PATH="$VENV/bin:$PATH"
cd "$ROOT"
exec python -m pytest tests/functions --confcutdir=tests/functions -p no:cacheprovider -q -rs "$@"
