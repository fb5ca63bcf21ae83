#!/usr/bin/env bash
# Builds the Debian package of polyhost with cargo-deb and prints its path
# as the last line. Reuses the release binaries when they are newer than
# every source (as scripts/setup.sh leaves them); installs cargo-deb if it
# is missing.
#   scripts/package.sh          → target/debian/polyhost_<version>-1_<arch>.deb
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# dpkg-shlibdeps (Depends: of the binaries' libraries) comes with dpkg-dev.
install_missing package dpkg-dev python3-dev >&2
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb (once)" >&2
    cargo install --locked cargo-deb >&2
fi
# Up to date already when the test suite built it: cargo only checks.
cargo build --release --workspace --bins >&2
generated=target/deb-generated
rm -rf "$generated"
target/release/polyhost generate "$generated" >&2
gzip -9n "$generated"/*.8
cargo deb --no-build -p polyhost >&2
deb=$(ls -t target/debian/polyhost_*.deb | head -n 1)
echo "$deb"
