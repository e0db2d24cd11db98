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
# shellcheck source=../start-demo.sh
. "$root/tests/start-demo.sh"
start_demo "$bin" --llm-token-delay 5ms
export FLOWGATE_USER=alice
echo "== adk: Google ADK AdkWebServerClient ($(grep google-adk "$here/requirements.txt"))"
"$venv/bin/python" "$here/adk_web_server_client.py"
