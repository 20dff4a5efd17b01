"""pytest plugin: run Starlette's own tests with ferroware's classes swapped in.

Loaded with ``-p ferroware_swap`` before Starlette's test modules are imported,
so their ``from starlette.middleware.base import BaseHTTPMiddleware`` (and every
subclass they define) binds ferroware's class. ``FERROWARE_SWAP_APP=1`` also
swaps ``starlette.applications.Starlette`` for ``ferroware.Starlette``.

Starlette's tests are run unchanged but for the deliberate improvements listed in
``IMPROVED``: there, Starlette's strict xfail marks a limitation ferroware lifts,
so the mark is removed and the test must pass like any other.
"""

from __future__ import annotations

import os

import pytest

# test id prefix -> why ferroware passes a test Starlette marks as an expected failure
IMPROVED = {
    "tests/middleware/test_base.py::test_contextvars[": (
        "contextvars set downstream are visible in dispatch after call_next "
        "(the downstream app runs in the middleware's own task)"
    ),
}

_swapped: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    import fastapi.applications
    import starlette.applications
    import starlette.middleware.base

    import ferroware

    starlette.middleware.base.BaseHTTPMiddleware = ferroware.BaseHTTPMiddleware  # type: ignore[misc]
    fastapi.applications.BaseHTTPMiddleware = ferroware.BaseHTTPMiddleware  # type: ignore[misc]
    _swapped.append("BaseHTTPMiddleware")
    if os.environ.get("FERROWARE_SWAP_APP") == "1":
        starlette.applications.Starlette = ferroware.Starlette  # type: ignore[misc]
        _swapped.append("Starlette")


def pytest_report_header(config: pytest.Config) -> str:
    return "ferroware swapped in for: " + ", ".join(_swapped)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.nodeid.startswith(prefix) for prefix in IMPROVED):
            item.own_markers[:] = [mark for mark in item.own_markers if mark.name != "xfail"]
