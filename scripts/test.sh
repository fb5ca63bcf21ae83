#!/usr/bin/env bash
# Sets up what is missing and runs every test: the cargo tests of all crates
# (unit, in-process and end-to-end against the real binary) and the
# end-to-end scenarios in integration/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
for scenario in integration/scenarios/*.sh; do
    echo "== $scenario"
    bash "$scenario"
done
echo "test: all passed"
