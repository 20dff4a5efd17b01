#!/usr/bin/env bash
# Builds ferroware into its own virtual environment and runs every test:
# the Rust unit tests, then pytest (unit, differential, fault and Starlette
# conformance tests, each async test on asyncio and trio, warnings as errors),
# and the integration suite (tests/integration: real servers on 127.0.0.1, wrk);
# then every benchmark in benches/ once, untimed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FERROWARE_TEST_VENV:-.venv-test}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# A release build: the tests exercise the same extension users get.
bash scripts/build_and_install.sh "$venv" test,integration,bench
# wrk, the integration suite's load generator, is a Debian package (CI runs as root).
if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo test --quiet
# The wheel users get, in a clean environment with nothing else installed.
bash scripts/check_wheel.sh "$venv"
# The repository root has no importable `ferroware` (the package lives in
# python/), so this tests the installed build.
"$venv/bin/python" -m pytest "$@"
# The benchmarks once each, untimed, so they can't rot between timed runs.
"$venv/bin/python" -m pytest benches --benchmark-disable -q
