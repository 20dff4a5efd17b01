"""Have the compiled ``build_stack`` compose the user part of an app's middleware stack.

Starlette and FastAPI each build the whole stack in ``build_middleware_stack``,
with their own fixed layers around ``app.user_middleware``. Rather than copy that
method, we hand it a one-entry ``user_middleware`` whose factory builds all the
user's layers at once, and let the framework's own method place it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from ferroware._accelerate import accelerate
from ferroware._core import Timings, build_stack
from ferroware.base import BaseHTTPMiddleware

__all__ = ["TIMINGS_ATTRIBUTE", "build_with_compiled_user_stack", "compiled_user_stack"]

# Where ``install(app, timings=True)`` keeps an app's live timings.
TIMINGS_ATTRIBUTE = "_ferroware_timings"


def compiled_user_stack(app: ASGIApp, layers: Sequence[Middleware], timings: Timings | None = None) -> ASGIApp:
    """Middleware factory: ``layers`` (outermost first) around ``app``, stock layers accelerated.

    With ``timings``, every ferroware layer of the stack records its own time there.
    """
    built: ASGIApp = build_stack(app, layers, accelerate)
    if timings is not None:
        layer = built
        while layer is not app:
            if isinstance(layer, BaseHTTPMiddleware):
                layer.__dict__["_ferroware_timing"] = (timings, timings.register(_layer_name(layer)))
            layer = getattr(layer, "app", app)
    return built


def _layer_name(layer: BaseHTTPMiddleware) -> str:
    """The dispatch function's name, or the class's for a subclass's ``dispatch``."""
    func = layer.dispatch_func
    owner = getattr(func, "__self__", None)
    if owner is not None:  # a bound ``dispatch`` method
        return type(owner).__name__
    return str(getattr(func, "__name__", type(layer).__name__))


def build_with_compiled_user_stack(app: Starlette, build: Callable[[], ASGIApp]) -> ASGIApp:
    """Run the framework's ``build`` with the user's middleware folded into one entry.

    ``user_middleware`` is restored afterwards, even if a layer's constructor
    raises, so ``add_middleware`` and introspection see the user's list as before.
    """
    layers = app.user_middleware
    if not layers or _already_folded(layers):
        # Nothing to compose, or an outer override (``install`` on a ferroware app) did it.
        return build()
    timings = vars(app).get(TIMINGS_ATTRIBUTE)
    app.user_middleware = [Middleware(compiled_user_stack, layers, timings)]
    try:
        return build()
    finally:
        app.user_middleware = layers


def _already_folded(layers: Sequence[Middleware]) -> bool:
    if len(layers) != 1:
        return False
    factory: object = layers[0].cls
    return factory is compiled_user_stack
