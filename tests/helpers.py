"""Small apps and layers shared by the application and install tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Backend = Literal["asyncio", "trio"]
CallNext = Callable[[Request], Awaitable[Response]]
Dispatch = Callable[[Request, CallNext], Awaitable[Response]]

# Set by the endpoint, read by dispatch after call_next: the value is only still
# visible there when call_next ran the endpoint in dispatch's own task, which is
# what ferroware's dispatcher does and Starlette's (a new task per call) does not.
CV: ContextVar[str] = ContextVar("ferroware_test_cv", default="unset")


async def set_cv(request: Request) -> Response:
    CV.set("endpoint")
    return PlainTextResponse("ok")


ROUTES: list[BaseRoute] = [Route("/", set_cv)]


async def report_cv(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    response.headers["x-cv"] = CV.get()
    return response


def recording(log: list[str], name: str) -> Dispatch:
    """A dispatch function that logs when it runs, before and after call_next."""

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        log.append(f"{name}>")
        response = await call_next(request)
        log.append(f"<{name}")
        return response

    return dispatch


class Tagger:
    """A pure-ASGI layer with one positional and one keyword option."""

    def __init__(self, app: ASGIApp, name: str, *, log: list[str]) -> None:
        self.app = app
        self.name = name
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan passes through every layer too
            await self.app(scope, receive, send)
            return
        self.log.append(f"{self.name}>")
        await self.app(scope, receive, send)
        self.log.append(f"<{self.name}")


def chain(stack: ASGIApp) -> list[object]:
    """The layers of a built stack, outermost first, down to (and with) the router."""
    layers: list[object] = []
    node: object = stack
    while True:
        layers.append(node)
        if isinstance(node, Router):
            return layers
        node = getattr(node, "app")


def http_scope(**extra: Any) -> Scope:
    """A GET / scope as a server would make it; ``extra`` replaces or adds keys."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    scope.update(extra)
    return scope


async def serve(app: ASGIApp, incoming: Sequence[Message] = (), **scope: Any) -> list[Message]:
    """One request straight through the ASGI interface, in the calling task:
    ``receive`` gives ``incoming`` (an empty body by default), then a
    disconnect; returns every message the app sent."""
    pending = list(incoming) or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope(**scope), receive, send)
    return sent


async def get(app: ASGIApp) -> tuple[int, dict[str, str]]:
    """One GET / straight through the ASGI interface, in the calling task."""
    start = (await serve(app))[0]
    assert start["type"] == "http.response.start"
    headers = {key.decode(): value.decode() for key, value in start["headers"]}
    return start["status"], headers
