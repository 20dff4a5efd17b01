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
from ferroware._core import build_stack

__all__ = ["build_with_compiled_user_stack", "compiled_user_stack"]


def compiled_user_stack(app: ASGIApp, layers: Sequence[Middleware]) -> ASGIApp:
    """Middleware factory: ``layers`` (outermost first) around ``app``, stock layers accelerated."""
    built: ASGIApp = build_stack(app, layers, accelerate)
    return built


def build_with_compiled_user_stack(app: Starlette, build: Callable[[], ASGIApp]) -> ASGIApp:
    """Run the framework's ``build`` with the user's middleware folded into one entry.

    ``user_middleware`` is restored afterwards, even if a layer's constructor
    raises, so ``add_middleware`` and introspection see the user's list as before.
    """
    layers = app.user_middleware
    if not layers or _already_folded(layers):
        # Nothing to compose, or an outer override (``install`` on a ferroware app) did it.
        return build()
    app.user_middleware = [Middleware(compiled_user_stack, layers)]
    try:
        return build()
    finally:
        app.user_middleware = layers


def _already_folded(layers: Sequence[Middleware]) -> bool:
    if len(layers) != 1:
        return False
    factory: object = layers[0].cls
    return factory is compiled_user_stack
