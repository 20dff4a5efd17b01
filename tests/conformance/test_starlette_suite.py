"""Starlette 1.10.0's own middleware and application tests, run against ferroware.

The sdist comes from the ``starlette_sdist`` fixture (``_sdist.py``). Each Starlette test file then runs in a subprocess, from the
sdist's root (so its own ``pyproject.toml`` applies: strict markers, strict
xfail, warnings as errors), with the ``ferroware_swap`` plugin putting
ferroware's ``BaseHTTPMiddleware`` (and, for the second parametrization,
``ferroware.Starlette``) in place of Starlette's.

A file passes when pytest exits 0, every test passed on both asyncio and trio,
nothing was skipped, xfailed, xpassed or errored (Starlette's only strict xfail
in these files, the contextvars limitation, is lifted by the plugin and must
pass), and the swap was really in effect in the test modules.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _sdist import HERE, STARLETTE_VERSION, TAIL_LINES, _tail

pytestmark = pytest.mark.conformance

FILES = [
    "tests/middleware/test_base.py",
    "tests/middleware/test_middleware.py",
    "tests/test_applications.py",
]
SWAP_APP_FILES = [
    "tests/test_applications.py",
    "tests/middleware/test_base.py",
]
# Test ids that must be among the PASSED ones, per file.
REQUIRED_PASSES = {
    "tests/middleware/test_base.py": [
        # Strict xfail in Starlette (#1081); ferroware_swap removes the mark.
        "tests/middleware/test_base.py::test_contextvars[asyncio-CustomMiddlewareUsingBaseHTTPMiddleware]",
        "tests/middleware/test_base.py::test_contextvars[trio-CustomMiddlewareUsingBaseHTTPMiddleware]",
    ],
}
# Names each file's test module must have bound to the swapped-in class.
REQUIRED_BINDINGS = {
    "tests/middleware/test_base.py": ["BaseHTTPMiddleware", "Starlette"],
    "tests/middleware/test_middleware.py": ["BaseHTTPMiddleware"],
    "tests/test_applications.py": ["Starlette"],
}

SUBPROCESS_TIMEOUT = 900  # seconds, per file
OUTCOME_RE = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (.*)$")
SUMMARY_RE = re.compile(r"^=*\s*(\d+) passed in [\d.]+s( \([^)]*\))?\s*=*$")
PROBE_RE = re.compile(r"^ferroware-swap-probe: (\S+) = (\S+)$")


# --------------------------------------------------------------------------- runs


def _qualified(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]


def _expected_bindings(swap_app: bool) -> dict[str, str]:
    import ferroware

    expected = {"BaseHTTPMiddleware": _qualified(ferroware.BaseHTTPMiddleware)}
    if swap_app:
        starlette_cls = getattr(ferroware, "Starlette", None)
        missing = "<ferroware.Starlette is missing>"
        expected["Starlette"] = missing if starlette_cls is None else _qualified(starlette_cls)
    else:
        expected["Starlette"] = "starlette.applications.Starlette"
    return expected


def _module_name(file: str) -> str:
    return file.removesuffix(".py").replace("/", ".")


def run_starlette_file(root: Path, file: str, *, swap_app: bool) -> None:
    env = dict(os.environ)
    # The outer run's pytest options and plugins are not the inner run's business.
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "FERROWARE_SWAP_APP"):
        env.pop(name, None)
    if swap_app:
        env["FERROWARE_SWAP_APP"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PY_COLORS"] = "0"
    cmd = [
        sys.executable, "-m", "pytest",
        "-p", "ferroware_swap", "-p", "ferroware_swap_probe",
        file, "-p", "no:cacheprovider", "-q", "-rA",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"{file}: no result after {SUBPROCESS_TIMEOUT}s\n{_tail(out)}")
    output = proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr.strip() else "")

    problems: list[str] = []
    if proc.returncode != 0:
        problems.append(f"pytest exited with code {proc.returncode}")

    passed: list[str] = []
    unexpected: list[str] = []
    summary: str | None = None
    bindings: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if match := OUTCOME_RE.match(line):
            (passed if match[1] == "PASSED" else unexpected).append(line)
        elif match := PROBE_RE.match(line):
            bindings[match[1]] = match[2]
        elif SUMMARY_RE.match(line) or re.match(r"^=*\s*\d+ \w+.* in [\d.]+s", line):
            summary = line
    passed = [line.removeprefix("PASSED ") for line in passed]

    if unexpected:
        problems.append("tests not simply passed:\n  " + "\n  ".join(unexpected))
    if summary is None or not SUMMARY_RE.match(summary):
        # Anything but "N passed in Xs": failures, skips, xfails, errors, warnings.
        problems.append(f"final summary is {summary!r}, expected only 'N passed in ...'")
    elif int(SUMMARY_RE.match(summary)[1]) != len(passed):  # type: ignore[index]
        problems.append(f"summary {summary!r} but {len(passed)} PASSED lines")

    asyncio_ids = [test_id for test_id in passed if "[asyncio" in test_id]
    trio_ids = [test_id for test_id in passed if "[trio" in test_id]
    if not asyncio_ids:
        problems.append("no [asyncio...] test passed")
    if not trio_ids:
        problems.append("no [trio...] test passed")
    only_asyncio = {i.replace("[asyncio", "[", 1) for i in asyncio_ids} - {i.replace("[trio", "[", 1) for i in trio_ids}
    only_trio = {i.replace("[trio", "[", 1) for i in trio_ids} - {i.replace("[asyncio", "[", 1) for i in asyncio_ids}
    if only_asyncio or only_trio:
        problems.append(
            f"passed on one backend only: asyncio-only {sorted(only_asyncio)}, trio-only {sorted(only_trio)}"
        )

    for test_id in REQUIRED_PASSES.get(file, []):
        if test_id not in passed:
            problems.append(f"required test did not pass: {test_id}")

    # What the swap must have rebound: the framework's names, this file's test
    # module, and every other Starlette test module the run imported.
    expected = _expected_bindings(swap_app)
    module = _module_name(file)
    must_report = [
        "starlette.middleware.base.BaseHTTPMiddleware",
        "fastapi.applications.BaseHTTPMiddleware",
        "starlette.applications.Starlette",
        *(f"{module}.{name}" for name in REQUIRED_BINDINGS[file]),
    ]
    others = [where for where in bindings if where.startswith("tests.") and where not in must_report]
    for where in [*must_report, *others]:
        want = expected[where.rsplit(".", 1)[1]]
        if bindings.get(where) != want:
            problems.append(f"{where} was {bindings.get(where, '<not reported>')}, expected {want}")

    if problems:
        pytest.fail(
            f"Starlette {STARLETTE_VERSION} {file} with ferroware "
            f"({'BaseHTTPMiddleware + Starlette' if swap_app else 'BaseHTTPMiddleware'} swapped in):\n- "
            + "\n- ".join(problems)
            + f"\n\n$ (cd {root} && FERROWARE_SWAP_APP={int(swap_app)} {' '.join(cmd)})\n"
            + f"--- last {TAIL_LINES} lines of output ---\n{_tail(output)}",
            pytrace=False,
        )


@pytest.mark.parametrize("file", FILES)
def test_starlette_file(starlette_sdist: Path, file: str) -> None:
    """Starlette's tests, ferroware's ``BaseHTTPMiddleware`` swapped in."""
    run_starlette_file(starlette_sdist, file, swap_app=False)


@pytest.mark.parametrize("file", SWAP_APP_FILES)
def test_starlette_file_with_ferroware_app(starlette_sdist: Path, file: str) -> None:
    """Starlette's tests, ``ferroware.Starlette`` swapped in too (``FERROWARE_SWAP_APP=1``)."""
    run_starlette_file(starlette_sdist, file, swap_app=True)
