#!/usr/bin/env bash
# Builds ferroware into its own virtual environment and runs its main job,
# `ferroware bench`: per-layer cost of stock Starlette, pure ASGI and ferroware.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FERROWARE_BENCH_VENV:-.venv-bench}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet ".[bench]"
exec "$venv/bin/ferroware" bench "$@"
