#!/usr/bin/env bash
# End-to-end: the Debian package. Builds the .deb (scripts/package.sh, from
# the release binaries the suite already built), installs it with dpkg -i,
# checks what it installed (binaries, worker found in /usr/lib/polyhost,
# conffile accepted by `polyhost check`, unit accepted by
# `systemd-analyze verify`, logrotate file by `logrotate -d`, man page,
# completions, router user and admin group), then dpkg -r and dpkg -P, listing
# the files under every path the package touches before the install and
# after each: after the purge nothing may be left.
# Prints how long the package build took (the suite's added time).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
if [[ $EUID -ne 0 ]]; then
    echo "package: needs root (dpkg -i); skipped" >&2
    exit 0
fi
# systemd-analyze (no systemd runs here), logrotate -d.
install_missing package systemd logrotate dpkg-dev

roots=(/etc/polyhost /etc/logrotate.d /lib/systemd/system /usr/lib/systemd/system /usr/bin
    /usr/lib/polyhost /usr/share/man/man8 /usr/share/doc/polyhost /usr/share/bash-completion/completions
    /usr/share/zsh/vendor-completions /usr/share/fish/vendor_completions.d /var/lib/polyhost
    /var/log/polyhost /run/polyhost)
snapshot() { # every path under the roots (those that exist), sorted
    local r existing=()
    for r in "${roots[@]}"; do [[ -e $r ]] && existing+=("$r"); done
    find "${existing[@]}" -xdev 2>/dev/null | sort
}
work=$(mktemp -d)
cleanup() {
    if dpkg-query -W -f='${Status}' polyhost 2>/dev/null | grep -q installed; then dpkg -P polyhost >/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
if dpkg-query -W -f='${Status}' polyhost 2>/dev/null | grep -qv "not-installed"; then
    echo "package: a polyhost package is installed already; purging it first"
    dpkg -P polyhost >/dev/null
fi

start=$(date +%s%N)
deb=$(scripts/package.sh | tail -n 1)
ms=$((($(date +%s%N) - start) / 1000000))
printf 'package: built %s in %d.%03d s\n' "$deb" $((ms / 1000)) $((ms % 1000))
dpkg-deb --info "$deb" | sed -n 's/^ \(Depends\|Recommends\|Installed-Size\):/package:   \1:/p'
dpkg-deb --contents "$deb" | awk '{print "package:   " $1 " " $2 " " $6}'

snapshot >"$work/before"
dpkg -i "$deb"
snapshot >"$work/installed"
echo "package: installed, new paths:"
comm -13 "$work/before" "$work/installed" | sed 's/^/package:   + /'

fail() { echo "package: FAIL: $*" >&2; exit 1; }
for f in /usr/bin/polyhost /usr/lib/polyhost/polyhost-python; do [[ -x $f ]] || fail "$f missing"; done
for f in /etc/polyhost/polyhost.toml /lib/systemd/system/polyhost.service /etc/logrotate.d/polyhost \
    /usr/share/man/man8/polyhost.8.gz /usr/share/bash-completion/completions/polyhost \
    /usr/share/zsh/vendor-completions/_polyhost /usr/share/fish/vendor_completions.d/polyhost.fish; do
    [[ -f $f ]] || fail "$f missing"
done
[[ -d /etc/polyhost/vhosts && -d /etc/polyhost/conf.d ]] || fail "/etc/polyhost/vhosts or conf.d missing"
[[ -z $(find /etc/polyhost/vhosts /etc/polyhost/conf.d -mindepth 1) ]] || fail "vhosts/ or conf.d/ not empty"
[[ $(stat -c %a /var/log/polyhost) == 711 ]] || fail "/var/log/polyhost is not 0711"
getent group polyhost-admin >/dev/null || fail "no group polyhost-admin"
getent passwd polyhost >/dev/null || fail "no user polyhost"
grep -q '^/etc/polyhost/polyhost.toml$' /var/lib/dpkg/info/polyhost.conffiles || fail "polyhost.toml is not a conffile"

# The installed default configuration, given and found by default.
/usr/bin/polyhost --config /etc/polyhost/polyhost.toml check
(cd / && /usr/bin/polyhost check) || fail "check without --config does not find /etc/polyhost/polyhost.toml"
# The worker is found where the package put it: a Python site's check
# fails when python.worker is not an executable file.
mkdir -p "$work/conf/vhosts" "$work/conf/app"
echo 'def application(e, s): pass' >"$work/conf/app/app.py"
printf 'listen = ["127.0.0.1:0"]\n' >"$work/conf/polyhost.toml"
printf 'hosts = ["py.test"]\nroot = "%s/conf/app"\nuser = "polyhost-demo-python"\n[python]\napp = "app:application"\npath = ["%s/conf/app"]\n' \
    "$work" "$work" >"$work/conf/vhosts/py.toml"
out=$(/usr/bin/polyhost --config "$work/conf/polyhost.toml" check 2>&1) || true
if grep -q "polyhost-python is not an executable" <<<"$out"; then fail "the worker is not found: $out"; fi
/usr/bin/polyhost --help | grep -q reopen-logs || fail "polyhost --help lacks reopen-logs"
zcat /usr/share/man/man8/polyhost.8.gz | grep -q '^\.TH polyhost 8' || fail "man page is not polyhost(8)"
zcat /usr/share/man/man8/polyhost-reopen-logs.8.gz | grep -q '^\.TH polyhost-reopen-logs 8' || fail "no polyhost-reopen-logs(8)"
# Documentation=man:polyhost(8) is checked with man(1) where it exists.
if command -v man >/dev/null; then man_check=(); else man_check=(--man=no); fi
systemd-analyze verify "${man_check[@]}" /lib/systemd/system/polyhost.service
logrotate -d /etc/logrotate.d/polyhost >/dev/null 2>&1 || fail "logrotate -d refuses /etc/logrotate.d/polyhost"

# The installed binary serves the installed configuration (on a free port:
# 8080 may be taken), answers its admin socket and reopens its logs.
# From /: without --config it reads /etc/polyhost/polyhost.toml.
(cd / && exec env POLYHOST_LISTEN='["127.0.0.1:0"]' /usr/bin/polyhost serve) 2>"$work/serve.log" &
serve=$!
up=""
for _ in $(seq 1 200); do
    if grep -q 'admin API listening socket=/run/polyhost/admin.sock' "$work/serve.log"; then up=1; break; fi
    kill -0 "$serve" 2>/dev/null || { cat "$work/serve.log"; fail "polyhost serve exited"; }
    sleep 0.1
done
[[ -n $up ]] || { cat "$work/serve.log"; fail "polyhost serve did not open /run/polyhost/admin.sock within 20 s"; }
(cd / && /usr/bin/polyhost status) || { cat "$work/serve.log"; fail "polyhost status"; }
(cd / && /usr/bin/polyhost reopen-logs) || { cat "$work/serve.log"; fail "polyhost reopen-logs"; }
kill -TERM "$serve"
wait "$serve" || { cat "$work/serve.log"; fail "polyhost serve did not exit 0 on SIGTERM"; }

dpkg -r polyhost
snapshot >"$work/removed"
echo "package: after dpkg -r, left beside what was there before (conffiles, kept until purge):"
comm -13 "$work/before" "$work/removed" | sed 's/^/package:   + /'
[[ ! -e /usr/bin/polyhost && ! -e /usr/lib/polyhost ]] || fail "dpkg -r left the binaries"

dpkg -P polyhost
snapshot >"$work/purged"
left=$(comm -13 "$work/before" "$work/purged")
gone=$(comm -23 "$work/before" "$work/purged")
echo "package: after dpkg -P: $(wc -l <"$work/purged") paths, as many as before: $(wc -l <"$work/before")"
[[ -z $left ]] || fail "dpkg -P left: $left"
[[ -z $gone ]] || fail "dpkg -P removed what was there before: $gone"
echo "package: ok"
