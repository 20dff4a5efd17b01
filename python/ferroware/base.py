"""``BaseHTTPMiddleware`` on the compiled dispatcher: a drop-in for Starlette's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from anyio.lowlevel import cancel_shielded_checkpoint

from ferroware._core import Channel, Dispatcher
from ferroware._request import DispatchRequest, foreign_send
from ferroware._response import CallNextResponse

RequestResponseEndpoint = Callable[[Request], Awaitable[Response]]
DispatchFunction = Callable[[Request, RequestResponseEndpoint], Awaitable[Response]]

__all__ = ["BaseHTTPMiddleware", "DispatchFunction", "RequestResponseEndpoint"]


def _dispatcher_for(app: ASGIApp) -> Dispatcher:
    return Dispatcher(app, CallNextResponse, foreign_send)


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
        await _run_layer(self, scope, receive, send)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        raise NotImplementedError()  # pragma: no cover


async def _run_layer(layer: object, scope: Scope, receive: Receive, send: Send) -> None:
    """One request through one layer with ``.app`` and ``.dispatch_func``.

    Shared by ferroware's class and, after ``ferroware.patch()``, by Starlette's.
    """
    app: ASGIApp = layer.app  # type: ignore[attr-defined]
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    dispatcher: Dispatcher | None = layer.__dict__.get("_ferroware_dispatcher")
    if dispatcher is None or dispatcher.app is not app:
        dispatcher = layer.__dict__["_ferroware_dispatcher"] = _dispatcher_for(app)

    request = DispatchRequest(scope, receive, send)
    downstream_receive = request.downstream_receive
    channel = request.channel = dispatcher.channel(scope, downstream_receive, send, request)
    dispatch_func = layer.dispatch_func  # type: ignore[attr-defined]
    try:
        response = await dispatch_func(request, channel.call_next)
        if not callable(response):
            raise TypeError(
                f"{getattr(dispatch_func, '__qualname__', dispatch_func)!s}() returned "
                f"{type(response).__name__}, expected a Response"
            )
        await response(scope, downstream_receive, send)
    except BaseException:
        request.response_sent()
        await channel.abort()
        raise
    request.response_sent()
    if not _is_channel_send(send):
        # The outermost layer lets other tasks run between its response going out
        # and the app's background work starting, as Starlette's call_next does;
        # inner layers are resumed only after it, so one yield serves the stack.
        await cancel_shielded_checkpoint()
    await channel.finish()


def _is_channel_send(send: Send) -> bool:
    return type(getattr(send, "__self__", None)) is Channel
