"""Apps that send from a task of their own while their main task waits
somewhere else than in ``receive`` (``sse-starlette``'s ``EventSourceResponse``
does this: its main task joins a task group in which a child streams)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ferroware import BaseHTTPMiddleware

CallNext = Callable[[Request], Awaitable[Response]]


async def streams_from_a_child(scope: Scope, receive: Receive, send: Send) -> None:
    async def stream() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            await anyio.sleep(0.001)
            await send({"type": "http.response.body", "body": f"chunk {i};".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with anyio.create_task_group() as tg:  # the main task waits here, not in receive
        tg.start_soon(stream)


async def add_header(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    response.headers["x-layer"] = "1"
    return response


async def _serve(middleware_cls: type, layers: int) -> list[Message]:
    app = streams_from_a_child
    for _ in range(layers):
        app = middleware_cls(app, dispatch=add_header)
    sent: list[Message] = []
    done = anyio.Event()

    async def receive() -> Message:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "asgi": {"spec_version": "2.3"}}
    with anyio.fail_after(2):
        await app(scope, receive, send)
    return sent


TRIO_LIMITATION = pytest.mark.xfail(
    reason="on trio a send from another task is taken only while the app's main task waits in receive "
    "(docs/design.md, 'Sends from another task')",
    raises=TimeoutError,
    strict=True,
)


@pytest.mark.parametrize(
    "anyio_backend", ["asyncio", pytest.param("trio", marks=TRIO_LIMITATION)], indirect=True
)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.anyio
async def test_child_task_streams_while_main_task_joins(layers: int) -> None:
    stock = await _serve(StockBaseHTTPMiddleware, layers)
    ours = await _serve(BaseHTTPMiddleware, layers)
    assert ours == stock
    assert [m.get("body") for m in ours[1:]] == [b"chunk 0;", b"chunk 1;", b"chunk 2;", b""]
    assert (b"x-layer", b"1") in ours[0]["headers"]
