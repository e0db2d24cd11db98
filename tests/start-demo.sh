# Sourced by tests/browser/run.sh and tests/clients/run.sh: start `flowgate demo` on free ports
# and export FLOWGATE_URL (http://host:port) and FLOWGATE_TOKEN (a token for `alice`); the demo
# is stopped when the calling script exits.
# Usage: start_demo path/to/flowgate [extra demo flags...]
start_demo() {
  local bin="$1"
  shift
  demo_out="$(mktemp)"
  "$bin" demo --listen 127.0.0.1:0 --engine-listen 127.0.0.1:0 "$@" >"$demo_out" 2>"$demo_out.err" &
  demo_pid=$!
  trap 'kill $demo_pid 2>/dev/null || true; wait $demo_pid 2>/dev/null || true; rm -f "$demo_out" "$demo_out.err"' EXIT
  for _ in $(seq 1 100); do
    grep -q 'Chat page:' "$demo_out" && break
    kill -0 $demo_pid 2>/dev/null || { cat "$demo_out.err"; echo "the demo exited"; exit 1; }
    sleep 0.1
  done
  local line url
  line="$(grep 'Chat page:' "$demo_out")"
  url="${line#*Chat page:}"; url="$(echo "$url" | tr -d ' ')"
  export FLOWGATE_URL="${url%%/#token=*}"
  export FLOWGATE_TOKEN="${url#*#token=}"
  [ -n "$FLOWGATE_URL" ] && [ -n "$FLOWGATE_TOKEN" ] || { echo "could not read the demo's URL"; exit 1; }
}
