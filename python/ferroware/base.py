"""``BaseHTTPMiddleware`` on the compiled dispatcher: a drop-in for Starlette's."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._app_task import AppTask
from ferroware._core import Dispatcher, Hooks
from ferroware._handoff import Handoff
from ferroware._request import DispatchRequest, foreign_send, request_template
from ferroware._response import CallNextResponse
from ferroware._scheduling import ProxyLink, checkpoint, others_ready, response_calls
from ferroware._scopes import asyncio_support, trio_scopes

RequestResponseEndpoint = Callable[[Request], Awaitable[Response]]
DispatchFunction = Callable[[Request, RequestResponseEndpoint], Awaitable[Response]]

__all__ = ["BaseHTTPMiddleware", "DispatchFunction", "RequestResponseEndpoint"]

HOOKS = Hooks(
    request_cls=DispatchRequest,
    request_template=request_template(),
    response_cls=CallNextResponse,
    foreign_send=foreign_send,
    others_ready=others_ready,
    checkpoint=checkpoint,
    proxy_link=ProxyLink,
    handoff_of=Handoff.of,
    asyncio_scopes=asyncio_support(),
    trio_scopes=trio_scopes,
    response_calls=response_calls(),
    app_task=AppTask,
    # For tests only: every request on the task path, to check it on its own
    # (tests/conformance). Read once, at import.
    force_task_path=os.environ.get("FERROWARE_FORCE_TASK_PATH") == "1",
)


class BaseHTTPMiddleware:
    """Write middleware as ``dispatch(request, call_next)``, at pure-ASGI cost.

    Used like Starlette's: ``Middleware(BaseHTTPMiddleware, dispatch=func)`` or a
    subclass that overrides ``dispatch``. ``call_next`` runs the rest of the
    stack in this same task (see docs/design.md).
    """

    def __init__(self, app: ASGIApp, dispatch: DispatchFunction | None = None) -> None:
        self.app = app
        self.dispatch_func = self.dispatch if dispatch is None else dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await run_layer(self, scope, receive, send)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in WIRING and name in self.__dict__:
            note_rewired()
        object.__setattr__(self, name, value)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        raise NotImplementedError()  # pragma: no cover


def run_layer(layer: object, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    """One request through a layer that has ``.app`` and ``.dispatch_func``.

    Shared by ferroware's class and, after ``ferroware.patch()``, Starlette's.
    """
    if scope["type"] != "http":
        return layer.app(scope, receive, send)  # type: ignore[attr-defined, no-any-return]
    return dispatcher_for(layer)(scope, receive, send)


# The attributes that wire a layer into its stack.
WIRING = frozenset({"app", "dispatch_func"})
# Bumped whenever a ferroware layer's wiring is reassigned (rare): every cached
# dispatcher, and so every compiled link between layers, is then made again.
_rewired = [0]


def note_rewired() -> None:
    """A layer's ``app`` or ``dispatch_func`` was reassigned after it was set."""
    _rewired[0] += 1


def dispatcher_for(layer: object) -> Dispatcher:
    """The layer's compiled dispatcher, made on first use and again when any
    layer's ``.app`` or ``.dispatch_func`` was reassigned since.

    When the downstream app is itself a ferroware layer, its dispatcher is
    linked as ``inner``: a request then goes from one layer's channel straight
    into the next layer, with no Python frame in between. That link is why a
    reassignment anywhere (the inner layer's included) renews them all.
    """
    app: ASGIApp = layer.app  # type: ignore[attr-defined]
    dispatch_func = layer.dispatch_func  # type: ignore[attr-defined]
    state = layer.__dict__
    dispatcher: Dispatcher | None = state.get("_ferroware_dispatcher")
    if (
        dispatcher is None
        or state.get("_ferroware_generation") != _rewired[0]
        or dispatcher.app is not app
        or dispatcher.dispatch_func is not dispatch_func
    ):
        state["_ferroware_generation"] = _rewired[0]
        inner = dispatcher_for(app) if type(app).__call__ is BaseHTTPMiddleware.__call__ else None
        timing = layer.__dict__.get("_ferroware_timing")  # set by the stack builder when timings are on
        dispatcher = state["_ferroware_dispatcher"] = Dispatcher(app, dispatch_func, HOOKS, inner, timing)
    return dispatcher
