#!/usr/bin/env bash
# Creates (or reuses) the Python environment used by the interop tests and the
# Python reference worker: `.venv` at the repository root with the packages of
# scripts/python-requirements.txt (the official `vastai` 1.9.1 SDK).
#
# Idempotent: when .venv already imports vastai 1.9.1 nothing is installed.
# Prints the path of the environment's python on the last line of stdout.
#
# Usage: scripts/setup-python.sh            # create or reuse .venv
#        PYTHON=python3.11 scripts/setup-python.sh
#        FORCE=1 scripts/setup-python.sh    # rebuild .venv from scratch
#
# Also: VENV_DIR=/path (another location; point NULLWORKER_PYTHON at its
# bin/python for the tests), SETUP_PYTHON_MODE=venv|virtualenv|target (skip
# the detection and use that method).
#
# Works on a fresh Debian machine with python3 (>= 3.10) and pip. When the
# venv module is unusable (Debian without python3-venv) it tries, in order:
# installing python3-venv with apt-get (as root only), `virtualenv`, and
# finally `pip install --target` with a small wrapper script.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV_DIR:-$repo/.venv}"
case "$venv" in
    "" | "/" | "$HOME" | "$repo") echo "setup-python: refusing to use $venv as the environment directory" >&2; exit 2 ;;
esac
requirements="$repo/scripts/python-requirements.txt"
want_version="1.9.1"

log() { echo "setup-python: $*" >&2; }

find_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        command -v "$PYTHON" || { log "PYTHON=$PYTHON is not an executable"; exit 1; }
        return
    fi
    local candidate
    for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
    log "no python >= 3.10 found (vastai $want_version requires it); install python3 first"
    exit 1
}

# Whether $1 (a python executable) imports vastai at the wanted version.
has_vastai() {
    [[ -x "$1" ]] && "$1" - "$want_version" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
import vastai  # noqa: F401  (the import itself is what the tests need)
import redis  # noqa: F401  (the Python consumer example; a venv without it is rebuilt)
from vastai.serverless.client.client import Serverless  # noqa: F401
from vastai.serverless.server.worker import Worker  # noqa: F401
sys.exit(0 if version("vastai") == sys.argv[1] else 1)
PY
}

venv_python="$venv/bin/python"
if [[ "${FORCE:-}" != "1" ]] && has_vastai "$venv_python"; then
    log "reusing $venv (vastai $want_version importable)"
    echo "$venv_python"
    exit 0
fi

python="$(find_python)"
log "using $python ($("$python" --version 2>&1))"
if [[ "${FORCE:-}" == "1" || -e "$venv" ]]; then
    rm -rf "$venv"
fi

try_venv() {
    "$python" -m venv "$venv" >/dev/null 2>&1 && [[ -x "$venv/bin/python" ]] &&
        "$venv/bin/python" -m pip --version >/dev/null 2>&1
}

mode=""
forced="${SETUP_PYTHON_MODE:-}"
case "$forced" in
    "" | venv | virtualenv | target) ;;
    *) log "SETUP_PYTHON_MODE=$forced: expected venv, virtualenv or target"; exit 2 ;;
esac
if [[ "$forced" == "virtualenv" || "$forced" == "target" ]]; then
    : # skip the venv module
elif try_venv; then
    mode=venv
elif [[ "$forced" == "venv" ]]; then
    log "python -m venv does not work with $python"
    exit 1
else
    rm -rf "$venv"
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
        minor="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        log "venv module unusable; installing python${minor}-venv with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || true
        apt-get install -y -qq "python${minor}-venv" >&2 ||
            apt-get install -y -qq python3-venv >&2 || true
        if try_venv; then mode=venv; else rm -rf "$venv"; fi
    fi
fi
try_virtualenv() {
    if ! "$python" -m virtualenv --version >/dev/null 2>&1; then
        "$python" -m pip install --quiet --user virtualenv >&2 ||
            "$python" -m pip install --quiet --user --break-system-packages virtualenv >&2 ||
            return 1
    fi
    "$python" -m virtualenv --quiet "$venv" >&2 && [[ -x "$venv/bin/python" ]]
}

if [[ -z "$mode" && "$forced" != "target" ]]; then
    log "trying virtualenv"
    if try_virtualenv; then mode=venv; else rm -rf "$venv"; fi
fi

if [[ "$mode" == "venv" ]]; then
    log "installing $requirements into $venv"
    "$venv_python" -m pip install --quiet -r "$requirements" >&2
else
    # Last resort: a plain directory of packages plus a wrapper that puts it
    # on sys.path, so `.venv/bin/python` works like a virtual environment.
    log "no virtual environment tool works; falling back to pip install --target"
    mkdir -p "$venv/bin" "$venv/site-packages"
    "$python" -m pip install --quiet --target "$venv/site-packages" -r "$requirements" >&2 ||
        "$python" -m pip install --quiet --break-system-packages --target "$venv/site-packages" -r "$requirements" >&2
    cat >"$venv/bin/python" <<WRAPPER
#!/bin/sh
PYTHONPATH="$venv/site-packages\${PYTHONPATH:+:\$PYTHONPATH}" exec "$python" "\$@"
WRAPPER
    chmod +x "$venv/bin/python"
fi

if ! has_vastai "$venv_python"; then
    log "installation finished but $venv_python cannot import vastai $want_version"
    exit 1
fi
log "ready: vastai $want_version in $venv"
echo "$venv_python"
