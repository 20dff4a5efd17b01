"""Smoke test for a freshly built wheel, run in a clean virtual environment
that has only the wheel and its declared dependencies installed.

One layer in front of a plain and a streaming endpoint, reading the status and
adding a background task: what CPython 3.13.0 broke when the layer's objects
were built another way (docs/design.md, "CPython details the dispatcher relies on")."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

import ferroware
from ferroware import _core


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def chunks() -> AsyncIterator[bytes]:
    yield b"hel"
    yield b"lo"


async def streamed(request: object) -> StreamingResponse:
    return StreamingResponse(chunks())


async def get(app: Starlette, path: str) -> list[dict]:
    sent: list[dict] = []
    received = asyncio.Event()

    async def receive() -> dict:
        # The request once; after it, as a server does, wait for a disconnect
        # (a streaming response listens for one while it streams).
        if received.is_set():
            await asyncio.Event().wait()
        received.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b"", "root_path": ""}
    await app(scope, receive, send)
    return sent


async def main() -> None:
    app = ferroware.Starlette(routes=[Route("/", hello), Route("/streamed", streamed)])
    ran: list[str] = []

    @app.middleware("http")
    async def add_header(request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers["x-smoke"] = f"ok {response.status_code}"
        response.background = BackgroundTask(ran.append, request.url.path)
        return response

    for path in ("/", "/streamed"):
        sent = await get(app, path)
        start = sent[0]
        assert start["status"] == 200, start
        assert (b"x-smoke", b"ok 200") in start["headers"], start
        assert b"".join(m.get("body", b"") for m in sent[1:]) == b"hello", sent
    assert ran == ["/", "/streamed"], ran
    assert isinstance(app, Starlette)
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"wheel smoke test passed: ferroware {ferroware.__version__} on CPython {version} ({_core.__file__})")


asyncio.run(main())
