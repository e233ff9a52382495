#!/usr/bin/env bash
# Builds the Azure Functions deployment zip for the custom handler:
#
#   infra/package-azure.sh [OUT.zip]          (default: target-azure/app.zip)
#   az functionapp deploy -g RG -n APP --src-path target-azure/app.zip --type zip
#
# The zip holds host.json, the function folder api/ (function.json) and the `handler` binary,
# executable bit kept. The binary is built for an old glibc or statically, so it runs on the
# Functions host image whatever its glibc:
#   1. the musl target, when rustup has it (static binary);
#   2. else `cargo lambda build` (zig as the linker; the binary needs GLIBC_2.30 at most), when cargo-lambda
#      is on PATH (`pip install cargo-lambda ziglang`);
#   3. else a plain `cargo build --release` (needs a glibc as new as the build machine's;
#      a warning says so).
# BITNET_AZURE_BUILD=musl|zig|cargo forces one. BITNET_AZURE_ARCH=x86_64|aarch64 (default x86_64).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/target-azure/app.zip}"
ARCH="${BITNET_AZURE_ARCH:-x86_64}"
MODE="${BITNET_AZURE_BUILD:-auto}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cd "$ROOT"

if [ "$MODE" = auto ]; then
    if rustup target list --installed 2>/dev/null | grep -qx "$ARCH-unknown-linux-musl"; then
        MODE=musl
    elif cargo lambda --version >/dev/null 2>&1; then
        MODE=zig
    else
        MODE=cargo
    fi
fi

case "$MODE" in
    musl)
        cargo build --release --locked -p bitnet-azure --target "$ARCH-unknown-linux-musl"
        BIN="$TARGET_DIR/$ARCH-unknown-linux-musl/release/handler"
        ;;
    zig)
        arch_flag=--x86-64
        [ "$ARCH" = aarch64 ] && arch_flag=--arm64
        # cargo-lambda names every binary `bootstrap` under target/lambda/<bin>/.
        cargo lambda build --release -p bitnet-azure --bin handler "$arch_flag" --lambda-dir "$TARGET_DIR/azure-zig"
        BIN="$TARGET_DIR/azure-zig/handler/bootstrap"
        ;;
    cargo)
        echo "package-azure.sh: neither the musl target nor cargo-lambda found; the binary needs glibc >= $(ldd --version | head -1 | awk '{print $NF}')" >&2
        cargo build --release --locked -p bitnet-azure
        BIN="$TARGET_DIR/release/handler"
        ;;
    *)
        echo "package-azure.sh: BITNET_AZURE_BUILD must be musl, zig or cargo" >&2
        exit 2
        ;;
esac

mkdir -p "$(dirname "$OUT")"
python3 - "$ROOT/functions/azure/app" "$BIN" "$OUT" <<'PY'
import os, sys, zipfile
app, binary, out = sys.argv[1:4]
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for dirpath, _, files in os.walk(app):
        for f in sorted(files):
            full = os.path.join(dirpath, f)
            info = zipfile.ZipInfo(os.path.relpath(full, app), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, open(full, "rb").read())
    info = zipfile.ZipInfo("handler", date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = (0o100755 << 16)   # regular file, rwxr-xr-x: the host executes it
    info.create_system = 3                  # Unix, so the mode bits are honoured
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, open(binary, "rb").read())
os.replace(tmp, out)
with zipfile.ZipFile(out) as z:
    for i in z.infolist():
        print(f"  {oct(i.external_attr >> 16):>10} {i.file_size:>10} {i.filename}")
print(f"{out}: {os.path.getsize(out)} bytes")
PY
