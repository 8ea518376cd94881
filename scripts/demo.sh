#!/usr/bin/env bash
# The demo: jobs from Node's bullmq and from `bullpen add`, processed by Wasm
# components, results read back through Node's bullmq.
#   bash scripts/demo.sh [--redis redis://host:port]     (or REDIS_URL=...)
# Without a Redis URL it starts its own redis-server on a free port.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
url="${REDIS_URL:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --redis) url="$2"; shift 2 ;;
    *) echo "usage: scripts/demo.sh [--redis URL]" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh

pids=()
tmp="$(mktemp -d)"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ -z "$url" ]; then
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >/dev/null &
  pids+=($!)
  url="redis://127.0.0.1:$port"
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "demo: started redis-server at $url"
fi

bullpen="$root/target/release/bullpen"
driver="$root/tests/node/driver.js"
emails="demo-emails-$$"
flaky="demo-flaky-$$"

echo "demo: adding jobs from Node's bullmq and from bullpen add"
node_ids="$(node "$driver" add "$url" "$emails" '[
  {"name":"welcome","data":{"to":"ada@example.com","lang":"en"}},
  {"name":"welcome","data":{"to":"日本@example.jp","lang":"ja"},"opts":{"jobId":"welcome-jp"}},
  {"name":"digest","data":{"items":[1,2,3],"nested":{"ok":true}}}]')"
cli_id="$("$bullpen" add --redis "$url" --queue "$emails" receipt '{"order":42,"total":"9.99"}')"
flaky_ids="$(node "$driver" add "$url" "$flaky" '[{"name":"retry-me","data":{"failTimes":2},"opts":{"attempts":3}}]')"

echo "demo: starting workers (echo-rust.wasm on $emails, flaky-rust.wasm on $flaky)"
"$bullpen" worker --redis "$url" --queue "$emails" --plugin target/plugins/echo-rust.wasm --concurrency 4 2>"$tmp/w1.log" &
pids+=($!)
"$bullpen" worker --redis "$url" --queue "$flaky" --plugin target/plugins/flaky-rust.wasm 2>"$tmp/w2.log" &
pids+=($!)

all_ids="$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]) + [sys.argv[2]]))' "$node_ids" "$cli_id")"
report() {
  python3 - "$1" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
for j in v["jobs"]:
    result = j["returnvalue"] if j["state"] == "completed" else j["failedReason"]
    print(f'  job {j["id"]:<12} {j["name"]:<9} {j["state"]:<9} attempts={j["attemptsMade"]} progress={j["progress"]} result={json.dumps(result, ensure_ascii=False)}')
    for line in j["logs"]:
        print(f'      log: {line}')
PY
}
wait_done() { # queue ids
  for _ in $(seq 300); do
    v="$(node "$driver" inspect "$url" "$1" "$2")"
    if python3 -c 'import json,sys; sys.exit(0 if all(j["state"] in ("completed","failed") for j in json.loads(sys.argv[1])["jobs"]) else 1)' "$v"; then
      echo "$v"; return 0
    fi
    sleep 0.2
  done
  echo "demo: jobs did not finish in time" >&2; node "$driver" inspect "$url" "$1" "$2" >&2; return 1
}
echo "demo: results in $emails, as Node's bullmq sees them:"
report "$(wait_done "$emails" "$all_ids")"
echo "demo: results in $flaky (fails twice, succeeds on attempt 3):"
report "$(wait_done "$flaky" "$flaky_ids")"
echo "demo: done"
