#!/usr/bin/env bash
# polyhost side by side with its peers (issues 8 and 19).
#
#   integration/bench/run.sh [--quick] [--only throughput,latency,idle,longpoll,density]
#       [--settings defaults,tuned] [--concurrency 16,64,256] [--systems ...] [--workloads ...]
#       [--reps N] [--duration S]
#
# Installs what is missing (Debian: apache2, libapache2-mod-wsgi-py3, nginx, nodejs,
# php8.2-fpm, wrk, tcpdump (php_queue.py --wire), nghttp2-client (h2load); PyPI into a venv: granian, gunicorn), builds polyhost in
# release (not with BENCH_BIN_DIR: those binaries are measured), creates the
# user polyhost-bench (bench.py adds one `phb-<site>` user per polyhost site
# that runs code: polyhost refuses two such sites under one user), then runs
# bench.py: every system on its own loopback ports at two settings (defaults
# as installed; tuned-equal: the same process × thread numbers), every
# throughput workload at each concurrency, interleaved, a Markdown report in
# integration/bench/results/. Everything it starts is stopped by PID on exit.
# Needs root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$REPO/scripts/lib.sh"

if [[ $EUID -ne 0 ]]; then
    echo "bench: run as root (it starts Apache/nginx/php-fpm and polyhost's site users)" >&2
    exit 2
fi

PACKAGES=(apache2 libapache2-mod-wsgi-py3 nginx php8.2-fpm wrk python3-dev python3-venv curl procps nodejs tcpdump nghttp2-client)
install_missing bench "${PACKAGES[@]}"

VENV=${BENCH_VENV_DIR:-/var/tmp/polyhost-bench-venv}
if [[ ! -x $VENV/bin/granian || ! -x $VENV/bin/gunicorn || ! -x $VENV/bin/uvicorn ]]; then
    echo "bench: creating $VENV (granian, gunicorn, uvicorn with uvloop and httptools)"
    /usr/bin/python3.11 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check granian gunicorn 'uvicorn[standard]'
fi
chmod -R a+rX "$VENV"

if ! command -v cargo >/dev/null; then
    echo "bench: cargo not found; install Rust from https://rustup.rs and run again" >&2
    exit 2
fi
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    echo "bench: measuring the binaries in $BENCH_BIN_DIR (no build)"
else
    echo "bench: building polyhost (release)"
    (cd "$REPO" && cargo build --release --workspace --bins)
fi

id polyhost-bench >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin polyhost-bench

# 10,000 idle connections and 1,000 long polls need file descriptors: as
# many as we may have (raising the hard limit needs CAP_SYS_RESOURCE, which a
# container may not grant; 20,000 is enough).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 12000)); then
    echo "bench: warning: only $(ulimit -n) file descriptors; the 10,000-connection test will fail" >&2
fi

# Not under /tmp: a site whose root or Python path lies under /tmp keeps the
# host's /tmp in its sandbox (and says so), which is not the sandbox measured.
BENCH_TREES=${BENCH_TREES:-/var/lib/polyhost-bench}
mkdir -p "$BENCH_TREES"
chmod 755 "$BENCH_TREES"
TREE=$(mktemp -d "$BENCH_TREES/tree.XXXXXX")
chmod 755 "$TREE"
PIDFILE=$TREE/pids
: >"$PIDFILE"
cleanup() {
    # bench.py stops what it started; this catches what it could not (killed, crashed).
    while read -r pid; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    done <"$PIDFILE"
    if [[ -z ${BENCH_KEEP:-} ]]; then rm -rf "$TREE"; else echo "bench: kept $TREE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench: tree $TREE; load average $(cut -d' ' -f1-3 /proc/loadavg)"
BENCH_REPO=$REPO BENCH_VENV=$VENV BENCH_TREE=$TREE BENCH_PIDFILE=$PIDFILE \
    /usr/bin/python3.11 "$HERE/bench.py" "$@"
