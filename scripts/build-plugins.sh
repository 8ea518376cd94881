#!/usr/bin/env bash
# Build every example plugin into target/plugins/<plugin>-<lang>.wasm.
#   bash scripts/build-plugins.sh [SRC OUT]
# SRC (default plugins/) holds <plugin>/<lang>/ folders and a Cargo workspace
# of the Rust ones; OUT (default target/plugins/) gets the components. The
# benchmarks' own guests build the same way: bench/guests (its README).
# Rust guests build for wasm32-wasip2 (a component straight out of cargo).
# Where rustup cannot provide that target, scripts/setup.sh installs Debian's
# rustc-web and this script uses build-std instead (DESIGN.md §6).
# JavaScript guests build with guest-sdk/js's bullpen-build, Python guests
# with guest-sdk/python's bullpen_guest.build (see below).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/plugins"
out="$root/target/plugins"
if [ $# -eq 2 ]; then
  src="$(cd "$1" && pwd)"
  mkdir -p "$2"
  out="$(cd "$2" && pwd)"
elif [ $# -ne 0 ]; then
  echo "usage: bash scripts/build-plugins.sh [SRC OUT]" >&2
  exit 2
fi
shown="${out#"$root"/}" # target/plugins, as the messages say it
mkdir -p "$out"
export CARGO_TARGET_DIR="$root/target/guests"

if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  (cd "$src" && cargo build --release --target wasm32-wasip2 --quiet)
elif [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ]; then
  (cd "$src" && env PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
     RUSTFLAGS="-L native=/usr/lib/wasm32-wasi" /usr/bin/cargo build --release \
     --target wasm32-wasip2 -Zbuild-std=std,panic_abort --quiet)
else
  echo "build-plugins: no wasm32-wasip2 Rust toolchain; run scripts/setup.sh first" >&2
  exit 1
fi

for dir in "$src"/*/rust; do
  plugin="$(basename "$(dirname "$dir")")"
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/${plugin//-/_}.wasm" "$out/$plugin-rust.wasm"
  echo "built $shown/$plugin-rust.wasm"
done

# JavaScript guests: plugins/<name>/js/<name>.js, built by the JS SDK's
# bullpen-build (esbuild + componentize-js; about 12 MB and several seconds
# each, so only when the source, the SDK or the WIT changed: a rebuild also
# changes the component's digest, which invalidates the compile cache).
js_sdk="$root/guest-sdk/js"
if [ ! -d "$js_sdk/node_modules/@bytecodealliance/componentize-js" ] || [ ! -d "$js_sdk/node_modules/esbuild" ]; then
  echo "build-plugins: guest-sdk/js/node_modules missing; run scripts/setup.sh first" >&2
  exit 1
fi
pids=()
for dir in "$src"/*/js; do
  plugin="$(basename "$(dirname "$dir")")"
  wasm="$out/$plugin-js.wasm"
  if [ -f "$wasm" ] && [ -z "$(find "$dir" "$js_sdk/index.js" "$js_sdk/bin" "$js_sdk/package-lock.json" "$root/wit" -type f -newer "$wasm" 2>/dev/null)" ]; then
    echo "up to date $shown/$plugin-js.wasm"
    continue
  fi
  node "$js_sdk/bin/build.mjs" "$dir/$plugin.js" -o "$wasm" &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "build-plugins: a JavaScript plugin failed to build" >&2; exit 1; }
done

# Go guests: plugins/<name>/go, a GOOS=wasip1 reactor module (Go's own
# toolchain, -buildmode=c-shared; the SDK has the canonical-ABI glue), made a
# component by bullpen-componentize (runtime/src/bin, over the componentize/
# library) with WASI's reactor adapter and the WIT compiled into it. It
# chooses the world: a plugin that calls guest.WithBackoff exports `backoff`
# (processor-with-backoff).
go_bin="$(bash "$root/scripts/find-go.sh" || true)"
if [ -z "$go_bin" ]; then
  echo "build-plugins: no Go >= 1.24 toolchain; run scripts/setup.sh first" >&2
  exit 1
fi
# The same command as scripts/setup.sh: one feature set for the workspace, so
# bullpen-componentize (which pre-initialises Go with wasmtime) shares the
# host's wasmtime build instead of compiling a second one.
(cd "$root" && CARGO_TARGET_DIR="$root/target" cargo build --release --workspace --bins --tests --quiet)
gotmp="$(mktemp -d)"
trap 'rm -rf "$gotmp"' EXIT
for dir in "$src"/*/go; do
  plugin="$(basename "$(dirname "$dir")")"
  (cd "$dir" && GOOS=wasip1 GOARCH=wasm GOFLAGS=-buildvcs=false "$go_bin" build -buildmode=c-shared -trimpath -o "$gotmp/$plugin.wasm" .)
  "$root/target/release/bullpen-componentize" "$gotmp/$plugin.wasm" -o "$out/$plugin-go.wasm"
  echo "built $shown/$plugin-go.wasm"
done

# Python guests: plugins/<name>/python/<name>.py, built by the Python SDK's
# bullpen_guest.build (componentize-py 0.25.1 from guest-sdk/python/.venv:
# CPython and its standard library, pre-initialised with the module
# imported; about 19 MB and ~12 s of CPU each), so only when the source, the
# SDK or the WIT changed. The world is processor-with-backoff when the
# plugin passes backoff= to export_processor (flaky).
py_sdk="$root/guest-sdk/python"
if [ ! -x "$py_sdk/.venv/bin/componentize-py" ]; then
  echo "build-plugins: guest-sdk/python/.venv missing; run scripts/setup.sh first" >&2
  exit 1
fi
pids=()
for dir in "$src"/*/python; do
  plugin="$(basename "$(dirname "$dir")")"
  wasm="$out/$plugin-python.wasm"
  if [ -f "$wasm" ] && [ -z "$(find "$dir" "$py_sdk/bullpen_guest" "$py_sdk/requirements-dev.txt" "$root/wit" -name __pycache__ -prune -o -type f -newer "$wasm" -print 2>/dev/null)" ]; then
    echo "up to date $shown/$plugin-python.wasm"
    continue
  fi
  (cd "$py_sdk" && .venv/bin/python -m bullpen_guest.build "$dir/$plugin.py" -o "$wasm" >/dev/null && echo "built $shown/$plugin-python.wasm") &
  pids+=($!)
  # Two at a time: each componentize-py run takes a core.
  if [ "${#pids[@]}" -ge 2 ]; then
    wait "${pids[0]}" || { echo "build-plugins: a Python plugin failed to build" >&2; exit 1; }
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "build-plugins: a Python plugin failed to build" >&2; exit 1; }
done
