#!/usr/bin/env bash
# End-to-end: scripts/cluster-demo.sh (etcd on 127.0.0.1:2379, three nodes,
# HAProxy on 127.0.0.1:8180 with `polyhost cluster front`) becomes ready,
# every demo site answers through HAProxy, a move and a drain keep them
# answering, `scripts/cluster-demo.sh stop` stops all it started. ~15 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -x target/release/polyhost && -x target/release/polyhost-python ]] || cargo build --release --workspace --bins
export CLUSTER_DEMO_SKIP_SETUP=1 CLUSTER_DEMO_DIR=${CLUSTER_DEMO_DIR:-/tmp/polyhost-cluster-scenario}
trap 'scripts/cluster-demo.sh stop >/dev/null' EXIT
out=$(scripts/cluster-demo.sh)
echo "$out"
grep -qx "cluster-demo: ready" <<<"$out"
bin=${POLYHOST_BIN:-target/release}/polyhost

served() {
    local host
    for host in static php python asgi node; do
        curl -fs -o /dev/null -H "Host: $host.localhost" http://127.0.0.1:8180/ ||
            { echo "cluster-demo scenario: $host.localhost not served ($1)" >&2; "$bin" cluster status >&2; exit 1; }
    done
}
served "after start"
"$bin" cluster move python-demo web-3
served "after the move"
"$bin" cluster drain web-1
served "after draining web-1"
"$bin" cluster status --json | grep -q '"node": "web-1"' &&
    { echo "cluster-demo scenario: a site is still placed on web-1" >&2; exit 1; }
scripts/cluster-demo.sh stop
trap - EXIT
for f in "$CLUSTER_DEMO_DIR"/*.pid; do
    [[ -e $f ]] && { echo "cluster-demo scenario: $f left behind" >&2; exit 1; }
done
echo "cluster-demo scenario: ok"
