#!/usr/bin/env bash
# Make the guest SDKs' packages as they would be published, and check that
# each one works on its own, outside this repository (nothing is published):
#   bash scripts/package-sdks.sh [OUT]      (default OUT: target/sdk-packages)
# - every SDK's version is the WIT package's version (wit/processor.wit);
# - the SDKs' WIT copies equal wit/ (scripts/sync-wit.sh --check);
# - Rust: `cargo package` (verified: the packaged crate builds from its own
#   files, so its bindings read the WIT inside the crate) -> OUT/*.crate;
# - JavaScript: `npm pack` -> OUT/bullpen-guest-<v>.tgz, with wit/ inside;
# - Go: a module proxy in OUT/goproxy (GOPROXY=file://OUT/goproxy) serving
#   bullpen.dev/guest v<version>; a module outside the repository requires
#   it without `replace`, builds a c-shared wasip1 module, and `go mod
#   verify` passes against a fresh module cache.
# The Python wheel is built by the Python SDK's own packaging.
# Takes ~1 min warm (the crate's verify build is most of it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/target/sdk-packages}" && cd "${1:-$root/target/sdk-packages}" && pwd)"
cd "$root"
say() { echo "package-sdks: $*" >&2; }

bash scripts/sync-wit.sh --check

version="$(sed -n 's/^package bullpen:processor@\(.*\);$/\1/p' wit/processor.wit)"
[ -n "$version" ] || { say "cannot read the package version from wit/processor.wit"; exit 1; }
same() { # what, its version, the file to change
  if [ "$2" != "$version" ]; then
    say "$1 has version '$2' but the WIT package is bullpen:processor@$version: set it in $3"
    exit 1
  fi
}
same "the Rust SDK" "$(sed -n 's/^version = "\(.*\)"$/\1/p' guest-sdk/rust/Cargo.toml | head -1)" guest-sdk/rust/Cargo.toml
same "the JavaScript SDK" "$(sed -n 's/^  "version": "\(.*\)",$/\1/p' guest-sdk/js/package.json | head -1)" guest-sdk/js/package.json
same "the Go SDK" "$(sed -n 's/^const Version = "\(.*\)"$/\1/p' guest-sdk/go/version.go)" guest-sdk/go/version.go
if [ -f guest-sdk/python/pyproject.toml ]; then
  same "the Python SDK" "$(sed -n 's/^version = "\(.*\)"$/\1/p' guest-sdk/python/pyproject.toml | head -1)" guest-sdk/python/pyproject.toml
fi

# Rust. --allow-dirty: this checks packaging, it does not publish, and
# sync-wit's copies may be uncommitted while developing.
say "cargo package (bullpen-guest $version)"
(cd guest-sdk/rust && CARGO_TARGET_DIR="$root/target/sdk-package" cargo package --allow-dirty --quiet)
cp "$root/target/sdk-package/package/bullpen-guest-$version.crate" "$out/"

# JavaScript.
say "npm pack (bullpen-guest $version)"
rm -f "$out/bullpen-guest-$version.tgz"
(cd guest-sdk/js && npm pack --silent --pack-destination "$out" >/dev/null)
tar -tzf "$out/bullpen-guest-$version.tgz" | grep -x 'package/wit/processor.wit' >/dev/null \
  || { say "the npm package has no wit/processor.wit"; exit 1; }

# Go: the module proxy protocol's files for one version
# (https://go.dev/ref/mod#goproxy-protocol).
go_bin="$(bash scripts/find-go.sh)"
say "Go module proxy (bullpen.dev/guest v$version)"
proxy="$out/goproxy/bullpen.dev/guest/@v"
rm -rf "$out/goproxy" && mkdir -p "$proxy"
cp guest-sdk/go/go.mod "$proxy/v$version.mod"
echo "v$version" >"$proxy/list"
printf '{"Version":"v%s","Time":"%s"}\n' "$version" "$(git log -1 --format=%cI -- guest-sdk/go 2>/dev/null || date -u +%FT%TZ)" >"$proxy/v$version.info"
python3 - "$root/guest-sdk/go" "$proxy/v$version.zip" "bullpen.dev/guest@v$version" <<'PY'
import os, sys, zipfile
src, dest, prefix = sys.argv[1:]
with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
    for dirpath, dirs, files in os.walk(src):
        dirs.sort()
        # A nested module (its own go.mod) is not part of this one.
        dirs[:] = [d for d in dirs if not d.startswith(".") and not os.path.exists(os.path.join(dirpath, d, "go.mod"))]
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            z.write(path, prefix + "/" + os.path.relpath(path, src))
PY

# A module outside the repository that uses it like any published module.
check="$(mktemp -d)"
trap 'chmod -R u+w "$check" 2>/dev/null; rm -rf "$check"' EXIT
mkdir -p "$check/app"
cat >"$check/app/go.mod" <<GOMOD
module example.com/app

go 1.24

require bullpen.dev/guest v$version
GOMOD
cat >"$check/app/main.go" <<'GO'
package main

import "bullpen.dev/guest"

func process(job *guest.Job) (guest.Outcome, error) { return guest.CompleteJSON(job.DataJSON()), nil }

func init() { guest.ExportProcessor(process) }

func main() {}
GO
(
  cd "$check/app"
  export GOPROXY="file://$out/goproxy" GOSUMDB=off GOFLAGS=-mod=mod GOMODCACHE="$check/modcache" GOTOOLCHAIN=local
  GOOS=wasip1 GOARCH=wasm "$go_bin" build -buildmode=c-shared -o app.wasm .
  "$go_bin" mod verify >/dev/null
)
say "ok: $out (bullpen-guest-$version.crate, bullpen-guest-$version.tgz, goproxy/)"
