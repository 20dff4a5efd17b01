"""pytest plugin: run Starlette's own tests with ferroware's header classes swapped in.

Loaded with ``-p ferroware_swap_headers`` by ``test_starlette_headers.py``. Before
any Starlette test module is imported it puts ``ferroware.Headers`` and
``ferroware.MutableHeaders`` in place of ``starlette.datastructures.Headers`` and
``MutableHeaders``, so ``from starlette.datastructures import Headers`` in a test
module binds ferroware's classes. (Starlette modules that imported the names
before, e.g. ``starlette.requests``, keep Starlette's: the point is that
Starlette's tests *of these classes* run against ferroware's.)

``FERROWARE_DESELECT_HEADERS`` may name test ids (separated by ``;``) to leave
out; the outer test passes the documented list of tests that differ because of
the security rule. At the end of the session one ``ferroware-swap-headers:`` line
per binding reports which class each loaded test module actually used.
"""

from __future__ import annotations

import os
import sys

import pytest

PREFIX = "ferroware-swap-headers:"
NAMES = ("Headers", "MutableHeaders")


def pytest_configure(config: pytest.Config) -> None:
    import starlette.datastructures

    import ferroware

    starlette.datastructures.Headers = ferroware.Headers  # type: ignore[misc,assignment]
    starlette.datastructures.MutableHeaders = ferroware.MutableHeaders  # type: ignore[misc,assignment]


def pytest_report_header(config: pytest.Config) -> str:
    return "ferroware swapped in for: starlette.datastructures.Headers, MutableHeaders"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = {i for i in os.environ.get("FERROWARE_DESELECT_HEADERS", "").split(";") if i}
    if not wanted:
        return
    keep = [item for item in items if item.nodeid not in wanted]
    dropped = [item for item in items if item.nodeid in wanted]
    config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def _qualified(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import starlette.datastructures

    seen = {f"starlette.datastructures.{name}": getattr(starlette.datastructures, name) for name in NAMES}
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("tests.") and module is not None:
            for name in NAMES:
                if name in vars(module):
                    seen[f"{module_name}.{name}"] = vars(module)[name]
    for where, obj in seen.items():
        terminalreporter.write_line(f"{PREFIX} {where} = {_qualified(obj)}")
