#!/usr/bin/env bash
# Install and build everything the demo and the tests need. Safe to run twice.
#   bash scripts/setup.sh
# - redis-server (Debian package; tests and the demo start their own servers)
# - the wasm32-wasip2 Rust target (rustup; Debian rustc-web + build-std fallback),
#   rustfmt and clippy (scripts/test.sh checks formatting and lints)
# - the real bullmq npm package (tests/node) and PyPI package (tests/python/.venv)
# - bull-board, express and puppeteer-core (tests/node) and Debian's chromium (dashboard test)
# - componentize-js and esbuild (guest-sdk/js), which build JavaScript guests
# - componentize-py, pytest and wheel (guest-sdk/python/.venv), which build and
#   test Python guests and the Python SDK's wheel
# - checks for Go >= 1.24 (Go guests; installed on the machine)
# - the release bullpen binary and every example plugin (target/plugins/)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v redis-server >/dev/null; then
  say "installing redis-server (apt)"
  apt_install redis-server
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  say "adding the wasm32-wasip2 Rust target"
  if ! timeout 120 rustup target add wasm32-wasip2; then
    say "rustup could not download it: installing Debian's rustc-web for build-std"
    apt_install rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc
  fi
fi

# scripts/test.sh checks formatting and lints.
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    say "adding the $c component (rustup)"
    timeout 120 rustup component add "$c"
  fi
done

# Headless Chromium for the bull-board test (puppeteer-core downloads no browser).
if ! command -v chromium >/dev/null; then
  say "installing chromium (apt)"
  apt_install chromium
fi

# Again whenever package-lock.json is newer than what npm last installed (new packages).
if [ ! -d tests/node/node_modules/bullmq ] || [ ! -f tests/node/node_modules/.package-lock.json ] || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
  say "installing bullmq@6, ioredis, bull-board, express and puppeteer-core (npm)"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# JavaScript guests: componentize-js and esbuild for guest-sdk/js's bullpen-build
# (again whenever package-lock.json is newer than what npm last installed).
if [ ! -f guest-sdk/js/node_modules/.package-lock.json ] || [ guest-sdk/js/package-lock.json -nt guest-sdk/js/node_modules/.package-lock.json ]; then
  say "installing componentize-js and esbuild for JavaScript guests (npm)"
  (cd guest-sdk/js && npm ci --no-audit --no-fund --loglevel=error)
fi
# The JS example plugins import `bullpen-guest`; under Node (their unit tests,
# `node --test`) it resolves through plugins/node_modules to this SDK.
mkdir -p plugins/node_modules
ln -sfn ../../guest-sdk/js plugins/node_modules/bullpen-guest

if [ ! -x tests/python/.venv/bin/python ] || ! tests/python/.venv/bin/python -c 'import bullmq' 2>/dev/null; then
  say "installing bullmq (PyPI) into tests/python/.venv"
  python3 -m venv tests/python/.venv
  tests/python/.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

# Python guests: componentize-py (pinned; CPython for WASI is inside its
# wheel), pytest for the SDK's tests, wheel for its offline wheel build.
# Again whenever requirements-dev.txt is newer than the venv's record of it.
py_venv=guest-sdk/python/.venv
if [ ! -x "$py_venv/bin/componentize-py" ] || [ ! -f "$py_venv/.requirements-dev.txt" ] || [ guest-sdk/python/requirements-dev.txt -nt "$py_venv/.requirements-dev.txt" ]; then
  say "installing componentize-py, pytest and wheel (PyPI) into $py_venv"
  python3 -m venv "$py_venv"
  "$py_venv/bin/pip" install -q --disable-pip-version-check -r guest-sdk/python/requirements-dev.txt
  cp guest-sdk/python/requirements-dev.txt "$py_venv/.requirements-dev.txt"
fi

# Go guests need Go >= 1.24 (GOOS=wasip1 with //go:wasmexport); this
# project's machines come with Go 1.26 in /usr/local/go. Debian's golang-go
# (1.19) is too old, so there is nothing to install from apt.
if ! bash scripts/find-go.sh >/dev/null; then
  echo "setup: Go guests need Go >= 1.24 on PATH or in /usr/local/go/bin" >&2
  exit 1
fi

say "building bullpen (release)"
# The binaries and everything the test command builds, with one feature set (dev-dependencies
# included), so `cargo test --release --workspace` reuses it instead of
# compiling wasmtime a second time with another feature set.
cargo build --release --workspace --bins --tests --quiet
say "building example plugins"
bash scripts/build-plugins.sh >&2

# `bullpen` and `bullpen-componentize` on PATH, as README's commands say
# them: symlinks to this checkout's release build (a rebuild updates them)
# where /usr/local/bin is writable, else the exact paths to add.
bin_dir="${BULLPEN_BIN_DIR:-/usr/local/bin}"
if [ -w "$bin_dir" ]; then
  for b in bullpen bullpen-componentize; do ln -sf "$root/target/release/$b" "$bin_dir/$b"; done
  say "bullpen and bullpen-componentize are on PATH ($bin_dir -> target/release)"
else
  say "bullpen is $root/target/release/bullpen (and bullpen-componentize beside it): add $root/target/release to PATH, or: cargo install --locked --path runtime (installs both)"
fi
