"""The deliberate differences from Starlette, each checked against stock
Starlette on the same app: stock shows the limitation, ferroware lifts it."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable

import anyio
import pytest
from helpers import http_scope, serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message

from ferroware import BaseHTTPMiddleware

CallNext = Callable[[Request], Awaitable[Response]]
IMPLEMENTATIONS = [pytest.param(StockBaseHTTPMiddleware, id="stock"), pytest.param(BaseHTTPMiddleware, id="ferroware")]

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


@pytest.mark.anyio
@pytest.mark.parametrize("middleware_cls", IMPLEMENTATIONS)
async def test_contextvar_set_downstream_is_seen_after_call_next(middleware_cls: type) -> None:
    seen: list[str] = []

    async def endpoint(request: Request) -> Response:
        request_var.set("set by endpoint")
        return PlainTextResponse("ok")

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        seen.append(request_var.get())
        return response

    app = Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(middleware_cls, dispatch=dispatch)])
    await serve(app)
    expected = "set by endpoint" if middleware_cls is BaseHTTPMiddleware else "unset"
    assert seen == [expected]


def disconnect_probe(middleware_cls: type, seen: list[bool]) -> Starlette:
    """An app whose endpoint reads the body, then records ``is_disconnected()``,
    behind one pass-through layer of ``middleware_cls``."""

    async def endpoint(request: Request) -> Response:
        await request.body()
        seen.append(await request.is_disconnected())
        return PlainTextResponse("ok")

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        return await call_next(request)

    return Starlette(
        routes=[Route("/", endpoint, methods=["POST"])],
        middleware=[Middleware(middleware_cls, dispatch=dispatch)],
    )


@pytest.mark.anyio
@pytest.mark.parametrize("middleware_cls", IMPLEMENTATIONS)
async def test_endpoint_sees_disconnect_behind_middleware(middleware_cls: type) -> None:
    seen: list[bool] = []
    app = disconnect_probe(middleware_cls, seen)
    client_went_away = [{"type": "http.request", "body": b"abc", "more_body": False}, {"type": "http.disconnect"}]
    await serve(app, client_went_away, method="POST")
    assert seen == [middleware_cls is BaseHTTPMiddleware]


@pytest.mark.anyio
async def test_connected_client_is_not_reported_disconnected() -> None:
    seen: list[bool] = []
    app = disconnect_probe(BaseHTTPMiddleware, seen)
    still_connected = anyio.Event()

    async def receive() -> Message:
        if not seen and not still_connected.is_set():
            still_connected.set()
            return {"type": "http.request", "body": b"abc", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(http_scope(method="POST"), receive, send)
    assert seen == [False]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
