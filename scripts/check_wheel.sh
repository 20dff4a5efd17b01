#!/usr/bin/env bash
# Builds the release wheel with maturin, installs it into a clean virtual
# environment (only the wheel and its declared dependencies) and smoke-tests it.
set -euo pipefail
cd "$(dirname "$0")/.."
builder="${1:-.venv-test}"
"$builder/bin/python" -m maturin build --release --quiet --out dist
wheel=$(ls -t dist/ferroware-*.whl | head -n 1)
clean=$(mktemp -d)
trap 'rm -rf "$clean"' EXIT
python3 -m venv "$clean/venv"
"$clean/venv/bin/python" -m pip install --quiet "$wheel"
(cd "$clean" && "$clean/venv/bin/python" "$OLDPWD/scripts/smoke_wheel.py")
