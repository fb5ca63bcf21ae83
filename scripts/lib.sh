# Shared by the scripts (setup, demo, the demo scenario, the benchmarks).
# Sourced, not run.
#
# demo_location: sets DEMO_CONFIG and DEMO_BIN. As root, site code runs as
# polyhost-demo-php, polyhost-demo-python, polyhost-demo-asgi and polyhost-demo-node; when they cannot read this
# checkout (e.g. it lives under /root) or execute its binaries, the demo
# (configuration, sites and binaries) is copied to a place they can read,
# and served from there.
demo_location() {
    DEMO_CONFIG=polyhost.toml
    DEMO_BIN=./target/release
    if [[ $EUID -eq 0 ]] && ! { runuser -u polyhost-demo-python -- test -r demo/python/app.py -a -x target/release/polyhost-python &&
        runuser -u polyhost-demo-php -- test -r demo/php/index.php &&
        runuser -u polyhost-demo-asgi -- test -r demo/asgi/app.py &&
        runuser -u polyhost-demo-node -- test -r demo/node/server.js; } 2>/dev/null; then
        local stage=${DEMO_STAGE_DIR:-/var/lib/polyhost-demo}
        echo "demo: the demo users cannot read $(pwd); serving a copy from $stage" >&2
        mkdir -p "$stage/bin"
        cp -r polyhost.toml conf.d vhosts demo "$stage/"
        cp target/release/polyhost target/release/polyhost-python "$stage/bin/"
        chmod -R a+rX "$stage"
        DEMO_CONFIG=$stage/polyhost.toml
        DEMO_BIN=$stage/bin
    fi
}

# install_missing WHO PACKAGE...: installs those of the Debian packages that
# are missing (apt-get; as root, or through sudo), without letting them start
# their system services: polyhost, its tests and the benchmarks run private
# instances (there may be no init system at all). WHO prefixes the message.
install_missing() {
    local who=$1 p
    shift
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "$who: installing ${missing[*]}"
    local as=()
    [[ $EUID -eq 0 ]] || as=(sudo)
    local policy_added= status=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${as[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${as[@]}" chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    "${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || status=$?
    if ((status == 0)); then
        "${as[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    fi
    if [[ -n $policy_added ]]; then "${as[@]}" rm -f /usr/sbin/policy-rc.d; fi
    if ((status != 0)); then
        echo "$who: installing ${missing[*]} failed (apt-get exit $status)" >&2
    fi
    return "$status"
}
