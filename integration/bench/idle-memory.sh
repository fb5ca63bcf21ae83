#!/usr/bin/env bash
# Where the memory of idle keep-alive connections goes: polyhost under
# valgrind's massif (heap snapshots), N connections that each made one request
# (to an unknown host: a 421 from the router, no site, no openat2, which
# valgrind 3.19 does not know) and then stay idle; prints the peak snapshot's
# allocation tree.
#
#   integration/bench/idle-memory.sh [connections]   (default 2000)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
N=${1:-2000}
PORT=18281
TREE=$(mktemp -d /tmp/polyhost-massif.XXXXXX)
mkdir -p "$TREE"/{vhosts,state,log}
cat >"$TREE/polyhost.toml" <<EOF
listen = ["127.0.0.1:$PORT"]
vhosts_dir = "vhosts"
include = []
state_dir = "state"
log_dir = "log"
log_level = "warn"
shutdown_timeout = "2s"
[admin]
socket = "state/admin.sock"
[limits]
max_connections = 15000
max_connections_per_ip = 15000
EOF
ulimit -n 4096 2>/dev/null || true
PID=
cleanup() {
    if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$TREE"
}
trap cleanup EXIT
valgrind --tool=massif --vgdb=no --massif-out-file="$TREE/massif.out" --threshold=2.0 \
    "$REPO/target/release/polyhost" serve --config "$TREE/polyhost.toml" 2>"$TREE/valgrind.log" &
PID=$!
for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.2; done
/usr/bin/python3.11 - "$PORT" "$N" <<'EOF'
import asyncio, sys
sys.path.insert(0, "integration/bench")
port, n = int(sys.argv[1]), int(sys.argv[2])

async def main():
    conns = []
    for i in range(0, n, 200):
        async def one():
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nHost: nobody.invalid\r\n\r\n")
            await r.readuntil(b"\r\n\r\n")
            return r, w
        conns += await asyncio.gather(*(one() for _ in range(min(200, n - i))))
    print(f"idle-memory: {len(conns)} connections open and idle")
    await asyncio.sleep(5)
    for _, w in conns:
        w.close()

asyncio.run(main())
EOF
kill -TERM "$PID"
wait "$PID" 2>/dev/null || true
PID=
ms_print "$TREE/massif.out" >"$TREE/massif.txt"
mkdir -p "$HERE/results"
cp "$TREE/massif.txt" "$HERE/results/$(date +%Y%m%d-%H%M%S)-idle-$N-massif.txt"
# The peak snapshot's tree.
awk '/\(peak\)/{p=1} p' "$TREE/massif.txt" | head -60
