#!/usr/bin/env bash
# Profiles polyhost under one workload with callgrind (instruction counts are
# steady on a noisy shared machine; `perf stat -e instructions` is not
# supported here), and prints the top functions.
#
# The router cannot run under valgrind 3.19 (Debian 12): it does not know
# openat2 (static files answer 500) nor pidfd_open (workers do not start), and
# it only lets a process keep RLIMIT_NOFILE's hard limit. So the router runs
# natively and is sampled with `perf record -e cpu-clock` (a software clock:
# works without hardware counters), and for wsgi-* the *worker* runs under
# callgrind (through the site's `worker` key and a wrapper script).
#
# Run as root, polyhost runs split: `perf` samples the `polyhost router`
# child (the supervisor does none of a request's work), and `strace -c`
# counts its system calls per request over a second run of the same length
# (STRACE=0 skips it). node-hello is the `[app]` site of the benchmark's
# "Node hello" (tests/apps/node/hello.js, one process).
#
#   integration/bench/profile.sh [wsgi-hello|wsgi-64k|static-13b|static-1mib|php-hello|php-info|node-hello] [seconds]
#   NATIVE_WORKER=1 integration/bench/profile.sh wsgi-hello   # worker natively, sampled by perf too
#
# Run integration/bench/run.sh once first (it installs wrk and builds).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORKLOAD=${1:-wsgi-hello}
SECONDS_=${2:-10}
PORT=18280
BIN=${BENCH_BIN_DIR:-$REPO/target/release}

case $WORKLOAD in
    wsgi-hello) HOST=hello.bench; URLPATH=/ ;;
    wsgi-64k) HOST=big.bench; URLPATH=/ ;;
    static-13b) HOST=static.bench; URLPATH=/13b.txt ;;
    static-1mib) HOST=static.bench; URLPATH=/1mib.bin ;;
    php-hello) HOST=php.bench; URLPATH=/hello.php ;;
    php-info) HOST=php.bench; URLPATH=/phpinfo.php ;;
    node-hello) HOST=node.bench; URLPATH=/ ;;
    *) echo "unknown workload $WORKLOAD" >&2; exit 2 ;;
esac

# One user per site that runs code (polyhost refuses two under one user);
# the same names bench.py uses.
for u in polyhost-bench phb-hello phb-big phb-php phb-node; do
    id "$u" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$u"
done
TREE=$(mktemp -d /tmp/polyhost-profile.XXXXXX)
chmod 755 "$TREE"
mkdir -p "$TREE"/{apps,static,php,vhosts,state,log,out,node}
cp "$REPO/tests/apps/node/hello.js" "$TREE/node/"
cp "$HERE"/apps/*.php "$TREE/php/"
chmod 1777 "$TREE/out"
cp "$HERE"/apps/*.py "$TREE/apps/"
printf 'Hello, World!' >"$TREE/static/13b.txt"
head -c 1048576 /dev/urandom >"$TREE/static/1mib.bin"
cat >"$TREE/polyhost.toml" <<EOF
listen = ["127.0.0.1:$PORT"]
vhosts_dir = "vhosts"
include = []
state_dir = "state"
log_dir = "log"
log_level = "warn"
shutdown_timeout = "5s"
[admin]
socket = "state/admin.sock"
EOF
cat >"$TREE/worker.sh" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$TREE/out/callgrind.%p --dump-instr=no --vgdb=no $BIN/polyhost-python "\$@"
EOF
chmod 755 "$TREE/worker.sh"
[[ -n ${NATIVE_WORKER:-} ]] && printf '#!/bin/sh\nexec %s "$@"\n' "$BIN/polyhost-python" >"$TREE/worker.sh"
for app in hello big; do
    cat >"$TREE/vhosts/$app.toml" <<EOF
hosts = ["$app.bench"]
user = "phb-$app"
[python]
app = "$app"
path = ["$TREE/apps"]
processes = 1
threads = 15
startup_timeout = "120s"
worker = "$TREE/worker.sh"
EOF
done
cat >"$TREE/vhosts/php.toml" <<EOF
hosts = ["php.bench"]
root = "$TREE/php"
user = "phb-php"
[php]
mode = "static"
max_children = 8
max_requests = 0
EOF
cat >"$TREE/vhosts/node.toml" <<EOF
hosts = ["node.bench"]
root = "$TREE/node"
user = "phb-node"
[app]
command = ["node", "hello.js"]
EOF
cat >"$TREE/vhosts/static.toml" <<EOF
hosts = ["static.bench"]
root = "$TREE/static"
user = "polyhost-bench"
EOF
chmod -R a+rX "$TREE"

PID=
cleanup() {
    if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; fi
    [[ -z ${BENCH_KEEP:-} ]] && rm -rf "$TREE" || echo "profile: kept $TREE"
}
trap cleanup EXIT

# valgrind only lets a process set RLIMIT_NOFILE's hard limit to what it already is:
# start from 4096, the value polyhost gives its site processes.
ulimit -n 4096
ulimit -Hn 4096
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    "$BIN/polyhost" serve --config "$TREE/polyhost.toml" 2>"$TREE/valgrind.log" &
PID=$!
for _ in $(seq 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$PORT$URLPATH" || true)
    [[ $code == 200 ]] && break
    sleep 0.2
done
[[ $code == 200 ]] || { echo "profile: polyhost did not answer ($code)"; tail -20 "$TREE/valgrind.log"; exit 1; }
# Warm (the worker's imports are not what we measure), then zero the counters.
wrk -t1 -c8 -d3s -H "Host: $HOST" "http://127.0.0.1:$PORT$URLPATH" >/dev/null
# (No `callgrind_control -z`: vgdb hangs on a worker of another user. The
# start-up and warm-up are in the counts; they are few next to the run.)
# The router: the supervisor's child `polyhost router` when split (as root),
# else the supervisor itself.
ROUTER=$PID
for child in $(pgrep -P "$PID" || true); do
    [[ $(tr '\0' ' ' <"/proc/$child/cmdline" 2>/dev/null) == *"polyhost router"* ]] && ROUTER=$child
done
echo "profile: router pid $ROUTER (supervisor $PID)"
if [[ ${STRACE:-1} != 0 ]] && command -v strace >/dev/null; then
    strace -c -f -p "$ROUTER" -o "$TREE/strace.txt" &
    STRACE_PID=$!
    sleep 0.5
    wrk -t1 -c8 -d"${SECONDS_}s" -H "Host: $HOST" "http://127.0.0.1:$PORT$URLPATH" >"$TREE/wrk-strace.txt"
    kill -INT "$STRACE_PID"
    wait "$STRACE_PID" 2>/dev/null || true
    traced=$(awk '/requests in/ {print $1}' "$TREE/wrk-strace.txt")
    echo "== router system calls under strace ($traced requests): calls, then per request"
    awk -v n="$traced" '$1 ~ /^[0-9.]+$/ && NF >= 5 {c = $4; printf "  %-16s %9d %6.2f\n", $NF, c, c / (n > 0 ? n : 1)}' "$TREE/strace.txt" | sort -k2 -nr | head -15
fi
perf record -q -e cpu-clock -g -p "$ROUTER" -o "$TREE/perf.data" -- sleep "$SECONDS_" 2>/dev/null &
PERF=$!
if [[ -n ${NATIVE_WORKER:-} ]]; then
    WPIDS=$(pgrep -d, -u polyhost-bench -f "$BIN/polyhost-python" || true)
    perf record -q -e cpu-clock -g -p "$WPIDS" -o "$TREE/perf-worker.data" -- sleep "$SECONDS_" 2>/dev/null &
    WPERF=$!
fi
wrk -t1 -c8 -d"${SECONDS_}s" -H "Host: $HOST" "http://127.0.0.1:$PORT$URLPATH" | tee "$TREE/wrk.txt"
if [[ -n ${PERF:-} ]]; then
    wait "$PERF" || true
    echo
    echo "== router (perf, cpu-clock samples, self time): by object, then the top symbols"
    perf report -i "$TREE/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-90 >"$TREE/perf-dso.txt" || true
    head -12 "$TREE/perf-dso.txt"
    perf report -i "$TREE/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-150 >"$TREE/perf-sym.txt" || true
    head -45 "$TREE/perf-sym.txt"
    mkdir -p "$HERE/results"
    cp "$TREE/perf-sym.txt" "$HERE/results/$(date +%Y%m%d-%H%M%S)-$WORKLOAD-router-perf.txt"
fi
if [[ -n ${WPERF:-} ]]; then
    wait "$WPERF" || true
    echo
    echo "== workers (perf, cpu-clock samples, self time): by object, then the top symbols"
    perf report -i "$TREE/perf-worker.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-90 | head -8 || true
    perf report -i "$TREE/perf-worker.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-150 >"$TREE/perf-wsym.txt" || true
    head -40 "$TREE/perf-wsym.txt"
    cp "$TREE/perf-wsym.txt" "$HERE/results/$(date +%Y%m%d-%H%M%S)-$WORKLOAD-worker-perf.txt"
fi
requests=$(awk '/requests in/ {print $1}' "$TREE/wrk.txt")
kill -TERM "$PID"
wait "$PID" 2>/dev/null || true
PID=
sleep 1
echo
echo "profile: $WORKLOAD, $requests requests under callgrind"
shopt -s nullglob
# The workers dump their counts when they exit (on polyhost's SIGTERM).
for _ in $(seq 100); do pgrep -u polyhost-bench -f "$TREE/out" >/dev/null || break; sleep 0.3; done
for f in "$TREE"/out/callgrind.*; do
    cmd=$(grep -m1 '^cmd:' "$f" | cut -c6- | cut -c1-80)
    total=$(grep -m1 '^summary:\|^totals:' "$f" | awk '{print $2}')
    [[ -z $total || $total -lt 1000000 ]] && continue
    echo
    echo "== $cmd"
    echo "   instructions: $total ($((total / (requests > 0 ? requests : 1))) per request)"
    callgrind_annotate --inclusive=no "$f" 2>/dev/null | sed -n '/^Ir/,$p' | cut -c1-160 >"$f.top" || true
    head -40 "$f.top"
    callgrind_annotate --inclusive=yes "$f" 2>/dev/null | sed -n '/^Ir/,$p' | cut -c1-160 >"$f.incl" || true
    mkdir -p "$HERE/results"
    cp "$f.top" "$HERE/results/$(date +%Y%m%d-%H%M%S)-$WORKLOAD-$(basename "$f").txt"
    cp "$f.incl" "$HERE/results/$(date +%Y%m%d-%H%M%S)-$WORKLOAD-$(basename "$f").inclusive.txt"
done
