"""Contextvars around ``call_next``, cell by cell against stock Starlette.

One var per place it is set (before ``call_next``, around it with a reset,
after it, in the endpoint, in the endpoint's background task, in an outer
pure-ASGI layer), each read in every place it can be read (the endpoint, each
streamed chunk, the background task, ``dispatch`` after ``call_next``, the
outer layer after the app). Every cell must read what it reads through stock
Starlette in the same run, but for the deliberate improvement (README,
"Deliberate differences"): what the app sets before its response starts is
seen by ``dispatch`` after ``call_next``, and so by what runs after it in the
same task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from test_differential import (
    STOCK_BODY_STREAM_LEAK,
    Base,
    CallNext,
    FerrowareBaseHTTPMiddleware,
    Recorder,
    StockBaseHTTPMiddleware,
    http_scope,
)

SET_AT = ["before", "around", "after", "endpoint", "background", "outer"]
READ_AT = ["endpoint", "chunk 0", "chunk 1", "background", "dispatch after", "outer after"]
VARS = {place: ContextVar(f"set_{place.replace(' ', '_')}", default="unset") for place in SET_AT}

# The improvement: the endpoint's value reaches dispatch after call_next (and
# the outer layer, which runs in dispatch's task); stock's app task keeps it.
IMPROVED = {("endpoint", "dispatch after"), ("endpoint", "outer after")}


def read_all(reads: dict[str, dict[str, str]], place: str) -> None:
    reads[place] = {name: var.get() for name, var in VARS.items()}


def build(base: Base, reads: dict[str, dict[str, str]], layers: int) -> ASGIApp:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(2):
            read_all(reads, f"chunk {i}")
            await anyio.sleep(0)
            yield b"chunk"

    def background() -> None:
        VARS["background"].set("set")
        read_all(reads, "background")

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        VARS["endpoint"].set("set")
        read_all(reads, "endpoint")
        response = StreamingResponse(chunks(), background=BackgroundTask(background))
        await response(scope, receive, send)

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        VARS["before"].set("set")
        token = VARS["around"].set("set")
        try:
            response = await call_next(request)
        finally:
            VARS["around"].reset(token)
        VARS["after"].set("set")
        read_all(reads, "dispatch after")
        return response

    app: ASGIApp = endpoint
    for _ in range(layers):
        app = base(app, dispatch=dispatch)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        VARS["outer"].set("set")
        await app(scope, receive, send)
        read_all(reads, "outer after")

    return outer


async def run(base: Base, layers: int, spec_version: str) -> dict[str, dict[str, str]]:
    reads: dict[str, dict[str, str]] = {}
    recorder = Recorder([{"type": "http.request", "body": b"", "more_body": False}])
    app = build(base, reads, layers)

    async def in_fresh_context() -> None:
        with anyio.fail_after(5):
            await app(http_scope(spec_version=spec_version), recorder.receive, recorder.send)

    # A task of its own: the vars set in one run don't leak into the next.
    async with anyio.create_task_group() as group:
        group.start_soon(in_fresh_context)
    sends: list[Message] = recorder.sends
    assert sends[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    return reads


@pytest.mark.anyio
@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])  # 2.0: StreamingResponse streams from a child task
@pytest.mark.parametrize("layers", [1, 2])
async def test_every_cell_reads_what_stock_reads(layers: int, spec_version: str) -> None:
    stock = await run(StockBaseHTTPMiddleware, layers, spec_version)
    ferro = await run(FerrowareBaseHTTPMiddleware, layers, spec_version)
    assert sorted(stock) == sorted(ferro) == sorted(READ_AT)
    differences: list[Any] = []
    for read_at in READ_AT:
        for set_at in SET_AT:
            cell = (set_at, read_at)
            expected = "set" if cell in IMPROVED else stock[read_at][set_at]
            if ferro[read_at][set_at] != expected:
                differences.append((cell, f"stock {stock[read_at][set_at]}", f"ferroware {ferro[read_at][set_at]}"))
    assert not differences, differences


@pytest.mark.anyio
@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
async def test_stock_is_what_the_cells_say() -> None:
    """The reference itself, in the cells the issue names: a var set around
    ``call_next`` and reset is still set in the app's background task; one set
    after ``call_next`` is not seen there."""
    stock = await run(StockBaseHTTPMiddleware, 1, "2.4")
    assert stock["background"]["around"] == "set"
    assert stock["background"]["after"] == "unset"
    assert stock["dispatch after"]["endpoint"] == "unset"
