# Shared by demo.sh and the demo scenario. Sourced, not run.
#
# demo_location: sets DEMO_CONFIG and DEMO_BIN. As root, site code runs as
# polyhost-demo-php and polyhost-demo-python; when they cannot read this
# checkout (e.g. it lives under /root) or execute its binaries, the demo
# (configuration, sites and binaries) is copied to a place they can read,
# and served from there.
demo_location() {
    DEMO_CONFIG=polyhost.toml
    DEMO_BIN=./target/release
    if [[ $EUID -eq 0 ]] && ! { runuser -u polyhost-demo-python -- test -r demo/python/app.py -a -x target/release/polyhost-python &&
        runuser -u polyhost-demo-php -- test -r demo/php/index.php; } 2>/dev/null; then
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
