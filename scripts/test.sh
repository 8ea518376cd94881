#!/usr/bin/env bash
# The whole test suite: set up, then every test against real redis-servers.
#   bash scripts/test.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# Style and lints first: they fail in seconds (fmt) to minutes (clippy's check
# build), before the long run.
cargo fmt --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The vendored crates are their published packages plus vendor/*/patches, and
# the patches' own unit tests pass (vendor/*/PATCHES.md).
bash scripts/vendor.sh check
# Every relative link between the docs (README, docs/, SDK READMEs) resolves,
# anchors included: sections move.
python3 scripts/check-links.py
# The guest SDKs as they would be published (a crate, an npm tarball, a Go
# module proxy), each built or used from its own package, outside this
# repository; their versions are the WIT package's (~30 s warm).
bash scripts/package-sdks.sh
# The Go guest SDK's unit tests (canonical-ABI layouts, serde_json-compatible JSON).
go_bin="$(bash "$root/scripts/find-go.sh")"
(cd guest-sdk/go && "$go_bin" test ./...)
# The example plugins' own unit tests, each on its SDK's test harness
# (bullpen_guest::testing, guesttest, bullpen-guest/testing): plain cargo
# test / go test / node --test on this machine, no Redis, no Wasm.
(cd plugins && CARGO_TARGET_DIR="$root/target/guests-host" cargo test --quiet -p echo -p steps)
for p in echo steps; do (cd "plugins/$p/go" && "$go_bin" test ./...); done
node --test plugins/echo/js/echo.test.mjs plugins/steps/js/steps.test.mjs
# The Python guest SDK: its unit tests (the example plugins through
# bullpen_guest.testing, well under a second) and its wheel, built offline
# from the package alone (no repository paths; the WIT is embedded).
(cd guest-sdk/python && PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests)
py_wheels="$(mktemp -d)"
guest-sdk/python/.venv/bin/pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$py_wheels" ./guest-sdk/python
python3 -c 'import sys, zipfile; n = zipfile.ZipFile(sys.argv[1]).namelist(); assert "bullpen_guest/wit/processor.wit" in n and "bullpen_guest/testing.py" in n, n' "$py_wheels"/bullpen_guest-*.whl
rm -rf "$py_wheels" guest-sdk/python/build guest-sdk/python/bullpen_guest.egg-info
# Release: the tests run the same wasmtime host users run (a debug host is ~10x slower).
cargo test --release --workspace
# The attempt-overhead benchmark once per variant (criterion's test mode), so
# it cannot rot: every language's echo must complete, fresh and reused.
# `cargo test --workspace` shares the release build above; `cargo bench`
# would build wasmtime again in the bench profile.
cargo test --release --workspace --benches
