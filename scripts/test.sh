#!/usr/bin/env bash
# Runs the whole test suite, the way CI does: installs the queue servers the
# tests start (scripts/setup-test-deps.sh), sets up the Python environment
# with the official `vastai` SDK (for the interop tests), then the Rust tests.
#
#   scripts/test.sh              # everything
#   scripts/test.sh -p nullworker-protocol   # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

# Real queue servers (redis-server, nats-server) for the queue tests.
scripts/setup-test-deps.sh
python=$(scripts/setup-python.sh)
export NULLWORKER_PYTHON="$python"
# The interop tests must run here: a missing SDK is a failure, not a skip.
export NULLWORKER_REQUIRE_INTEROP=1

cargo test --workspace --locked "$@"
