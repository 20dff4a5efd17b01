"""Put a stock Starlette ``BaseHTTPMiddleware`` layer on the compiled dispatcher.

``accelerate`` is the per-layer hook ``ferroware._core.build_stack`` calls on every
layer it instantiates. Only stock ``BaseHTTPMiddleware`` instances (and subclasses
that keep its ``__call__``) are wrapped: their behaviour lives entirely in
``.app`` and ``.dispatch_func``, which is all ferroware's dispatcher needs.
Everything else, ferroware's own class and pure-ASGI layers, is returned as is
and called directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import starlette.middleware.base
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ferroware.base import WIRING, BaseHTTPMiddleware, DispatchFunction, RequestResponseEndpoint, note_rewired

__all__ = ["STOCK_BASE", "STOCK_CALL", "AcceleratedLayer", "accelerate"]

# Captured at import: ``ferroware.patch()`` rebinds ``__call__`` on this class and
# test plugins may rebind the module attribute to ferroware's class, but we always
# mean Starlette's original class and its original method.
STOCK_BASE: type[starlette.middleware.base.BaseHTTPMiddleware] = starlette.middleware.base.BaseHTTPMiddleware
STOCK_CALL: Callable[..., Any] = STOCK_BASE.__dict__["__call__"]


class AcceleratedLayer(BaseHTTPMiddleware):
    """A stock ``BaseHTTPMiddleware`` instance, run as a ferroware layer.

    It is a ferroware layer (it keeps ``BaseHTTPMiddleware.__call__``), so the
    compiled dispatcher links it straight to neighbouring ferroware layers, with
    no Python frame in between. Its ``.app`` and ``.dispatch_func`` are read from
    the wrapped instance on each rebuild check, and every other attribute read
    or write goes to it too: code that walks or rewires the stack through
    ``.app`` (FastAPI's telemetry, instrumentation) sees the user's layer.
    """

    _layer: starlette.middleware.base.BaseHTTPMiddleware

    def __init__(self, layer: starlette.middleware.base.BaseHTTPMiddleware) -> None:
        # No super().__init__(): app and dispatch_func stay on the wrapped layer.
        self.__dict__["_layer"] = layer

    # Properties, not __getattr__: the dispatcher reads both on every request.
    # They stay writable: __setattr__ below sends writes to the wrapped layer.
    @property
    def app(self) -> ASGIApp:  # type: ignore[override]
        return self._layer.app

    @property
    def dispatch_func(self) -> DispatchFunction:  # type: ignore[override]
        return self._layer.dispatch_func

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await self._layer.dispatch(request, call_next)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found on the wrapper itself.
        if name == "_layer":  # not set yet (copy, pickle): don't recurse
            raise AttributeError(name)
        return getattr(self._layer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in WIRING:
            note_rewired()
        setattr(self._layer, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._layer!r})"


def accelerate(layer: ASGIApp) -> ASGIApp:
    """Wrap ``layer`` if it is a stock ``BaseHTTPMiddleware`` that only dispatches."""
    if (
        isinstance(layer, STOCK_BASE)
        # A test plugin may have made ferroware's class the "stock" name before we
        # were imported; its instances already run on the dispatcher.
        and not isinstance(layer, BaseHTTPMiddleware)
        # A subclass with its own __call__ does more than dispatch: leave it alone.
        # The class attribute is read now, so a patched __call__ counts as stock too.
        and type(layer).__call__ in (STOCK_CALL, STOCK_BASE.__call__)
    ):
        return AcceleratedLayer(layer)
    return layer
