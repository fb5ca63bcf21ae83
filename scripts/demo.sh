#!/usr/bin/env bash
# Sets up what is missing, builds, and serves the demo sites of vhosts/ on
# http://127.0.0.1:8080/ (static, PHP and Python sites). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./target/release/polyhost check --config polyhost.toml
echo "demo: serving on http://127.0.0.1:8080/  (try: curl -H 'Host: static.localhost' http://127.0.0.1:8080/)"
exec ./target/release/polyhost serve --config polyhost.toml
