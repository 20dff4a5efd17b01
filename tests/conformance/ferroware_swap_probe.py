"""pytest plugin used next to ``ferroware_swap``: report what Starlette's test modules bound.

``test_starlette_suite.py`` loads it with ``-p ferroware_swap_probe``. At the end
of the session it writes one line per loaded Starlette test module and name
(``BaseHTTPMiddleware``, ``Starlette``) with the fully qualified class that
module actually used, so the outer test can check the swap was in effect (and
not merely that the plugin loaded) even under ``-q``.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from ferroware._app_task import AppTask

PREFIX = "ferroware-swap-probe:"
NAMES = ("BaseHTTPMiddleware", "Starlette")

# How many requests took the task path: counted around AppTask's constructor
# (the compiled layer calls the class it was given, so this sees every one).
_app_tasks = [0]
_init = AppTask.__init__


def _counting_init(self: AppTask, *args: Any) -> None:
    _app_tasks[0] += 1
    _init(self, *args)


AppTask.__init__ = _counting_init  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import fastapi.applications
    import starlette.applications
    import starlette.middleware.base

    globals_seen = {
        "starlette.middleware.base.BaseHTTPMiddleware": starlette.middleware.base.BaseHTTPMiddleware,
        "fastapi.applications.BaseHTTPMiddleware": fastapi.applications.BaseHTTPMiddleware,
        "starlette.applications.Starlette": starlette.applications.Starlette,
    }
    for where, obj in globals_seen.items():
        terminalreporter.write_line(f"{PREFIX} {where} = {_qualified(obj)}")
    terminalreporter.write_line(f"{PREFIX} app_tasks = {_app_tasks[0]}")
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("tests.") or module is None:
            continue
        for name in NAMES:
            obj = vars(module).get(name)
            if isinstance(obj, type):
                terminalreporter.write_line(f"{PREFIX} {module_name}.{name} = {_qualified(obj)}")


def _qualified(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
