#!/usr/bin/env bash
# Prove the dialects with the real client libraries against a real `flowgate demo` on free
# ports. Usage: tests/clients/run.sh [path/to/flowgate]   (default: target/debug/flowgate)
# Python clients are installed into tests/clients/.venv from requirements.txt (pinned).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/debug/flowgate}"
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import google.adk' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
out="$(mktemp)"
"$bin" demo --listen 127.0.0.1:0 --engine-listen 127.0.0.1:0 --llm-token-delay 5ms >"$out" 2>"$out.err" &
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
export FLOWGATE_USER=alice
[ -n "$FLOWGATE_URL" ] && [ -n "$FLOWGATE_TOKEN" ] || { echo "could not read the demo's URL"; exit 1; }
echo "== adk: Google ADK AdkWebServerClient ($(grep google-adk "$here/requirements.txt"))"
"$venv/bin/python" "$here/adk_web_server_client.py"
