"""Starlette 1.10.0's own ``tests/test_datastructures.py``, run against ferroware's
``Headers`` and ``MutableHeaders``.

The Starlette sdist comes from the ``starlette_sdist`` fixture (``_sdist.py``,
downloaded from PyPI pinned by version and sha256). The file runs in a
subprocess from the sdist's root, so Starlette's own pytest configuration
applies (strict markers, strict xfail, warnings as errors, blockbuster), with
the ``ferroware_swap_headers`` plugin putting ferroware's classes in place of
``starlette.datastructures.Headers`` and ``MutableHeaders`` before the test
module imports them. Starlette's async tests run on asyncio and trio.

It passes when every collected test passed on both backends, nothing was
skipped, failed, xfailed or errored, the header tests below are among the
passes, and the test module really bound ferroware's classes.

Tests that differ because of the security rule (mutations refuse names that
are not RFC 9110 tokens and values with CR, LF or NUL) would be deselected,
each with its reason, in ``SECURITY_DESELECTED``. None of Starlette 1.10.0's
datastructures tests sets such a header, so the list is empty: the whole file
runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from _sdist import inner_env

import ferroware

pytestmark = pytest.mark.conformance

TEST_FILE = "tests/test_datastructures.py"
TIMEOUT = 600  # seconds

# test id -> why it is left out (it sets a header the security rule refuses).
SECURITY_DESELECTED: dict[str, str] = {}

# The tests of the swapped classes: each must be among the passes.
REQUIRED_PASSES = [
    "tests/test_datastructures.py::test_headers",
    "tests/test_datastructures.py::test_mutable_headers",
    "tests/test_datastructures.py::test_mutable_headers_merge",
    "tests/test_datastructures.py::test_mutable_headers_merge_dict",
    "tests/test_datastructures.py::test_mutable_headers_update",
    "tests/test_datastructures.py::test_mutable_headers_update_dict",
    "tests/test_datastructures.py::test_mutable_headers_merge_not_mapping",
    "tests/test_datastructures.py::test_headers_mutablecopy",
    "tests/test_datastructures.py::test_mutable_headers_from_scope",
    # UploadFile builds its default Headers() from the module global at call time.
    "tests/test_datastructures.py::test_upload_file_repr[asyncio]",
    "tests/test_datastructures.py::test_upload_file_repr[trio]",
    "tests/test_datastructures.py::test_upload_file_repr_headers[asyncio]",
    "tests/test_datastructures.py::test_upload_file_repr_headers[trio]",
]

OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)")
SUMMARY = re.compile(r"^=*\s*(\d+) passed(?:, (\d+) deselected)? in [\d.]+s(?: \([^)]*\))?\s*=*$")
PROBE = re.compile(r"^ferroware-swap-headers: (\S+) = (\S+)$")


def test_starlette_datastructures_with_ferroware_headers(starlette_sdist: Path) -> None:
    env = inner_env(FERROWARE_DESELECT_HEADERS=";".join(SECURITY_DESELECTED))
    cmd = [sys.executable, "-m", "pytest", "-p", "ferroware_swap_headers", TEST_FILE, "-p", "no:cacheprovider", "-q", "-rA"]
    proc = subprocess.run(cmd, cwd=starlette_sdist, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr

    problems: list[str] = []
    if proc.returncode != 0:
        problems.append(f"pytest exited with {proc.returncode}")
    passed, other, bindings, summary = [], [], {}, None
    for line in proc.stdout.splitlines():
        if m := OUTCOME.match(line):
            (passed if m[1] == "PASSED" else other).append(line)
        elif m := PROBE.match(line):
            bindings[m[1]] = m[2]
        elif re.match(r"^=*\s*\d+ \w+.* in [\d.]+s", line):
            summary = line
    passed_ids = [line.split(" ", 1)[1] for line in passed]
    if other:
        problems.append("not passed: " + "; ".join(other))
    m = SUMMARY.match(summary or "")
    if not m:
        problems.append(f"summary {summary!r}, expected only passes (and the documented deselections)")
    else:
        if int(m[1]) != len(passed_ids):
            problems.append(f"summary says {m[1]} passed, {len(passed_ids)} PASSED lines")
        if int(m[2] or 0) != len(SECURITY_DESELECTED):
            problems.append(f"{m[2] or 0} deselected, expected {len(SECURITY_DESELECTED)}")
    for test_id in REQUIRED_PASSES:
        if test_id not in passed_ids:
            problems.append(f"did not pass: {test_id}")
    for backend in ("asyncio", "trio"):
        if not any(f"[{backend}" in i for i in passed_ids):
            problems.append(f"no test passed on {backend}")
    asyncio_ids = {i.replace("[asyncio", "[") for i in passed_ids if "[asyncio" in i}
    trio_ids = {i.replace("[trio", "[") for i in passed_ids if "[trio" in i}
    if asyncio_ids != trio_ids:
        problems.append(f"backends differ: {sorted(asyncio_ids ^ trio_ids)}")
    ours = {name: f"{getattr(ferroware, name).__module__}.{name}" for name in ("Headers", "MutableHeaders")}
    for where in [f"{mod}.{name}" for mod in ("starlette.datastructures", "tests.test_datastructures") for name in ours]:
        want = ours[where.rsplit(".", 1)[1]]
        if bindings.get(where) != want:
            problems.append(f"{where} was {bindings.get(where, '<not reported>')}, expected {want}")

    if problems:
        tail = "\n".join(out.rstrip().splitlines()[-120:])
        pytest.fail(
            "Starlette's test_datastructures.py with ferroware's Headers/MutableHeaders:\n- "
            + "\n- ".join(problems)
            + f"\n\n$ (cd {starlette_sdist} && {' '.join(cmd)})\n{tail}",
            pytrace=False,
        )
