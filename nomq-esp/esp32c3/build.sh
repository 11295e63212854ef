#!/usr/bin/env bash
# Builds the ESP32-C3 firmware with Debian's Rust toolchain (rustc/cargo 1.96 in /usr/bin
# with the matching std sources; see shared/embedded.md) and prints the ELF's path.
#
#   ./build.sh                       CI build: placeholder Wi-Fi and the public test keys
#   NOMQ_WIFI_SSID=... NOMQ_WIFI_PASSWORD=... NOMQ_KEYS=keys.json ./build.sh
#
# Extra arguments go to cargo. Needs: apt-get install rustc-web cargo-web rust-web-src
# rust-web-llvm lld-22. The first build downloads crates and takes a few minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# A relative NOMQ_KEYS means relative to where the script was called from.
if [[ -n ${NOMQ_KEYS:-} && ${NOMQ_KEYS} != /* ]]; then
    NOMQ_KEYS=$PWD/$NOMQ_KEYS
fi

# CI defaults. They build a firmware that joins no network and uses public keys: never
# flash it anywhere that matters.
if [[ -z ${NOMQ_WIFI_SSID:-} && -z ${NOMQ_KEYS:-} ]]; then
    echo "build.sh: NOMQ_WIFI_SSID and NOMQ_KEYS not set: CI build with placeholder Wi-Fi and the public test keys (ci-keys.json)" >&2
    NOMQ_WIFI_SSID=ci
    NOMQ_WIFI_PASSWORD=ci-build-only
    NOMQ_KEYS=$here/ci-keys.json
fi
export NOMQ_WIFI_SSID NOMQ_KEYS
export NOMQ_WIFI_PASSWORD=${NOMQ_WIFI_PASSWORD-}

target=riscv32imc-unknown-none-elf
cd "$here"
# A clean environment: /usr/bin first so rustup's proxies are not found, and no rustup or
# outer build settings leaking in.
env -u RUSTUP_TOOLCHAIN -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u RUSTC_WRAPPER \
    -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    PATH=/usr/bin:/bin:/usr/sbin:/sbin RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
    RUSTC_BOOTSTRAP=1 \
    /usr/bin/cargo build --release -Zbuild-std=core,alloc --target "$target" "$@"

echo "$here/target/$target/release/nomq-esp32c3"
