#!/usr/bin/env bash
# Sets up what is missing, builds, and serves the demo sites of vhosts/ on
# http://127.0.0.1:8080/ (static, PHP, Python and Node.js sites). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/lib.sh
demo_location
"$DEMO_BIN/polyhost" check --config "$DEMO_CONFIG"
echo "demo: serving on http://127.0.0.1:8080/"
echo "      curl -H 'Host: static.localhost' http://127.0.0.1:8080/"
echo "      curl -H 'Host: python.localhost' http://127.0.0.1:8080/"
echo "      curl -H 'Host: php.localhost' http://127.0.0.1:8080/"
echo "      curl -H 'Host: node.localhost' http://127.0.0.1:8080/"
echo "      curl -H 'Host: asgi.localhost' http://127.0.0.1:8080/   # (a WebSocket page: open it in a browser with asgi.localhost:8080)"
exec "$DEMO_BIN/polyhost" serve --config "$DEMO_CONFIG"
