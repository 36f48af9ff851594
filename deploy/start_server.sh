#!/usr/bin/env bash
# Start `nullworker serve` on a Vast instance, with the instance's environment.
#
# Prefer a prebuilt binary (the wheel, the tarball or deploy/Dockerfile, see
# deploy/README.md; with PYWORKER_REPO Vast's own start script runs
# workers/null/worker.py instead of this one). Building at boot (4. below)
# is a last resort: minutes of paid GPU time on every cold start.
#
# Where the binary comes from, first match wins:
#   1. NULLWORKER_BIN: path of a prebuilt binary (e.g. baked into your image);
#   2. `nullworker` already on PATH;
#   3. a previous build of this script ($NULLWORKER_HOME/bin/nullworker);
#   4. a build from source: NULLWORKER_SRC (a checkout of this repository), or
#      NULLWORKER_REPO (a git URL, cloned at NULLWORKER_REF) — needs git and
#      installs a Rust toolchain with rustup if cargo is missing.
#
# Then it execs `nullworker serve`: the worker reads CONTAINER_ID, REPORT_ADDR,
# MASTER_TOKEN, WORKER_PORT, VAST_TCP_PORT_<port>, PUBLIC_IPADDR, USE_SSL, ...
# from the environment Vast sets, plus BACKEND_HEALTH_URL / NULL_CONTROL_PORT
# if your template sets them. Extra arguments are passed to `nullworker serve`.
set -euo pipefail

NULLWORKER_HOME="${NULLWORKER_HOME:-/opt/nullworker}"
NULLWORKER_REF="${NULLWORKER_REF:-main}"
LOG_FILE="${NULLWORKER_LOG:-/var/log/nullworker.log}"

log() { echo "start_server: $*" >&2; }

find_binary() {
    if [[ -n "${NULLWORKER_BIN:-}" ]]; then
        [[ -x "$NULLWORKER_BIN" ]] || { log "NULLWORKER_BIN=$NULLWORKER_BIN is not an executable file"; exit 1; }
        echo "$NULLWORKER_BIN"; return
    fi
    if command -v nullworker >/dev/null 2>&1; then
        command -v nullworker; return
    fi
    if [[ -x "$NULLWORKER_HOME/bin/nullworker" ]]; then
        echo "$NULLWORKER_HOME/bin/nullworker"; return
    fi
    build_from_source
    echo "$NULLWORKER_HOME/bin/nullworker"
}

build_from_source() {
    local src="${NULLWORKER_SRC:-}"
    if [[ -z "$src" ]]; then
        [[ -n "${NULLWORKER_REPO:-}" ]] || {
            log "no nullworker binary found: set NULLWORKER_BIN, put nullworker on PATH, or set NULLWORKER_SRC / NULLWORKER_REPO to build it"
            exit 1
        }
        src="$NULLWORKER_HOME/src"
        if [[ -d "$src/.git" ]]; then
            git -C "$src" fetch --depth 1 origin "$NULLWORKER_REF" >&2
            git -C "$src" checkout --force FETCH_HEAD >&2
        else
            git clone --depth 1 --branch "$NULLWORKER_REF" "$NULLWORKER_REPO" "$src" >&2
        fi
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            log "installing a Rust toolchain with rustup"
            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
            export PATH="$HOME/.cargo/bin:$PATH"
        fi
    fi
    log "building nullworker from $src"
    cargo build --release --locked --manifest-path "$src/Cargo.toml" -p nullworker >&2
    mkdir -p "$NULLWORKER_HOME/bin"
    install -m 0755 "$src/target/release/nullworker" "$NULLWORKER_HOME/bin/nullworker"
}

BIN="$(find_binary)"
log "using $BIN ($("$BIN" --version))"

# Keep a copy of the log on the instance as well as on stdout/stderr.
if touch "$LOG_FILE" 2>/dev/null; then
    exec > >(tee -a "$LOG_FILE") 2>&1
fi
exec "$BIN" serve "$@"
