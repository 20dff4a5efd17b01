#!/usr/bin/env bash
# Installs a built wheel into a clean virtual environment of the CPython it is
# for (only the wheel and its declared dependencies) and smoke-tests it.
#
#   bash scripts/check_wheel.sh WHEEL PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
wheel="$1"
python="$2"
clean=$(mktemp -d)
trap 'rm -rf "$clean"' EXIT
"$python" -m venv "$clean/venv"
"$clean/venv/bin/python" -m pip install --quiet "$wheel"
(cd "$clean" && "$clean/venv/bin/python" "$OLDPWD/scripts/smoke_wheel.py")
