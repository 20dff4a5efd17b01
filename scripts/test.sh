#!/usr/bin/env bash
# Builds ferroware and runs every test, on each CPython from 3.11 on that the
# machine has (FERROWARE_PYTHONS="3.11 3.12 3.13" by default):
#
# - once: the Rust unit tests, and a check that the crate compiles for a
#   free-threaded CPython;
# - per CPython, in its own virtual environment (.venv-test-3.X): the release
#   wheel users get (manylinux2014), smoke-tested in a clean environment, then
#   pytest, each async test on asyncio and trio, warnings as errors. The newest
#   CPython found runs the whole suite (unit, differential, property-based and
#   fault tests, mypy, Starlette conformance, and the integration suite: real
#   servers on 127.0.0.1 and wrk) and every benchmark in benches/ once,
#   untimed; the others run the conformance files and the integration suite,
#   its fuzz included.
# - once more, on the oldest CPython found, with every dependency at the floor
#   pyproject.toml declares (scripts/oldest-constraints.txt): the conformance
#   files of the oldest supported Starlette (0.46.0) and of the newest (1.10.0,
#   whose files the runs above use, with the newest anyio and trio).
#
# Arguments go to pytest. A CPython the machine lacks is named, then skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
versions=(${FERROWARE_PYTHONS:-3.11 3.12 3.13})
say() { echo "test.sh: $*" >&2; }

# The interpreter for version $1: `python3.X` if it runs, else pyenv's newest 3.X.
find_python() {
    if command -v "python$1" >/dev/null 2>&1 && "python$1" -c '' >/dev/null 2>&1; then
        command -v "python$1"
        return
    fi
    local root found
    root=$(pyenv root 2>/dev/null) || return 1
    found=$(ls -d "$root/versions/$1".*/bin/"python$1" 2>/dev/null | sort -V | tail -n 1)
    [ -n "$found" ] && echo "$found"
}

found=() pythons=()
for version in "${versions[@]}"; do
    if python=$(find_python "$version"); then
        found+=("$version") pythons+=("$python")
    else
        say "CPython $version not found (no python$version, no pyenv $version.x): not tested on it"
    fi
done
if [ ${#found[@]} = 0 ]; then
    say "none of CPython ${versions[*]} found"
    exit 1
fi
newest=${found[-1]}

# wrk, the integration suite's load generator, is a Debian package (CI runs as root).
if ! command -v wrk >/dev/null; then
    say "installing wrk (the integration suite's load generator) with apt-get"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
say "the Rust unit tests (cargo test: a debug build of the crate first, about a minute)"
cargo test
say "checking that the crate compiles for free-threaded CPython (cargo check)"
bash scripts/check_free_threaded.sh

for i in "${!found[@]}"; do
    version=${found[$i]} python=${pythons[$i]}
    venv="${FERROWARE_TEST_VENV:-.venv-test}-$version"
    say "CPython $version ($python): building into $venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The release wheel: the tests exercise the same extension users get.
    bash scripts/build_and_install.sh "$venv" test,integration,bench
    # That wheel in a clean environment with nothing else installed.
    bash scripts/check_wheel.sh "$(ls dist/cp"${version/./}"/ferroware-*.whl)" "$python"
    # The repository root has no importable `ferroware` (the package lives in
    # python/), so pytest tests the installed build.
    if [ "$version" = "$newest" ]; then
        say "CPython $version: the whole suite"
        "$venv/bin/python" -m pytest "$@"
        # The benchmarks once each, untimed, so they can't rot between timed runs.
        "$venv/bin/python" -m pytest benches --benchmark-disable -q
    else
        say "CPython $version: the conformance files and the integration suite"
        "$venv/bin/python" -m pytest -m "conformance or integration" "$@"
    fi
done
oldest=${found[0]} venv="${FERROWARE_TEST_VENV:-.venv-test}-$oldest-floors"
say "CPython $oldest, every dependency at its declared floor: building $venv"
"${pythons[0]}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
wheel=$(ls dist/cp"${oldest/./}"/ferroware-*.whl)
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -m pip install --quiet "$wheel[test]" -c scripts/oldest-constraints.txt
for starlette in 0.46.0 1.10.0; do
    say "CPython $oldest, oldest dependencies: Starlette $starlette's conformance files"
    FERROWARE_CONFORMANCE_STARLETTE=$starlette "$venv/bin/python" -m pytest -m conformance "$@"
done
say "tested on CPython ${found[*]} (the whole suite on $newest; the dependency floors on $oldest)"
