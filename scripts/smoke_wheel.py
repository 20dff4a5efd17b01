"""Smoke test for a freshly built wheel, run in a clean virtual environment
that has only the wheel and its declared dependencies installed."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import ferroware
from ferroware import _core


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def main() -> None:
    app = ferroware.Starlette(routes=[Route("/", hello)])

    @app.middleware("http")
    async def add_header(request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers["x-smoke"] = "ok"
        return response

    sent = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"", "root_path": ""}
    await app(scope, receive, send)
    start = sent[0]
    assert start["status"] == 200, start
    assert (b"x-smoke", b"ok") in start["headers"], start
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"hello"
    assert isinstance(app, Starlette)
    print(f"wheel smoke test passed: ferroware {ferroware.__version__} ({_core.__file__})")


asyncio.run(main())
