#!/usr/bin/env bash
# Builds the container images' binaries without Docker: the same static musl builds as
# infra/Dockerfile (`bitnet`) and infra/Dockerfile.lambda (`bootstrap`), profile `container`,
# mimalloc, for testing the images' binaries directly.
#   bash infra/build-static.sh        # prints the `bitnet` path on its last line; `bootstrap`
#                                     # is beside it
# Needs the rustup target x86_64-unknown-linux-musl and a musl C compiler (musl-tools) for the
# C code of aws-lc-sys and mimalloc; installs both when missing (rustup, apt-get).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET=x86_64-unknown-linux-musl

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET" >&2
fi
if ! command -v musl-gcc >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get install -y -qq musl-tools >&2 \
        || { $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq musl-tools >&2; }
fi
CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --profile container --locked --target "$TARGET" -p bitnet-cli -p bitnet-lambda --no-default-features >&2
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
echo "$TARGET_DIR/$TARGET/container/bitnet"
