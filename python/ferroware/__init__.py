"""ferroware: Starlette and FastAPI middleware on a compiled dispatcher.

``BaseHTTPMiddleware``, ``@app.middleware("http")`` and ``add_middleware`` keep
Starlette's semantics; the dispatcher behind ``call_next`` is written in Rust and
runs the downstream app in the caller's own task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferroware._core import __version__
from ferroware._scopes import InternalsWarning
from ferroware.applications import Starlette
from ferroware.base import BaseHTTPMiddleware
from ferroware.datastructures import Headers, MutableHeaders
from ferroware.install import install, is_patched, patch, timings, uninstall, unpatch

if TYPE_CHECKING:
    from ferroware._fastapi import FastAPI

__all__ = [
    "BaseHTTPMiddleware",
    "FastAPI",
    "Headers",
    "InternalsWarning",
    "MutableHeaders",
    "Starlette",
    "__version__",
    "install",
    "is_patched",
    "patch",
    "timings",
    "uninstall",
    "unpatch",
]


def __getattr__(name: str) -> Any:
    # FastAPI is an optional extra: import it only when asked for.
    if name == "FastAPI":
        try:
            from ferroware._fastapi import FastAPI
        except ImportError as exc:
            if exc.name != "fastapi":
                raise
            raise ImportError("ferroware.FastAPI needs FastAPI: pip install 'ferroware[fastapi]'") from None
        return FastAPI
    raise AttributeError(f"module 'ferroware' has no attribute {name!r}")
