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
(cd guest-sdk/go && "$(bash "$root/scripts/find-go.sh")" test ./...)
# Release: the tests run the same wasmtime host users run (a debug host is ~10x slower).
cargo test --release --workspace
# The attempt-overhead benchmark once per variant (criterion's test mode), so
# it cannot rot: every language's echo must complete, fresh and reused.
# `cargo test --workspace` shares the release build above; `cargo bench`
# would build wasmtime again in the bench profile.
cargo test --release --workspace --benches
