#!/usr/bin/env bash
# Usage: scripts/build_and_install.sh VENV EXTRAS
#
# Builds ferroware's compiled core into a wheel with maturin (cargo's release
# profile: fat LTO, one codegen unit) for VENV's Python, keeps it in
# dist/cpXY/, and installs it into VENV with the optional dependencies EXTRAS
# (e.g. "bench" or "test,integration,bench"); maturin stays installed there.
#
# The wheel is manylinux2014 (glibc 2.17 or newer): maturin links it with zig
# (the ziglang package), against that old glibc, rather than against this
# machine's own, which would tag it for this machine's glibc (manylinux_2_34
# here) and make older distributions refuse it.
#
# `pip install .` runs the same build (1 to 3 minutes) but shows none of it:
# pip hides the build backend's output unless given -v. So this runs maturin
# itself and shows cargo's "Compiling ..." lines, plus a line after every 30
# seconds with nothing printed: the last step, compiling and linking
# ferroware's own crate with fat LTO, is the longest and prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(cd "$1" && pwd)  # absolute: zig's wrappers run from cargo's build directories
extras="$2"
say() { echo "build_and_install.sh: $*" >&2; }
minutes() { printf '%dm %02ds' $(($1 / 60)) $(($1 % 60)); }

"$venv/bin/python" -m pip install --quiet "maturin>=1.9.4,<2" "ziglang>=0.17,<0.18"
version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
wheel_dir="dist/cp${version/./}"
rm -rf "$wheel_dir"

say "building ferroware's compiled core for CPython $version (Rust, release build with fat LTO: 1 to 3 minutes on 2 cores)"
started=$SECONDS
# maturin runs zig as `python -m ziglang`, with the first python on PATH.
PATH="$venv/bin:$PATH" "$venv/bin/python" -m maturin build --release --zig --compatibility manylinux2014 \
    --interpreter "$venv/bin/python" --out "$wheel_dir" 2>&1 |
    while true; do
        if IFS= read -r -t 30 line; then
            echo "$line"
        elif (($? > 128)); then  # read timed out: the build is alive, only quiet
            echo "  ... still building, $(minutes $((SECONDS - started))) so far"
        else  # end of maturin's output
            break
        fi
    done >&2
say "built in $(minutes $((SECONDS - started))); installing it into $venv with [$extras]"

wheel=$(ls "$wheel_dir"/ferroware-*.whl)
# --force-reinstall: on a re-run the venv already has this version from an
# earlier build, which pip would otherwise keep. --no-deps: the dependencies
# come on the next line, which finds ferroware installed and adds only them.
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -m pip install --quiet "$wheel[$extras]"
