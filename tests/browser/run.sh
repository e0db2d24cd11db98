#!/usr/bin/env bash
# Run the browser tests against a real `flowgate demo` (gateway + engine, embedded agents) on
# free ports. Usage: tests/browser/run.sh [path/to/flowgate]   (default: target/debug/flowgate)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/debug/flowgate}"
out="$(mktemp)"
"$bin" demo --listen 127.0.0.1:0 --engine-listen 127.0.0.1:0 --llm-token-delay 40ms >"$out" 2>"$out.err" &
demo=$!
trap 'kill $demo 2>/dev/null || true; wait $demo 2>/dev/null || true; rm -f "$out" "$out.err"' EXIT
for _ in $(seq 1 100); do
  grep -q 'Chat page:' "$out" && break
  kill -0 $demo 2>/dev/null || { cat "$out.err"; echo "the demo exited"; exit 1; }
  sleep 0.1
done
line="$(grep 'Chat page:' "$out")"
url="${line#*Chat page:}"; url="$(echo "$url" | tr -d ' ')"
export FLOWGATE_URL="${url%%/#token=*}"
export FLOWGATE_TOKEN="${url#*#token=}"
[ -n "$FLOWGATE_URL" ] && [ -n "$FLOWGATE_TOKEN" ] || { echo "could not read the demo's URL"; exit 1; }
export FLOWGATE_BROWSER_REQUIRED=1
cd "$here"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
npm test
