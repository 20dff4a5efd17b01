"""``Starlette`` and ``FastAPI`` whose user middleware stack is composed in Rust.

Drop-in subclasses: change the import, keep the app. (``FastAPI`` lives in
``ferroware._fastapi``, imported on first use.) Stock ``BaseHTTPMiddleware``
layers are moved onto the compiled dispatcher, and ``@app.middleware("http")``
(gone from Starlette since 1.0, kept by FastAPI) registers ferroware's class.
Everything else, including where the user stack sits among the framework's own
layers, is the framework's unchanged ``build_middleware_stack``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import starlette.applications
from starlette.types import ASGIApp

from ferroware._stack import build_with_compiled_user_stack
from ferroware.base import BaseHTTPMiddleware, DispatchFunction

if TYPE_CHECKING:
    from ferroware._fastapi import FastAPI

__all__ = ["FastAPI", "Starlette"]

Dispatch = TypeVar("Dispatch", bound=DispatchFunction)


def _http_middleware(
    app: starlette.applications.Starlette, middleware_type: str
) -> Callable[[Dispatch], Dispatch]:
    """The ``@app.middleware(middleware_type)`` decorator, for both app classes."""
    if middleware_type != "http":
        # FastAPI only asserts this, which vanishes under ``python -O``.
        raise ValueError(f'middleware_type must be "http", got {middleware_type!r}')

    def decorator(func: Dispatch) -> Dispatch:
        app.add_middleware(BaseHTTPMiddleware, dispatch=func)
        return func

    return decorator


class Starlette(starlette.applications.Starlette):
    """``starlette.applications.Starlette`` with ferroware's middleware stack."""

    def build_middleware_stack(self) -> ASGIApp:
        return build_with_compiled_user_stack(self, super().build_middleware_stack)

    def middleware(self, middleware_type: str) -> Callable[[Dispatch], Dispatch]:
        """Register the decorated ``dispatch(request, call_next)`` as the outermost user layer."""
        if _stock_decorator is not None:
            # Starlette before 1.0 still has the decorator, deprecated: its own,
            # warning and all. The stock layer it adds is moved onto the
            # compiled dispatcher like any other.
            decorator: Callable[[Dispatch], Dispatch] = _stock_decorator(self, middleware_type)
            return decorator
        return _http_middleware(self, middleware_type)


_stock_decorator: Any = getattr(starlette.applications.Starlette, "middleware", None)


def __getattr__(name: str) -> Any:
    # FastAPI is an optional extra, and importing it takes longer than all of
    # ferroware: its subclass is made on first use, not at import.
    if name == "FastAPI":
        from ferroware._fastapi import FastAPI

        return FastAPI
    raise AttributeError(f"module 'ferroware.applications' has no attribute {name!r}")
