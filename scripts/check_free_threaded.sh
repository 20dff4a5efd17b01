#!/usr/bin/env bash
# Type-checks the crate, tests included, as PyO3 builds it for a free-threaded
# CPython (3.14t: `Py_GIL_DISABLED`), so every `cfg(Py_GIL_DISABLED)` branch
# (gil_cell.rs, field_cache.rs) compiles. No free-threaded interpreter is
# needed: PYO3_CONFIG_FILE describes one. PyO3 supports free-threading only
# from 3.14, so that is the version the file names.
set -euo pipefail
cd "$(dirname "$0")/.."
# Its own target directory: another PyO3 configuration would otherwise
# invalidate the regular build's cache.
PYO3_CONFIG_FILE="$PWD/scripts/pyo3-free-threaded.cfg" CARGO_TARGET_DIR=target/free-threaded \
    cargo check --all-targets
echo "check_free_threaded.sh: the crate compiles for free-threaded CPython 3.14t"
