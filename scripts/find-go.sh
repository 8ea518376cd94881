#!/usr/bin/env bash
# Print the path of a Go toolchain new enough for Go guests (>= 1.24:
# GOOS=wasip1 with //go:wasmexport and -buildmode=c-shared), or exit 1.
# Looks at PATH and /usr/local/go.
for go in "$(command -v go 2>/dev/null)" /usr/local/go/bin/go; do
  [ -n "$go" ] && [ -x "$go" ] || continue
  v="$("$go" env GOVERSION 2>/dev/null)" || continue   # go1.26.8
  IFS=. read -r major minor _ <<<"${v#go}"
  if [ "${major:-0}" -gt 1 ] || { [ "${major:-0}" -eq 1 ] && [ "${minor:-0}" -ge 24 ]; }; then
    echo "$go"
    exit 0
  fi
done
exit 1
