"""Put a stock Starlette ``BaseHTTPMiddleware`` layer on the compiled dispatcher.

``accelerate`` is the per-layer hook ``ferroware._core.build_stack`` calls on every
layer it instantiates. Only stock ``BaseHTTPMiddleware`` instances (and subclasses
that keep its ``__call__``) are wrapped: their behaviour lives entirely in
``.app`` and ``.dispatch_func``, so ``run_layer`` can serve them. Everything else,
ferroware's own class and pure-ASGI layers, is returned as is and called directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import starlette.middleware.base
from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware.base import BaseHTTPMiddleware, DispatchFunction, run_layer

__all__ = ["STOCK_BASE", "STOCK_CALL", "AcceleratedLayer", "accelerate"]

# Captured at import: ``ferroware.patch()`` rebinds ``__call__`` on this class and
# test plugins may rebind the module attribute to ferroware's class, but we always
# mean Starlette's original class and its original method.
STOCK_BASE: type[starlette.middleware.base.BaseHTTPMiddleware] = starlette.middleware.base.BaseHTTPMiddleware
STOCK_CALL: Callable[..., Any] = STOCK_BASE.__dict__["__call__"]


class AcceleratedLayer:
    """A stock ``BaseHTTPMiddleware`` instance, called through the compiled dispatcher.

    The wrapped instance stays the source of truth: attribute reads and writes go
    to it, so code that walks or rewires the stack through ``.app`` (FastAPI's
    telemetry, instrumentation libraries) sees the user's layer and its options.
    """

    __slots__ = ("_layer",)

    _layer: starlette.middleware.base.BaseHTTPMiddleware

    def __init__(self, layer: starlette.middleware.base.BaseHTTPMiddleware) -> None:
        object.__setattr__(self, "_layer", layer)

    @property
    def app(self) -> ASGIApp:
        return self._layer.app

    @property
    def dispatch_func(self) -> DispatchFunction:
        return self._layer.dispatch_func

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # run_layer reads .app/.dispatch_func from the wrapped instance and caches
        # its dispatcher there, so reassigning either on it (or via us) is honoured.
        await run_layer(self._layer, scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found on the wrapper itself.
        return getattr(self._layer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._layer, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._layer!r})"


def accelerate(layer: ASGIApp) -> ASGIApp:
    """Wrap ``layer`` if it is a stock ``BaseHTTPMiddleware`` that ``run_layer`` can serve."""
    if (
        isinstance(layer, STOCK_BASE)
        # A test plugin may have made ferroware's class the "stock" name before we
        # were imported; its instances already run on the dispatcher.
        and not isinstance(layer, BaseHTTPMiddleware)
        # A subclass with its own __call__ does more than dispatch: leave it alone.
        # The class attribute is read now, so a patched __call__ counts as stock too.

    ):
        return AcceleratedLayer(layer)
    return layer
