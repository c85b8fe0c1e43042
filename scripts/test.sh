#!/usr/bin/env bash
# The test command (README): installs missing test peers, then runs every unit and
# integration test. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
exec cargo test --locked "$@"
