"""Starlette's own middleware and application tests (1.10.0's, or those of
``FERROWARE_CONFORMANCE_STARLETTE``), run against ferroware.

The sdist comes from the ``starlette_sdist`` fixture (``_sdist.py``). Each Starlette test file then runs in a subprocess, from the
sdist's root (so its own ``pyproject.toml`` applies: strict markers, strict
xfail, warnings as errors), with the ``ferroware_swap`` plugin putting
ferroware's ``BaseHTTPMiddleware`` (and, for the second parametrization,
``ferroware.Starlette``) in place of Starlette's.

A file passes when pytest exits 0, every test passed on both asyncio and trio,
nothing was skipped, xfailed, xpassed or errored, only an older release's
tests of a deliberate difference (``_sdist.OLDER_RELEASE_DESELECTED``) were
deselected (Starlette's only strict xfail
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
from _sdist import HERE, STARLETTE_VERSION, TAIL_LINES, _tail, backend_neutral, deselect_args, deselected_in, names_used

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
SUMMARY_RE = re.compile(r"^=*\s*(\d+) passed(?:, (\d+) deselected)? in [\d.]+s( \([^)]*\))?\s*=*$")
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


def run_starlette_file(root: Path, file: str, *, swap_app: bool, task_path: bool = False) -> None:
    used = names_used(root, file, REQUIRED_BINDINGS[file])
    if not used:
        # Starlette 0.46's tests/middleware/test_middleware.py only tests Middleware's repr.
        pytest.skip(f"Starlette {STARLETTE_VERSION}'s {file} uses none of {REQUIRED_BINDINGS[file]}")
    env = dict(os.environ)
    # The outer run's pytest options and plugins are not the inner run's business.
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "FERROWARE_SWAP_APP", "FERROWARE_FORCE_TASK_PATH"):
        env.pop(name, None)
    if swap_app:
        env["FERROWARE_SWAP_APP"] = "1"
    if task_path:
        env["FERROWARE_FORCE_TASK_PATH"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PY_COLORS"] = "0"
    deselected = deselected_in(file)
    cmd = [
        sys.executable, "-m", "pytest",
        "-p", "ferroware_swap", "-p", "ferroware_swap_probe",
        file, *deselect_args(deselected), "-p", "no:cacheprovider", "-q", "-rA",
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
    app_tasks: int | None = None
    for line in proc.stdout.splitlines():
        if match := OUTCOME_RE.match(line):
            (passed if match[1] == "PASSED" else unexpected).append(line)
        elif match := PROBE_RE.match(line):
            if match[1] == "app_tasks":
                app_tasks = int(match[2])
            else:
                bindings[match[1]] = match[2]
        elif SUMMARY_RE.match(line) or re.match(r"^=*\s*\d+ \w+.* in [\d.]+s", line):
            summary = line
    passed = [line.removeprefix("PASSED ") for line in passed]

    if unexpected:
        problems.append("tests not simply passed:\n  " + "\n  ".join(unexpected))
    if summary is None or not SUMMARY_RE.match(summary):
        # Anything but "N passed in Xs": failures, skips, xfails, errors, warnings.
        problems.append(f"final summary is {summary!r}, expected only 'N passed in ...'")
    else:
        counts = SUMMARY_RE.match(summary)
        assert counts is not None
        if int(counts[1]) != len(passed):
            problems.append(f"summary {summary!r} but {len(passed)} PASSED lines")
        if int(counts[2] or 0) != sum(d.count for d in deselected):
            problems.append(f"summary {summary!r}, expected {sum(d.count for d in deselected)} deselected")

    asyncio_ids = [test_id for test_id in passed if "[asyncio" in test_id]
    trio_ids = [test_id for test_id in passed if "[trio" in test_id]
    if not asyncio_ids:
        problems.append("no [asyncio...] test passed")
    if not trio_ids:
        problems.append("no [trio...] test passed")
    # A test deselected on one backend only (an older release's) has passed on the other.
    one_backend = {backend_neutral(d.prefix) for d in deselected}
    asyncio_ids = [i for i in asyncio_ids if not backend_neutral(i).startswith(tuple(one_backend))]
    trio_ids = [i for i in trio_ids if not backend_neutral(i).startswith(tuple(one_backend))]
    only_asyncio = {backend_neutral(i) for i in asyncio_ids} - {backend_neutral(i) for i in trio_ids}
    only_trio = {backend_neutral(i) for i in trio_ids} - {backend_neutral(i) for i in asyncio_ids}
    if only_asyncio or only_trio:
        problems.append(
            f"passed on one backend only: asyncio-only {sorted(only_asyncio)}, trio-only {sorted(only_trio)}"
        )

    if task_path and not app_tasks:
        problems.append(f"forced onto the task path, but {app_tasks} app tasks were started")

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
        *(f"{module}.{name}" for name in used),
    ]
    others = [where for where in bindings if where.startswith("tests.") and where not in must_report]
    for where in [*must_report, *others]:
        want = expected[where.rsplit(".", 1)[1]]
        if bindings.get(where) != want:
            problems.append(f"{where} was {bindings.get(where, '<not reported>')}, expected {want}")

    if problems:
        pytest.fail(
            f"Starlette {STARLETTE_VERSION} {file} with ferroware "
            f"({'BaseHTTPMiddleware + Starlette' if swap_app else 'BaseHTTPMiddleware'} swapped in"
            f"{', every request on the task path' if task_path else ''}):\n- "
            + "\n- ".join(problems)
            + f"\n\n$ (cd {root} && FERROWARE_SWAP_APP={int(swap_app)} FERROWARE_FORCE_TASK_PATH={int(task_path)}"
            + f" {' '.join(cmd)})\n"
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


# The runs whose requests go through BaseHTTPMiddleware layers (Starlette's
# tests/test_applications.py has none: nothing there takes either path).
TASK_PATH_RUNS = [
    ("tests/middleware/test_base.py", False),
    ("tests/middleware/test_middleware.py", False),
    ("tests/middleware/test_base.py", True),
]


@pytest.mark.parametrize(
    ("file", "swap_app"), TASK_PATH_RUNS, ids=[f"{file}{'-with_app' * swap_app}" for file, swap_app in TASK_PATH_RUNS]
)
def test_starlette_file_on_the_task_path(starlette_sdist: Path, file: str, swap_app: bool) -> None:
    """The same runs with every request on the task path
    (``FERROWARE_FORCE_TASK_PATH=1``), and at least one request made: the app
    in a task of its own, as when ``call_next`` is awaited from another task,
    must be as stock on its own."""
    run_starlette_file(starlette_sdist, file, swap_app=swap_app, task_path=True)
