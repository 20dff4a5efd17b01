"""Starlette's own tests of its built-in middleware (1.10.0's, or those of
``FERROWARE_CONFORMANCE_STARLETTE``), run against ``ferroware.middleware``.

``tests/middleware/test_cors.py``, ``test_gzip.py``, ``test_trusted_host.py``
and ``test_https_redirect.py`` run from the sdist (the ``starlette_sdist``
fixture, ``_sdist.py``) in a subprocess, with Starlette's own pytest
configuration (strict markers, strict xfail, warnings as errors, blockbuster)
and the ``ferroware_swap_builtins`` plugin rebinding Starlette's classes to
ferroware's before the test modules import them.

A file passes when pytest exits 0, every test passed (nothing skipped,
xfailed or errored, nothing deselected but an older release's tests of a
deliberate difference, ``_sdist.OLDER_RELEASE_DESELECTED``), its async tests passed on asyncio and trio
alike, and the test module really bound ferroware's classes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from _sdist import TAIL_LINES, _tail, backend_neutral, deselect_args, deselected_in, inner_env, names_used

import ferroware.middleware

pytestmark = pytest.mark.conformance

# file -> names its test module must have bound to ferroware's classes (each
# one the file uses: older releases' test_cors.py has no GZipMiddleware, and
# their test_gzip.py no GZipResponder)
FILES = {
    "tests/middleware/test_cors.py": ["CORSMiddleware", "GZipMiddleware"],
    "tests/middleware/test_gzip.py": ["GZipMiddleware", "GZipResponder"],
    "tests/middleware/test_trusted_host.py": ["TrustedHostMiddleware"],
    "tests/middleware/test_https_redirect.py": ["HTTPSRedirectMiddleware"],
}
TIMEOUT = 600  # seconds, per file
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)")
SUMMARY = re.compile(r"^=*\s*(\d+) passed(?:, (\d+) deselected)? in [\d.]+s(?: \([^)]*\))?\s*=*$")
PROBE = re.compile(r"^ferroware-swap-builtins: (\S+) = (\S+)$")


@pytest.mark.parametrize("file", list(FILES))
def test_starlette_builtin_middleware(starlette_sdist: Path, file: str) -> None:
    deselected = deselected_in(file)
    cmd = [
        sys.executable, "-m", "pytest", "-p", "ferroware_swap_builtins",
        file, *deselect_args(deselected), "-p", "no:cacheprovider", "-q", "-rA",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=starlette_sdist, env=inner_env(), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{file}: no result after {TIMEOUT}s\n{_tail(str(exc.stdout or ''))}")

    problems: list[str] = []
    if proc.returncode != 0:
        problems.append(f"pytest exited with {proc.returncode}")
    passed: list[str] = []
    other: list[str] = []
    bindings: dict[str, str] = {}
    summary = None
    for line in proc.stdout.splitlines():
        if m := OUTCOME.match(line):
            (passed if m[1] == "PASSED" else other).append(m[2] if m[1] == "PASSED" else line)
        elif m := PROBE.match(line):
            bindings[m[1]] = m[2]
        elif re.match(r"^=*\s*\d+ \w+.* in [\d.]+s", line):
            summary = line
    if other:
        problems.append("not simply passed: " + "; ".join(other))
    m = SUMMARY.match(summary or "")
    if not m:
        problems.append(f"summary {summary!r}, expected only 'N passed in ...'")
    else:
        if int(m[1]) != len(passed):
            problems.append(f"summary says {m[1]} passed, {len(passed)} PASSED lines")
        if int(m[2] or 0) != sum(d.count for d in deselected):
            problems.append(f"summary {summary!r}, expected {sum(d.count for d in deselected)} deselected")
    if not passed:
        problems.append("no test passed")
    asyncio_ids = {backend_neutral(i) for i in passed if "[asyncio" in i}
    trio_ids = {backend_neutral(i) for i in passed if "[trio" in i}
    if not asyncio_ids or not trio_ids:
        problems.append(f"async tests on asyncio: {len(asyncio_ids)}, on trio: {len(trio_ids)} (both must run)")
    if asyncio_ids != trio_ids:
        problems.append(f"passed on one backend only: {sorted(asyncio_ids ^ trio_ids)}")

    module = file.removesuffix(".py").replace("/", ".")
    used = names_used(starlette_sdist, file, FILES[file])
    if FILES[file][0] not in used:
        problems.append(f"{file} does not use {FILES[file][0]}: nothing of ferroware's is tested")
    for name in used:
        want = f"{getattr(ferroware.middleware, name).__module__}.{name}"
        for where in (f"{module}.{name}",):
            if bindings.get(where) != want:
                problems.append(f"{where} was {bindings.get(where, '<not reported>')}, expected {want}")

    if problems:
        pytest.fail(
            f"Starlette's {file} with ferroware.middleware:\n- "
            + "\n- ".join(problems)
            + f"\n\n$ (cd {starlette_sdist} && {' '.join(cmd)})\n--- last {TAIL_LINES} lines ---\n{_tail(proc.stdout + proc.stderr)}",
            pytrace=False,
        )
