#!/usr/bin/env bash
# The guest SDKs carry their own copy of wit/ so each one builds from its own
# published package (a crate, an npm tarball, a wheel), with no path into
# this repository. wit/ is the one source; this copies it into them.
#   bash scripts/sync-wit.sh           copy wit/ into every SDK
#   bash scripts/sync-wit.sh --check   fail if a copy differs (CI)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# Go needs no copy: its canonical-ABI glue is hand-written and `bullpen build`
# embeds the WIT when it componentizes.
copies=(guest-sdk/rust/wit guest-sdk/js/wit)

if [ "${1:-}" = "--check" ]; then
  status=0
  for c in "${copies[@]}"; do
    if ! diff -r "$root/wit" "$root/$c" >/dev/null; then
      echo "sync-wit: $c differs from wit/; run: bash scripts/sync-wit.sh" >&2
      diff -r "$root/wit" "$root/$c" >&2 || true
      status=1
    fi
  done
  exit $status
fi
for c in "${copies[@]}"; do
  rm -rf "${root:?}/$c"
  cp -r "$root/wit" "$root/$c"
  echo "copied wit/ to $c"
done
