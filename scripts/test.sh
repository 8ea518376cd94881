#!/usr/bin/env bash
# The whole test suite: set up, then every test against real redis-servers.
#   bash scripts/test.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# Release: the tests run the same wasmtime host users run (a debug host is ~10x slower).
cargo test --release --workspace
