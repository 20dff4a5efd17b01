"""A full ferroware layer that sets two response headers, with the compiled
``MutableHeaders`` behind ``response.headers`` and, for comparison, with
Starlette's pure-Python ``MutableHeaders`` over the same list (what the layer
cost with the compiled dispatcher alone). Same app, same 10 layers, one run;
pytest-benchmark's table shows both side by side in the group."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import starlette.datastructures
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import ferroware
from ferroware import _bench

LAYERS = 10
REQUESTS = 400
CallNext = Callable[[Request], Awaitable[Response]]


async def compiled_headers(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    response.headers["x-frame-options"] = "DENY"
    response.headers["x-content-type-options"] = "nosniff"
    return response


async def python_headers(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    headers = starlette.datastructures.MutableHeaders(raw=response.raw_headers)
    headers["x-frame-options"] = "DENY"
    headers["x-content-type-options"] = "nosniff"
    return response


async def hello(request: Request) -> Response:
    return PlainTextResponse("Hello, world!")


@pytest.mark.parametrize("headers", ["compiled", "starlette"])
def test_two_header_layer(benchmark, loop: asyncio.AbstractEventLoop, headers: str) -> None:  # type: ignore[no-untyped-def]
    dispatch = compiled_headers if headers == "compiled" else python_headers
    app = ferroware.Starlette(routes=[Route("/", hello)])
    for _ in range(LAYERS):
        app.middleware("http")(dispatch)
    benchmark.group = f"ferroware layer setting two headers ({LAYERS} layers, per {REQUESTS} requests)"
    loop.run_until_complete(_bench.serve_batch(app, 20))
    benchmark.pedantic(loop.run_until_complete, setup=lambda: ((_bench.serve_batch(app, REQUESTS),), {}), rounds=15)
