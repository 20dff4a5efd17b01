"""In ``dispatch``, ``request.headers`` and the ``call_next`` response's
``headers`` are the compiled classes, and behave as Starlette's do there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from helpers import serve
import starlette.datastructures
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import ferroware

CallNext = Callable[[Request], Awaitable[Response]]


@pytest.mark.anyio
async def test_request_and_response_headers_in_dispatch() -> None:
    seen: dict[str, object] = {}

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"X-Down": "1"})

    app = ferroware.Starlette(routes=[Route("/", endpoint)])

    @app.middleware("http")
    async def dispatch(request: Request, call_next: CallNext) -> Response:
        seen["request_type"] = type(request.headers)
        seen["same_object"] = request.headers is request.headers
        seen["user_agent"] = request.headers.get("User-Agent")
        seen["cookies"] = request.headers.getlist("cookie")
        response = await call_next(request)
        seen["response_type"] = type(response.headers)
        seen["down"] = response.headers["x-down"]
        response.headers["X-Up"] = "2"
        del response.headers["x-down"]
        return response

    sent = await serve(app, headers=[(b"user-agent", b"tests"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert seen == {
        "request_type": ferroware.Headers,
        "same_object": True,
        "user_agent": "tests",
        "cookies": ["a=1", "b=2"],
        "response_type": ferroware.MutableHeaders,
        "down": "1",
    }
    start = sent[0]
    assert (b"x-up", b"2") in start["headers"]
    assert all(name != b"x-down" for name, _ in start["headers"])


@pytest.mark.anyio
async def test_header_values_match_starlette() -> None:
    raw = [(b"Content-Type", b"text/plain"), (b"x-a", b"1"), (b"X-A", b"2")]
    ours = ferroware.Headers(scope={"headers": list(raw)})
    theirs = starlette.datastructures.Headers(scope={"headers": list(raw)})
    assert list(ours.items()) == list(theirs.items())
    assert ours.getlist("x-a") == theirs.getlist("x-a")
