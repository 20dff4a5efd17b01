"""``ferroware.FastAPI``: ``fastapi.FastAPI`` with ferroware's middleware stack.

Its own module so that ``import ferroware`` doesn't import FastAPI (an optional
extra, slower to import than the rest of ferroware together).
"""

from __future__ import annotations

from collections.abc import Callable

import fastapi
from starlette.types import ASGIApp

from ferroware._stack import build_with_compiled_user_stack
from ferroware.applications import Dispatch, _http_middleware

__all__ = ["FastAPI"]


class FastAPI(fastapi.FastAPI):
    """``fastapi.FastAPI`` with ferroware's middleware stack."""

    def build_middleware_stack(self) -> ASGIApp:
        return build_with_compiled_user_stack(self, super().build_middleware_stack)

    def middleware(self, middleware_type: str) -> Callable[[Dispatch], Dispatch]:
        """Register the decorated ``dispatch(request, call_next)`` as the outermost user layer."""
        return _http_middleware(self, middleware_type)
