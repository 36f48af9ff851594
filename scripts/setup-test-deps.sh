#!/usr/bin/env bash
# Installs the real servers the tests start: redis-server (and redis-cli,
# the producer of the queue tests) and nats-server (JetStream), plus socat and
# curl for the shell example consumer (examples/consumers/shell), and
# chromium with chromedriver for the dashboard's browser test and benchmark
# (crates/cli/tests/e2e/dashboard.rs), from Debian's packages.
# Idempotent: installs nothing when all are present.
#
# Runs as root (CI and sessions do) or through sudo; elsewhere it prints the
# apt-get command to run and fails.
set -euo pipefail

log() { echo "setup-test-deps: $*" >&2; }

# binary -> Debian package
declare -A wanted=(
    [redis-server]=redis-server
    [redis-cli]=redis-tools
    [nats-server]=nats-server
    [socat]=socat
    [curl]=curl
    [chromium]=chromium
    [chromedriver]=chromium-driver
)

missing=()
for binary in "${!wanted[@]}"; do
    if ! command -v "$binary" >/dev/null 2>&1 && [[ ! -x "/usr/bin/$binary" && ! -x "/usr/sbin/$binary" ]]; then
        missing+=("${wanted[$binary]}")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    log "redis-server, redis-cli, nats-server, socat, curl, chromium and chromedriver are installed"
    exit 0
fi

mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ "$(id -u)" == "0" ]]; then
    apt=(apt-get)
elif command -v sudo >/dev/null 2>&1; then
    apt=(sudo apt-get)
else
    log "missing ${packages[*]}; install with: apt-get install ${packages[*]}"
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log "installing ${packages[*]}"
"${apt[@]}" update -qq >&2
"${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" >&2
# Debian starts the packaged redis-server as a service where it can; the
# tests start their own on ephemeral ports, so that one is not needed.
