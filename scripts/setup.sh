#!/usr/bin/env bash
# Installs what polyhost and its tests need and is missing, then builds.
# Safe to run again: it only installs what is absent.
#   php8.2-fpm       the PHP runtime (one pool per PHP site)
#   python3-dev      Debian's CPython 3.11 with libpython, linked by polyhost-python
#   python3-venv     virtualenvs for Python sites and the tests
#   nodejs, npm      Node.js for [app] sites: the Node demo and the [app] tests
#   ruby, puma, ruby-rack   a Rack app on Puma in the [app] tests
#   pebble           the test ACME CA (pebble, pebble-challtestsrv) for tests/acme_pebble.rs
#   protobuf-compiler  protoc, which the etcd client crate (etcd-client) needs to build
#   etcd-server, haproxy   the cluster's store and front (tests/cluster*.rs, scripts/cluster-demo.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PACKAGES=(php8.2-fpm php8.2-cli php8.2-sqlite3 adminer python3-dev python3-venv curl procps
    nodejs ruby puma ruby-rack pebble protobuf-compiler etcd-server haproxy)
# Debian's npm is its own package; a nodejs from elsewhere may ship npm
# itself (and conflict with Debian's): only install it when there is none.
command -v npm >/dev/null || PACKAGES+=(npm)
install_missing setup "${PACKAGES[@]}"

# The demo's PHP, Python, ASGI and Node.js sites run as these users when polyhost runs as
# root: one each (each with its own group), since two sites that run code
# may not share a user or a group.
if [[ $EUID -eq 0 ]]; then
    # The router process (polyhost serve as root) runs as `router_user`,
    # by default this one (no home, no shell, no supplementary group).
    if ! id polyhost >/dev/null 2>&1; then
        echo "setup: creating the user polyhost for the router process (router_user)"
        useradd --system --no-create-home --shell /usr/sbin/nologin polyhost
    fi
    for user in polyhost-demo-php polyhost-demo-python polyhost-demo-asgi polyhost-demo-node; do
        if ! id "$user" >/dev/null 2>&1; then
            echo "setup: creating the user $user for the demo sites"
            useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$user"
        fi
    done
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust from https://rustup.rs and run again" >&2
    exit 2
fi
# A virtualenv with real frameworks for the Python tests (Flask, Django;
# ASGI: Starlette, FastAPI, and uvloop, which polyhost-python uses when a
# site's virtualenv has it),
# made by the interpreter polyhost-python links against, in a place site
# users can read.
TEST_VENV=${TEST_PYTHON_VENV:-/var/tmp/polyhost-test-venv}
# gunicorn and uvicorn: a site's own Python server as an [app] (tests/app_python.rs).
if [[ ! -x $TEST_VENV/bin/python ]] || ! "$TEST_VENV/bin/python" -c "import flask, django, starlette, fastapi, uvloop, gunicorn, uvicorn" 2>/dev/null; then
    echo "setup: creating the test virtualenv $TEST_VENV (flask, django, starlette, fastapi, uvloop, gunicorn, uvicorn)"
    /usr/bin/python3.11 -m venv "$TEST_VENV"
    "$TEST_VENV/bin/pip" install -q --disable-pip-version-check "flask>=3,<4" "django>=5,<6" "starlette>=0.40" "fastapi>=0.115" "uvloop>=0.19" \
        "gunicorn>=22" "uvicorn>=0.30"
    chmod -R a+rX "$TEST_VENV"
fi

# The npm packages of the Node [app] test apps (express, ws), exactly as
# tests/apps/node/package-lock.json pins them (npm ci), where site users can
# read them and outside /tmp and /var/tmp (a sandboxed site gets its own);
# the tests point NODE_PATH at its node_modules. Redone only when
# the lock file changed.
TEST_NODE=${TEST_NODE_MODULES:-/var/lib/polyhost-test-node}
if ! cmp -s tests/apps/node/package-lock.json "$TEST_NODE/package-lock.json" || [[ ! -d $TEST_NODE/node_modules/express ]]; then
    echo "setup: installing the Node test packages into $TEST_NODE (npm ci: express, ws)"
    mkdir -p "$TEST_NODE"
    cp tests/apps/node/package.json tests/apps/node/package-lock.json "$TEST_NODE/"
    (cd "$TEST_NODE" && npm ci --no-audit --no-fund --loglevel=error)
    chmod -R a+rX "$TEST_NODE"
fi

echo "setup: building"
cargo build --release --workspace --bins

# --- More Python versions (issue 23) ------------------------------------------
# setup_python_versions: for each CPython minor version the tests run besides
# Debian's 3.11 ($POLYHOST_TEST_PYTHONS, default "3.9 3.13": the oldest pyo3
# 0.30 supports and the newest here), when this machine has a pyenv build of
# it: installs it as /opt/polyhost/python/3.X, builds its worker
# target/debug/polyhost-python3.X (debug, as the tests are built), and makes
# the test virtualenv /var/tmp/polyhost-test-venv-3.X with a Django that
# needs that interpreter (3.2 runs on 3.9 but not 3.13, 6.0 needs 3.12 or
# newer). Without pyenv it builds nothing more: the demo needs only Debian's
# Python. Prints how long it took (docs/operations.md).
setup_python_versions() {
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv} v venv django started=$SECONDS
    declare -A frameworks=([3.9]="django>=3.2,<3.3" [3.13]="django>=6.0,<6.1")
    for v in ${POLYHOST_TEST_PYTHONS:-3.9 3.13}; do
        if [[ ! -x /opt/polyhost/python/$v/bin/python$v ]] &&
            ! compgen -G "$pyenv_root/versions/$v.*" >/dev/null; then
            echo "setup: no Python $v here (no pyenv build, nothing in /opt/polyhost/python): not building its worker"
            continue
        fi
        [[ $EUID -eq 0 ]] || { echo "setup: installing Python $v under /opt needs root" >&2; return 1; }
        install_missing setup patchelf
        ./scripts/build-python-worker.sh "$v"
        venv=/var/tmp/polyhost-test-venv-$v
        django=${frameworks[$v]:-django}
        if ! "$venv/bin/python" -c "import django" 2>/dev/null; then
            echo "setup: creating the test virtualenv $venv ($django)"
            rm -rf "$venv"
            "/opt/polyhost/python/$v/bin/python$v" -m venv "$venv"
            "$venv/bin/pip" install -q --disable-pip-version-check "$django"
            chmod -R a+rX "$venv"
        fi
    done
    echo "setup: Python versions took $((SECONDS - started)) s"
}
setup_python_versions
