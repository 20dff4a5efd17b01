"""What runs after a response went out, when two requests are served at once.

Starlette's ``call_next`` lets the other ready tasks run before the app's
background task starts (its ``test_do_not_block_on_background_tasks``). The
dispatcher yields to the loop there only when the app's suspended frames show
a background task (or can't tell): each case below serves two requests
concurrently and checks the order of what they did.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from helpers import http_scope
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferroware import BaseHTTPMiddleware

pytestmark = pytest.mark.anyio
CallNext = Callable[[Request], Awaitable[Response]]


async def passthrough(request: Request, call_next: CallNext) -> Response:
    return await call_next(request)


def layers(count: int) -> list[Middleware]:
    return [Middleware(BaseHTTPMiddleware, dispatch=passthrough) for _ in range(count)]


class LogAfter:
    """Pure ASGI: logs once the app below it has returned."""

    def __init__(self, app: ASGIApp, log: list[str]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.log.append("app returned")


async def serve_two(app: ASGIApp, log: list[str]) -> None:
    """Two GET requests at once; each final body is logged as it goes out."""

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            log.append("response sent")

    async def one() -> None:
        await app(http_scope(), receive, send)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)


def background(log: list[str]) -> BackgroundTask:
    async def task() -> None:
        log.append("background started")
        await anyio.sleep(0)
        log.append("background finished")

    return BackgroundTask(task)


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


# Both responses out before either background task starts.
YIELDED = ["response sent", "response sent", "background started", "background started"]


@pytest.mark.parametrize("count", [1, 3])
async def test_background_of_the_endpoint_response(count: int) -> None:
    log: list[str] = []

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok", background=background(log))

    await serve_two(Starlette(routes=[Route("/", endpoint)], middleware=layers(count)), log)
    assert log[:4] == YIELDED


async def test_background_seen_through_pure_asgi_middleware_between_layers() -> None:
    log: list[str] = []

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok", background=background(log))

    middleware = [*layers(2), Middleware(LogAfter, log=[]), *layers(2)]
    await serve_two(Starlette(routes=[Route("/", endpoint)], middleware=middleware), log)
    assert log[:4] == YIELDED


async def test_background_set_on_the_call_next_response_by_an_inner_layer() -> None:
    log: list[str] = []

    async def add_background(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.background = background(log)
        return response

    middleware = [*layers(1), Middleware(BaseHTTPMiddleware, dispatch=add_background)]
    await serve_two(Starlette(routes=[Route("/", ok)], middleware=middleware), log)
    assert log[:4] == YIELDED


async def test_background_of_a_response_an_inner_layer_made_itself() -> None:
    log: list[str] = []

    async def replace(request: Request, call_next: CallNext) -> Response:
        await call_next(request)
        return PlainTextResponse("replaced", background=background(log))

    middleware = [*layers(1), Middleware(BaseHTTPMiddleware, dispatch=replace)]
    await serve_two(Starlette(routes=[Route("/", ok)], middleware=middleware), log)
    assert log[:4] == YIELDED


async def test_background_of_a_streaming_response() -> None:
    log: list[str] = []

    async def chunks() -> object:
        yield b"a"
        yield b"b"

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(chunks(), background=background(log))

    app = Starlette(routes=[Route("/", endpoint)], middleware=layers(2))
    await serve_two(app, log)
    assert [e for e in log if e != "background finished"][:4] == YIELDED


async def test_raw_asgi_app_working_after_its_last_send_is_not_run_ahead() -> None:
    """An app with no response frame to read: the dispatcher can't tell, so it yields."""
    log: list[str] = []

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        log.append("work after the body")

    app: ASGIApp = raw
    for middleware in reversed(layers(2)):
        app = middleware.cls(app, *middleware.args, **middleware.kwargs)
    await serve_two(app, log)
    assert log == ["response sent", "response sent", "work after the body", "work after the body"]


@pytest.mark.parametrize("count", [1, 3])
async def test_no_background_means_no_yield(count: int) -> None:
    """With nothing to run after the body, each request finishes at once:
    the second starts only after the first one's app has returned."""
    log: list[str] = []
    app = Starlette(
        routes=[Route("/", ok)],
        middleware=[*layers(count), Middleware(LogAfter, log=log)],
    )
    await serve_two(app, log)
    assert log == ["response sent", "app returned", "response sent", "app returned"]
