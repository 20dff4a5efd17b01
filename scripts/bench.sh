#!/usr/bin/env bash
# Builds ferroware into its own virtual environment and runs its main job,
# `ferroware bench`: per-layer cost of stock FastAPI middleware, pure ASGI and
# ferroware for each case, a table, a chart (ferroware-bench.svg) and, with
# --server, uvicorn + wrk end to end. Arguments go to `ferroware bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FERROWARE_BENCH_VENV:-.venv-bench}"
# wrk drives the --server run. Installed here when missing (Debian/Ubuntu, as
# root or with sudo); if that isn't possible, `--server` says how to get it.
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench.sh: installing wrk (for --server) with apt-get" >&2
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    { $sudo apt-get update -q && $sudo apt-get install -y -q wrk; } >/dev/null 2>&1 \
        || echo "bench.sh: could not install wrk (only needed for --server)" >&2
fi
echo "bench.sh: setting up the virtual environment $venv" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# The build shows its progress; the bench dependencies install quietly after it.
bash scripts/build_and_install.sh "$venv" bench
echo "bench.sh: running ferroware bench${*:+ $*}" >&2
exec "$venv/bin/ferroware" bench "$@"
