#!/usr/bin/env bash
# Run the browser tests against a real `flowgate demo` (gateway + engine, embedded agents) on
# free ports. Usage: tests/browser/run.sh [path/to/flowgate]   (default: target/debug/flowgate)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/debug/flowgate}"
# shellcheck source=../start-demo.sh
. "$root/tests/start-demo.sh"
start_demo "$bin" --llm-token-delay 40ms
export FLOWGATE_BROWSER_REQUIRED=1
cd "$here"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm test
