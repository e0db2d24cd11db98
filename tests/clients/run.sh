#!/usr/bin/env bash
# Prove the dialects with the real client libraries against a real `flowgate demo` on free
# ports. Usage: tests/clients/run.sh [path/to/flowgate]   (default: target/debug/flowgate)
# Python clients are installed into tests/clients/.venv from requirements.txt (pinned); the npm
# clients into tests/clients/js/node_modules from its package-lock.json (npm ci).
# The demo serves tests/clients/flows: the sample agents plus `failing` (fails after it started
# streaming) and `slow` (a long run), which the error, abort, resume and rate-limit checks need.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/debug/flowgate}"
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import google.adk, openai, websockets' 2>/dev/null \
  || [ "$here/requirements.txt" -nt "$venv/.installed" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  touch "$venv/.installed"
fi
js="$here/js"
if [ ! -f "$js/node_modules/.package-lock.json" ] || [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
fi
# Node 20's global WebSocket (the native path the answers are compared with) is behind a flag.
node_flags=()
node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || node_flags=(--experimental-websocket --no-warnings)
# shellcheck source=../start-demo.sh
. "$root/tests/start-demo.sh"
start_demo "$bin" --llm-token-delay 5ms --flows-dir "$here/flows"
export FLOWGATE_USER=alice
echo "== adk: Google ADK AdkWebServerClient ($(grep "^google-adk==" "$here/requirements.txt"))"
"$venv/bin/python" "$here/adk_web_server_client.py"
echo "== openai: the OpenAI Python SDK ($(grep '^openai==' "$here/requirements.txt"))"
"$venv/bin/python" "$here/openai_client.py"
echo "== vercel: the AI SDK's DefaultChatTransport and readUIMessageStream (ai@$(node -p 'require("'"$js"'/node_modules/ai/package.json").version'))"
node "${node_flags[@]}" "$js/vercel.mjs"
echo "== agui: @ag-ui/client's HttpAgent (@ag-ui/client@$(node -p 'require("'"$js"'/node_modules/@ag-ui/client/package.json").version'))"
node "${node_flags[@]}" "$js/agui.mjs"
