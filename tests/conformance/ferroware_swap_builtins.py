"""pytest plugin: run Starlette's own tests of its built-in middleware with
ferroware's classes swapped in.

Loaded with ``-p ferroware_swap_builtins`` by ``test_starlette_builtins.py``.
Before any Starlette test module is imported it rebinds the names in
Starlette's middleware modules (``starlette.middleware.cors.CORSMiddleware``,
``...gzip.GZipMiddleware`` and ``GZipResponder``,
``...trustedhost.TrustedHostMiddleware``,
``...httpsredirect.HTTPSRedirectMiddleware``) to ferroware's, so the test
modules' ``from starlette.middleware.cors import CORSMiddleware`` binds them.
At the end of the session one ``ferroware-swap-builtins:`` line per binding
reports which class each loaded test module actually used.
"""

from __future__ import annotations

import importlib
import sys

import pytest

PREFIX = "ferroware-swap-builtins:"
# starlette module -> names rebound to ferroware.middleware's class of the same name
SWAPS = {
    "starlette.middleware.cors": ("CORSMiddleware",),
    "starlette.middleware.gzip": ("GZipMiddleware", "GZipResponder"),
    "starlette.middleware.trustedhost": ("TrustedHostMiddleware",),
    "starlette.middleware.httpsredirect": ("HTTPSRedirectMiddleware",),
}


def pytest_configure(config: pytest.Config) -> None:
    import ferroware.middleware

    for module_name, names in SWAPS.items():
        module = importlib.import_module(module_name)
        for name in names:
            setattr(module, name, getattr(ferroware.middleware, name))


def pytest_report_header(config: pytest.Config) -> str:
    return "ferroware swapped in for: " + ", ".join(n for names in SWAPS.values() for n in names)


def _qualified(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    all_names = {n for names in SWAPS.values() for n in names}
    for module_name, names in SWAPS.items():
        module = sys.modules[module_name]
        for name in names:
            terminalreporter.write_line(f"{PREFIX} {module_name}.{name} = {_qualified(getattr(module, name))}")
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("tests.") and module is not None:
            for name in sorted(all_names & set(vars(module))):
                terminalreporter.write_line(f"{PREFIX} {module_name}.{name} = {_qualified(vars(module)[name])}")
