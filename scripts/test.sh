#!/usr/bin/env bash
# Runs the whole test suite, the way CI does: installs the queue servers the
# tests start (scripts/setup-test-deps.sh), sets up the Python environment
# with the official `vastai` SDK (for the interop tests), builds the Python
# wheel (scripts/build-wheel.sh, for the install tests), then the Rust tests.
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
# The Python wheel (manylinux2014, built with maturin and zig) that the wheel
# and Vast boot tests install (crates/cli/tests/e2e/vast_boot.rs). A wheel
# already named by NULLWORKER_WHEEL is used as it is.
if [[ -z "${NULLWORKER_WHEEL:-}" ]]; then
    NULLWORKER_WHEEL=$(scripts/build-wheel.sh | tail -n 1)
fi
export NULLWORKER_WHEEL

cargo test --workspace --locked "$@"
