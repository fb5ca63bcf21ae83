#!/usr/bin/env bash
# A polyhost cluster on loopback in one command (docs/cluster.md):
# etcd on http://127.0.0.1:2379, three nodes web-1..3 on 127.0.0.2-4:8080,
# HAProxy on http://127.0.0.1:8180 kept current by `polyhost cluster front`,
# the demo sites of vhosts/ put into etcd and placed on the nodes. Prints
# `cluster-demo: ready` once every demo site answers through HAProxy.
#
#   scripts/cluster-demo.sh          start (in the background)
#   scripts/cluster-demo.sh stop     stop everything it started (PID files)
#
# State, logs and PID files: $CLUSTER_DEMO_DIR (/tmp/polyhost-cluster-demo).
# CLUSTER_DEMO_SKIP_SETUP=1 skips scripts/setup.sh; POLYHOST_BIN=DIR uses
# the binaries in DIR (e.g. target/debug) instead of the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${CLUSTER_DEMO_DIR:-/tmp/polyhost-cluster-demo}
ETCD=http://127.0.0.1:2379
NODES=(web-1 web-2 web-3)

stop() {
    local f pid
    for f in "$RUN"/*.pid; do
        [[ -e $f ]] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    echo "cluster-demo: stopped"
}

if [[ ${1:-start} == stop ]]; then
    stop
    exit 0
fi

[[ -n ${CLUSTER_DEMO_SKIP_SETUP:-} ]] || ./scripts/setup.sh
source scripts/lib.sh
demo_location
BIN=${POLYHOST_BIN:-$DEMO_BIN}
BASE=$(cd "$(dirname "$DEMO_CONFIG")" && pwd)
ph() { "$BIN/polyhost" cluster --etcd "$ETCD" "$@"; }

if ls "$RUN"/*.pid >/dev/null 2>&1; then
    echo "cluster-demo: already running (scripts/cluster-demo.sh stop first)" >&2
    exit 1
fi
rm -rf "$RUN" && mkdir -p "$RUN/maps"
: >"$RUN/maps/hosts.map"
: >"$RUN/maps/wildcards.map"

# etcd
etcd --name demo --data-dir "$RUN/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster demo=http://127.0.0.1:2380 >"$RUN/etcd.log" 2>&1 &
echo $! >"$RUN/etcd.pid"
for _ in $(seq 100); do ph status >/dev/null 2>&1 && break; sleep 0.2; done
ph status >/dev/null || { echo "cluster-demo: etcd did not start; see $RUN/etcd.log" >&2; stop; exit 2; }

# Three nodes: their configuration next to the demo's (relative site paths
# such as root = "demo/php" resolve there), their state under $RUN.
i=2
for node in "${NODES[@]}"; do
    mkdir -p "$RUN/$node/vhosts"
    cat >"$BASE/cluster-demo-$node.toml" <<TOML
listen = ["127.0.0.$i:8080"]
vhosts_dir = "$RUN/$node/vhosts"
state_dir = "$RUN/$node/state"
log_dir = "$RUN/$node/log"
shutdown_timeout = "5s"

[admin]
socket = "$RUN/$node/admin.sock"

[cluster]
etcd = ["$ETCD"]
node = "$node"
advertise = "127.0.0.$i:8080"
lease_ttl = "5s"
TOML
    "$BIN/polyhost" serve --config "$BASE/cluster-demo-$node.toml" >"$RUN/$node.log" 2>&1 &
    echo $! >"$RUN/$node.pid"
    i=$((i + 1))
done

# HAProxy and the front.
ph haproxy-config --listen 127.0.0.1:8180 --map-dir "$RUN/maps" --stats-socket "$RUN/haproxy.sock" \
    --node web-1=127.0.0.2:8080 --node web-2=127.0.0.3:8080 --node web-3=127.0.0.4:8080 >"$RUN/haproxy.cfg"
haproxy -D -p "$RUN/haproxy.pid" -f "$RUN/haproxy.cfg"
"$BIN/polyhost" cluster --etcd "$ETCD" front --haproxy-socket "$RUN/haproxy.sock" --map-dir "$RUN/maps" \
    --id demo-front >"$RUN/front.log" 2>&1 &
echo $! >"$RUN/front.pid"

# Every node registered, then the sites.
for _ in $(seq 300); do
    [[ $(ph status --json 2>/dev/null | grep -c '"advertise"') -ge 3 ]] && break
    sleep 0.2
done
declare -A PLACE=([static-demo]=web-1 [php-demo]=web-1 [python-demo]=web-2 [asgi-demo]=web-3 [node-demo]=web-3)
declare -A HOST=([static-demo]=static.localhost [php-demo]=php.localhost [python-demo]=python.localhost
    [asgi-demo]=asgi.localhost [node-demo]=node.localhost)
for site in "${!PLACE[@]}"; do
    ph put "$site" "$BASE/vhosts/$site.toml" >/dev/null
    ph place "$site" "${PLACE[$site]}" >/dev/null
done

for site in "${!HOST[@]}"; do
    ok=
    for _ in $(seq 600); do
        if curl -fs -o /dev/null -H "Host: ${HOST[$site]}" http://127.0.0.1:8180/; then ok=1; break; fi
        sleep 0.2
    done
    if [[ -z $ok ]]; then
        echo "cluster-demo: ${HOST[$site]} does not answer on 127.0.0.1:8180; see $RUN/*.log and:" >&2
        ph status >&2 || true
        exit 1
    fi
done
echo "cluster-demo: ready"
echo "  curl -H 'Host: php.localhost' http://127.0.0.1:8180/"
echo "  $BIN/polyhost cluster status"
echo "  $BIN/polyhost cluster move python-demo web-3"
echo "  scripts/cluster-demo.sh stop"
