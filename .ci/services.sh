# shellcheck shell=bash
# Local stand-ins for the model store's integration tests: moto (S3) and Azurite (Azure Blob).
#
# Meant to be sourced (by .ci/run, or by hand before `cargo test -p model-store`):
#     source .ci/services.sh        # installs if missing, starts both, exports the endpoints
#     ...run tests...
#     store_services_stop           # also runs on shell exit (trap)
#
# Exports BITNET_TEST_S3_ENDPOINT=http://127.0.0.1:PORT and
# BITNET_TEST_AZURITE_ENDPOINT=http://127.0.0.1:PORT/devstoreaccount1, plus dummy AWS
# credentials and region when none are set (moto accepts any).
# Installs into ignored folders only: .cache/store-venv (moto) and .cache/npm (azurite).

_store_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_store_log_dir="${TMPDIR:-/tmp}/bitnet-store-services.$$"
mkdir -p "$_store_log_dir"

_store_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

_store_wait_http() { # url seconds
    local url="$1" deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        # Any HTTP answer (even 400/403) means the server is up.
        if python3 - "$url" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass
PY
        sleep 0.3
    done
    return 1
}

_store_install_moto() {
    if command -v moto_server >/dev/null 2>&1 && python3 -c 'import moto, boto3' 2>/dev/null; then
        STORE_MOTO_SERVER="$(command -v moto_server)"
        return 0
    fi
    local venv="$_store_root/.cache/store-venv"
    if [ ! -x "$venv/bin/moto_server" ]; then
        echo "services.sh: installing moto[server] into $venv" >&2
        python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "moto[server]>=5,<6" boto3 || return 1
    fi
    STORE_MOTO_SERVER="$venv/bin/moto_server"
}

_store_install_azurite() {
    local prefix="$_store_root/.cache/npm"
    if [ -x "$prefix/node_modules/.bin/azurite-blob" ]; then
        STORE_AZURITE="$prefix/node_modules/.bin/azurite-blob"
    elif command -v azurite-blob >/dev/null 2>&1; then
        STORE_AZURITE="$(command -v azurite-blob)"
    else
        echo "services.sh: installing azurite into $prefix" >&2
        mkdir -p "$prefix"
        npm install --silent --no-audit --no-fund --prefix "$prefix" azurite@3 >/dev/null || return 1
        STORE_AZURITE="$prefix/node_modules/.bin/azurite-blob"
    fi
}

store_services_stop() {
    local pid
    for pid in ${STORE_MOTO_PID:-} ${STORE_AZURITE_PID:-}; do
        { kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; } || true
    done
    STORE_MOTO_PID= STORE_AZURITE_PID=
    if [ -n "${STORE_AZURITE_DIR:-}" ]; then rm -rf "$STORE_AZURITE_DIR"; fi
    STORE_AZURITE_DIR=
    return 0
}

store_services_start() {
    _store_install_moto || { echo "services.sh: cannot install moto" >&2; return 1; }
    _store_install_azurite || { echo "services.sh: cannot install azurite" >&2; return 1; }

    local s3_port az_port
    s3_port="$(_store_free_port)"
    "$STORE_MOTO_SERVER" -H 127.0.0.1 -p "$s3_port" >"$_store_log_dir/moto.log" 2>&1 &
    STORE_MOTO_PID=$!

    az_port="$(_store_free_port)"
    STORE_AZURITE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/azurite.XXXXXX")"
    "$STORE_AZURITE" --blobHost 127.0.0.1 --blobPort "$az_port" --location "$STORE_AZURITE_DIR" \
        --silent --disableTelemetry --skipApiVersionCheck >"$_store_log_dir/azurite.log" 2>&1 &
    STORE_AZURITE_PID=$!

    if ! _store_wait_http "http://127.0.0.1:$s3_port/" 60; then
        echo "services.sh: moto did not start; log:" >&2; tail -20 "$_store_log_dir/moto.log" >&2
        store_services_stop; return 1
    fi
    if ! _store_wait_http "http://127.0.0.1:$az_port/devstoreaccount1?comp=list" 60; then
        echo "services.sh: azurite did not start; log:" >&2; tail -20 "$_store_log_dir/azurite.log" >&2
        store_services_stop; return 1
    fi

    export BITNET_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
    export BITNET_TEST_AZURITE_ENDPOINT="http://127.0.0.1:$az_port/devstoreaccount1"
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
    export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
    export AWS_REGION="${AWS_REGION:-us-east-1}"
    # Keep the AWS SDK away from the instance metadata service on machines without it.
    export AWS_EC2_METADATA_DISABLED="${AWS_EC2_METADATA_DISABLED:-true}"
    echo "services.sh: moto on $BITNET_TEST_S3_ENDPOINT (pid $STORE_MOTO_PID), azurite on $BITNET_TEST_AZURITE_ENDPOINT (pid $STORE_AZURITE_PID)" >&2
}

if [ -z "${STORE_MOTO_PID:-}" ]; then
    if store_services_start; then
        # Chain onto an existing EXIT trap rather than replacing it.
        _store_prev_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
        # shellcheck disable=SC2064
        trap "store_services_stop; ${_store_prev_trap:-:}" EXIT
    else
        echo "services.sh: model-store test services are NOT running" >&2
    fi
fi
