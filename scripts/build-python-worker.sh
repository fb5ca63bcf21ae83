#!/usr/bin/env bash
# Builds polyhost-python for one CPython minor version, next to polyhost:
#
#   scripts/build-python-worker.sh [--release] 3.X
#
# The worker is target/{debug,release}/polyhost-python3.X, linked against
# that version's libpython3.X.so with an rpath to it. The interpreter it
# links must be one site users can read:
#   - 3.X is what polyhost-python itself links (Debian's 3.11): nothing new is
#     built; polyhost-python serves sites of that version.
#   - /opt/polyhost/python/3.X (bin/python3.X, lib/libpython3.X.so) exists: used.
#   - else a pyenv build ($PYENV_ROOT/versions/3.X.*, the newest, built with
#     --enable-shared) is copied there first: owned by root, readable by
#     all, writable by none else, its sysconfig data and scripts pointed at the
#     new prefix and the rpaths of python3.X and libpython made relative.
# Each version builds in its own target directory (target/python3.X), so
# builds for different versions never clobber each other.
# Needs root to install under /opt, cargo, and patchelf (apt-get install patchelf).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
cargo_profile=()
if [[ ${1:-} == --release ]]; then
    profile=release
    cargo_profile=(--release)
    shift
fi
version=${1:-}
if [[ ! $version =~ ^3\.[0-9]+$ ]]; then
    echo "usage: $0 [--release] 3.X   (a CPython minor version, e.g. 3.13)" >&2
    exit 2
fi
# pyo3 0.30 (what polyhost-python is written against) supports CPython 3.9 to 3.15.
minor=${version#3.}
if ((minor < 9)); then
    echo "build-python-worker: Python $version is older than pyo3 0.30 supports (3.9 and newer)" >&2
    exit 2
fi
OPT_PYTHON=${POLYHOST_PYTHON_PREFIX:-/opt/polyhost/python}
target=${CARGO_TARGET_DIR:-target}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# The minor version polyhost-python links: the workspace's PYO3_PYTHON.
default_python=$(sed -n 's/^PYO3_PYTHON *= *"\(.*\)"/\1/p' .cargo/config.toml)
if [[ -x $default_python ]] && [[ $("$default_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') == "$version" ]]; then
    echo "build-python-worker: polyhost-python links $default_python (Python $version): building it"
    cargo build "${cargo_profile[@]}" -p polyhost-python
    exit 0
fi

# install_from_pyenv: copies the newest pyenv build of $version to $prefix.
install_from_pyenv() {
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv} src tmp
    src=$(find "$pyenv_root/versions" -maxdepth 1 -name "$version.*" 2>/dev/null | sort -V | tail -n 1)
    if [[ -z $src || ! -e $src/lib/libpython$version.so ]]; then
        echo "build-python-worker: no Python $version with a shared libpython at $prefix or in $pyenv_root/versions;" >&2
        echo "  install one (e.g. PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install $version) and run again" >&2
        exit 1
    fi
    command -v patchelf >/dev/null || { echo "build-python-worker: patchelf is missing (apt-get install patchelf)" >&2; exit 1; }
    echo "build-python-worker: installing $src as $prefix"
    mkdir -p "$(dirname "$prefix")"
    tmp=$prefix.partial.$$
    rm -rf "$tmp"
    cp -a "$src" "$tmp"
    # Text files naming the build prefix: sysconfig data, the Makefile, pkg-config, scripts' #! lines.
    grep -rlI --null -F "$src" "$tmp/bin" "$tmp/lib/pkgconfig" "$tmp/lib/python$version"/_sysconfigdata*.py \
        "$tmp/lib/python$version"/config-"$version"*/ 2>/dev/null | xargs -0 -r sed -i "s#$src#$prefix#g"
    find "$tmp/lib/python$version" -maxdepth 2 -path '*__pycache__/_sysconfigdata*' -delete
    patchelf --set-rpath '$ORIGIN/../lib' "$tmp/bin/python$version"
    patchelf --set-rpath '$ORIGIN' "$tmp/lib/libpython$version.so.1.0"
    chown -R root:root "$tmp"
    chmod -R u+rwX,go+rX,go-w "$tmp"
    chmod 755 "$(dirname "$prefix")" "$(dirname "$(dirname "$prefix")")"
    mv "$tmp" "$prefix"
}

prefix=$OPT_PYTHON/$version
[[ -x $prefix/bin/python$version ]] || install_from_pyenv
echo "build-python-worker: building polyhost-python$version ($profile) against $prefix"
PYO3_PYTHON=$prefix/bin/python$version CARGO_TARGET_DIR=$target/python$version \
    cargo build "${cargo_profile[@]}" -p polyhost-python
mkdir -p "$target/$profile"
# A rename, so a running test or polyhost never sees half a binary; an
# unchanged build is left as it is (tests copy the workers by their stamp).
built=$target/python$version/$profile/polyhost-python
if ! cmp -s "$built" "$target/$profile/polyhost-python$version"; then
    cp "$built" "$target/$profile/.polyhost-python$version.partial"
    mv "$target/$profile/.polyhost-python$version.partial" "$target/$profile/polyhost-python$version"
fi
echo "build-python-worker: $target/$profile/polyhost-python$version"
