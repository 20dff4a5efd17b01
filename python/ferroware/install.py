"""Accelerate code whose imports you can't change.

``install(app)`` moves one existing Starlette or FastAPI app onto ferroware's
middleware stack. ``patch()`` goes further: every stock ``BaseHTTPMiddleware`` in
the process, including layers in stacks that are already built and FastAPI's
``@app.middleware("http")``, dispatches through the compiled dispatcher.
"""

from __future__ import annotations

from functools import partial
from types import MethodType

import starlette.applications
import starlette.middleware.base
from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._accelerate import STOCK_BASE, STOCK_CALL
from ferroware._core import Timings
from ferroware._stack import TIMINGS_ATTRIBUTE, build_with_compiled_user_stack
from ferroware.base import run_layer

__all__ = ["install", "is_patched", "patch", "timings", "uninstall", "unpatch"]


def install(app: starlette.applications.Starlette, *, timings: bool = False) -> None:
    """Build ``app``'s user middleware with ferroware from its next request on.

    The stack is rebuilt lazily on the next call (so, as before that first call,
    ``add_middleware`` is accepted until then); requests already in flight finish
    on the old stack. FastAPI's ``@app.middleware("http")`` keeps registering
    Starlette's class: its layers are moved onto the compiled dispatcher when the
    stack is built. Calling it again is a no-op.

    ``timings=True`` also turns on live per-layer timings: each ferroware
    layer's own time (without the layers inside it) is measured in Rust, added
    to the response as a ``Server-Timing`` field and kept for
    ``ferroware.timings(app)``.
    """
    _check_app(app, "install")
    changed = False
    if not _is_installed(app):
        # An instance attribute shadows the class's method for this app only, and is
        # itself the marker that ``install`` ran (see ``_is_installed``).
        app.build_middleware_stack = MethodType(_build_middleware_stack, app)  # type: ignore[method-assign]
        changed = True
    if timings and TIMINGS_ATTRIBUTE not in vars(app):
        vars(app)[TIMINGS_ATTRIBUTE] = Timings()
        changed = True
    if changed:
        app.middleware_stack = None


def timings(app: starlette.applications.Starlette) -> dict[str, dict[str, float]]:
    """``{layer name: {"count", "p50_us", "p99_us"}}`` for each ferroware layer
    of ``app``, outermost first: its own time per request (recent requests)."""
    _check_app(app, "timings")
    recorded: Timings | None = vars(app).get(TIMINGS_ATTRIBUTE)
    if recorded is None:
        raise ValueError("timings are off for this app: call ferroware.install(app, timings=True) first")
    return recorded.snapshot()


def uninstall(app: starlette.applications.Starlette) -> None:
    """Undo ``install(app)``: the next request rebuilds the app's own stack. No-op if not installed."""
    _check_app(app, "uninstall")
    if not _is_installed(app):
        return
    del app.build_middleware_stack
    vars(app).pop(TIMINGS_ATTRIBUTE, None)
    app.middleware_stack = None


def _build_middleware_stack(app: starlette.applications.Starlette) -> ASGIApp:
    # The class's method (not the instance attribute, which is us) does the placing.
    return build_with_compiled_user_stack(app, partial(type(app).build_middleware_stack, app))


def _is_installed(app: starlette.applications.Starlette) -> bool:
    method = vars(app).get("build_middleware_stack")
    return isinstance(method, MethodType) and method.__func__ is _build_middleware_stack


def _check_app(app: object, action: str) -> None:
    if not isinstance(app, starlette.applications.Starlette):
        raise TypeError(
            f"ferroware.{action}() expects a Starlette or FastAPI application, got {type(app).__qualname__}"
        )


async def _compiled_call(
    self: starlette.middleware.base.BaseHTTPMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """``BaseHTTPMiddleware.__call__`` while patched: same ``.app``/``.dispatch_func``, compiled dispatcher."""
    await run_layer(self, scope, receive, send)


def patch() -> None:
    """Make every stock ``BaseHTTPMiddleware`` in the process run on the compiled dispatcher.

    Takes effect from each layer's next request, stacks already built included.
    Subclasses that override ``__call__`` and call ``super().__call__`` get it too.
    Calling it again is a no-op; ``unpatch()`` restores Starlette's method.
    """
    STOCK_BASE.__call__ = _compiled_call  # type: ignore[method-assign]


def unpatch() -> None:
    """Restore Starlette's own ``BaseHTTPMiddleware.__call__``. No-op if not patched."""
    # Only undo our own patch: a method someone rebound after us is theirs to keep.
    if is_patched():
        STOCK_BASE.__call__ = STOCK_CALL  # type: ignore[method-assign]


def is_patched() -> bool:
    """Whether ``patch()`` is in effect."""
    return vars(STOCK_BASE).get("__call__") is _compiled_call
