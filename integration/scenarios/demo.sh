#!/usr/bin/env bash
# End-to-end: the real release binary serves the repository's own demo
# configuration (polyhost.toml + vhosts/) on an ephemeral port; every demo
# site answers (the ASGI one also over a WebSocket); SIGTERM stops it with exit 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -x target/release/polyhost && -x target/release/polyhost-python ]] || cargo build --release --workspace --bins
source scripts/lib.sh
DEMO_STAGE_DIR=$(mktemp -d /var/tmp/polyhost-demo-XXXX)
demo_location
bin=$DEMO_BIN/polyhost
config=$DEMO_CONFIG

work=$(mktemp -d)
chmod 755 "$work" # site users traverse it to reach their own state (tmp, sessions) in state/
log="$work/polyhost.log"
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work" "$DEMO_STAGE_DIR"
}
trap cleanup EXIT

"$bin" check --config "$config"

POLYHOST_LISTEN='["127.0.0.1:0"]' POLYHOST_STATE_DIR="$work/state" POLYHOST_LOG_DIR="$work/log" \
    POLYHOST_ADMIN__SOCKET="$work/state/admin.sock" "$bin" serve --config "$config" 2>"$log" &
pid=$!

port=""
for _ in $(seq 1 100); do
    port=$(grep -o 'listening addr=127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2 || true)
    [[ -n $port ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "demo: polyhost exited early" >&2; exit 1; }
    sleep 0.1
done
[[ -n $port ]] || { cat "$log"; echo "demo: polyhost did not start listening" >&2; exit 1; }

fetch() { # host path expected-status expected-substring
    local out status
    out=$(curl -s -o "$work/body" -w '%{http_code}' -H "Host: $1" "http://127.0.0.1:$port$2")
    status=$out
    if [[ $status != "$3" ]] || ! grep -q -- "$4" "$work/body"; then
        echo "demo: GET $1$2 gave $status, wanted $3 with '$4'" >&2
        cat "$work/body" >&2; cat "$log" >&2
        exit 1
    fi
    echo "ok  $1$2 -> $status"
}
fetch static.localhost / 200 "polyhost static demo"
fetch unknown.example /css/site.css 200 "font-family"
fetch python.localhost /hello 200 "polyhost Python demo"
fetch php.localhost / 200 "polyhost PHP demo"
fetch php.localhost /about 200 "REQUEST_URI=/about"
fetch php.localhost /hello.txt 200 "static file next to PHP"
fetch asgi.localhost / 200 "polyhost ASGI demo"
fetch node.localhost /hello 200 "polyhost Node.js demo"
# The ASGI demo's WebSocket: handshake and one echo, with the bench's stdlib client.
python3 - "$port" <<'PY'
import sys
sys.path.insert(0, "integration/bench")
import wsload
s = wsload.connect(int(sys.argv[1]), "asgi.localhost", "/ws")
s.sendall(wsload.masked(b"hi", opcode=0x1))
reply = b""
while len(reply) < 10:
    chunk = s.recv(100)
    if not chunk:
        break
    reply += chunk
assert reply == bytes([0x81, 8]) + b"echo: hi", reply
print("ok  asgi.localhost/ws -> 101, echo")
PY

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
[[ $status -eq 0 ]] || { cat "$log"; echo "demo: exit status $status after SIGTERM" >&2; exit 1; }
grep -q '"GET / HTTP/1.1" 200' "$work/log/static-demo.access.log" || { echo "demo: no access log line" >&2; exit 1; }
echo "demo: ok"
