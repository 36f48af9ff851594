#!/usr/bin/env bash
# Builds the release artifacts into dist/, with the real release profile
# (fat LTO, opt-level "s", one codegen unit):
#
#   dist/nullworker-<version>-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
#       `pip install` it: puts `nullworker` on PATH (glibc 2.17 or newer)
#   dist/nullworker-<version>-x86_64-unknown-linux-gnu.tar.gz
#       the same binary, README.md and the licence files, in one directory
#   dist/SHA256SUMS
#       `cd dist && sha256sum -c SHA256SUMS`
#
# The build tools (maturin, ziglang) go into a virtual environment of their
# own (scripts/build-wheel.sh: target/wheel-tools), not globally; a Rust
# toolchain and Python 3 with venv are needed. dist/ is emptied first.
#
# Usage: scripts/release.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

log() { echo "release: $*" >&2; }

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[[ -n "$version" ]] || { log "no version found in Cargo.toml"; exit 1; }
triple="x86_64-unknown-linux-gnu"
name="nullworker-$version-$triple"

rm -rf dist
mkdir -p dist
start=$SECONDS
wheel="$(scripts/build-wheel.sh --out dist | tail -n 1)"

# The tarball carries the wheel's own binary (linked against glibc 2.17 and
# stripped), so both artifacts run the same code.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
python3 -m zipfile -e "$wheel" "$stage/wheel"
mkdir "$stage/$name"
install -m 0755 "$stage/wheel/nullworker-$version.data/scripts/nullworker" "$stage/$name/nullworker"
install -m 0644 README.md LICENSE-MIT LICENSE-APACHE "$stage/$name/"
got="$("$stage/$name/nullworker" --version)"
[[ "$got" == "nullworker $version" ]] || { log "the binary says '$got', expected 'nullworker $version'"; exit 1; }

# Reproducible archive: sorted names, root owner, the last commit's time.
mtime="@$(git log -1 --format=%ct 2>/dev/null || echo 0)"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
    -C "$stage" -cf - "$name" | gzip -n -9 >"dist/$name.tar.gz"

(cd dist && sha256sum -- *.whl *.tar.gz >SHA256SUMS)
log "built in $((SECONDS - start)) s:"
ls -l "$repo/dist" >&2
cat dist/SHA256SUMS
