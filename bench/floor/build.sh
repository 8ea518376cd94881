#!/usr/bin/env bash
# Build the floor guests (bench/floor/README.md) into target/bench-floor/
# floor-<lang>.wasm, the way scripts/build-plugins.sh builds the example
# plugins. Needs scripts/setup.sh (SDKs, toolchains, the release host).
#
#   bash bench/floor/build.sh
#   cargo bench -p bullpen --bench attempt_overhead -- 'attempt-overhead/floor-'
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
floor="$root/bench/floor"
out="$root/target/bench-floor"
mkdir -p "$out"

(cd "$floor/rust" && CARGO_TARGET_DIR="$root/target/bench-floor/cargo" cargo build --release --target wasm32-wasip2 --quiet)
cp "$root/target/bench-floor/cargo/wasm32-wasip2/release/floor.wasm" "$out/floor-rust.wasm"
echo "built target/bench-floor/floor-rust.wasm"

go_bin="$(bash "$root/scripts/find-go.sh")"
gotmp="$(mktemp -d)"
trap 'rm -rf "$gotmp"' EXIT
(cd "$floor/go" && GOOS=wasip1 GOARCH=wasm GOFLAGS=-buildvcs=false "$go_bin" build -buildmode=c-shared -trimpath -o "$gotmp/floor.wasm" .)
"$root/target/release/bullpen-componentize" "$gotmp/floor.wasm" -o "$out/floor-go.wasm"
echo "built target/bench-floor/floor-go.wasm"

node "$root/guest-sdk/js/bin/build.mjs" "$floor/js/floor.js" -o "$out/floor-js.wasm"

(cd "$root/guest-sdk/python" && .venv/bin/python -m bullpen_guest.build "$floor/python/floor.py" -o "$out/floor-python.wasm" >/dev/null)
echo "built target/bench-floor/floor-python.wasm"
