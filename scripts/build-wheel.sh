#!/usr/bin/env bash
# Builds the `nullworker` Python wheel: the binary of crates/cli packaged by
# maturin (`bindings = "bin"`, pyproject.toml), linked by zig against glibc
# 2.17 (manylinux2014 x86_64), so `pip install` puts a `nullworker` that runs on
# old CUDA base images on PATH, with no Rust toolchain.
#
#   scripts/build-wheel.sh                    # into target/wheels/
#   scripts/build-wheel.sh --out dist
#
# Always the release profile (fat LTO, one codegen unit): the wheel the tests
# install (scripts/test.sh) is the one scripts/release.sh ships.
# Old wheels of the same version in the output directory are replaced.
#
# The build tools (maturin and ziglang, pinned below) are installed from PyPI
# into a virtual environment of their own, target/wheel-tools (BUILD_VENV=…
# to move it), never globally. Idempotent: installs nothing when they are
# there; cargo rebuilds only what changed.
#
# Prints the wheel's path on the last line of stdout; the tests read it from
# NULLWORKER_WHEEL (scripts/test.sh exports it).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
maturin_version="1.16.0"
ziglang_version="0.17.1"
target="x86_64-unknown-linux-gnu"
out="$repo/target/wheels"

log() { echo "build-wheel: $*" >&2; }
usage() { echo "usage: scripts/build-wheel.sh [--out DIR]" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || usage; out="$2"; shift 2 ;;
        -h | --help) usage ;;
        *) log "unexpected argument $1"; usage ;;
    esac
done

tools="${BUILD_VENV:-$repo/target/wheel-tools}"
tools_ready() {
    [[ -x "$tools/bin/python" ]] && "$tools/bin/python" - "$maturin_version" "$ziglang_version" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if (version("maturin"), version("ziglang")) == (sys.argv[1], sys.argv[2]) else 1)
PY
}
if ! tools_ready; then
    python="$(command -v python3 || true)"
    [[ -n "$python" ]] || { log "python3 not found: install Python 3 with the venv module (apt-get install python3-venv)"; exit 1; }
    log "installing maturin $maturin_version and ziglang $ziglang_version into $tools"
    rm -rf "$tools"
    "$python" -m venv "$tools" >&2 || "$python" -m virtualenv "$tools" >&2 || {
        log "cannot create a virtual environment with $python: install python3-venv (apt-get install python3-venv)"
        exit 1
    }
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check \
        "maturin==$maturin_version" "ziglang==$ziglang_version" >&2
    tools_ready || { log "maturin $maturin_version or ziglang $ziglang_version not importable in $tools"; exit 1; }
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)"
[[ -n "$version" ]] || { log "no version found in $repo/Cargo.toml"; exit 1; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -f "$out"/nullworker-"$version"-*.whl

log "building nullworker $version (release profile, $target, manylinux2014 via zig) into $out"
start=$SECONDS
# maturin finds zig through `python -m ziglang`: the tools' python first on PATH.
(
    cd "$repo"
    PATH="$tools/bin:$PATH" maturin build --release --locked --zig \
        --target "$target" --compatibility manylinux2014 --out "$out" >&2
)
shopt -s nullglob
wheels=("$out"/nullworker-"$version"-*manylinux*_x86_64.whl)
[[ ${#wheels[@]} -eq 1 ]] || { log "expected one nullworker $version wheel in $out, found ${#wheels[@]}"; exit 1; }
log "built ${wheels[0]} ($(du -h "${wheels[0]}" | cut -f1), $((SECONDS - start)) s)"
echo "${wheels[0]}"
