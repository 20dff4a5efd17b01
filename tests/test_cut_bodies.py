"""A streamed body cut short never ends as if it were complete.

When the request is cancelled mid-stream, the app fails mid-body, or the
server's ``send`` raises, the last message the server gets is the one stock
Starlette sends: after a cancellation or a failed ``send`` no final
``more_body: False`` chunk (the server then reports an incomplete body to the
client); after an app error, stock's own final chunk and then the error. At
1, 2 and 3 layers, with layers that re-stream ``call_next``'s body between,
on both backends, against stock in the same run (``test_differential``'s
machinery).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message
from test_differential import (
    EMPTY_REQUEST,
    Base,
    CallNext,
    Dispatch,
    STOCK_BODY_STREAM_LEAK,
    FerrowareBaseHTTPMiddleware,
    Outcome,
    Recorder,
    StockBaseHTTPMiddleware,
    _chain,
    _describe,
    _leaves,
    assert_same,
    http_scope,
    passthrough,
    stack,
)

CHUNKS = [b"one", b"two", b"three", b"four"]
CUT_AFTER = 2  # body chunks the server receives before the fault


class AppFailed(Exception):
    pass


class FaultyServer(Recorder):
    """A recorder whose fault strikes once ``CUT_AFTER`` body chunks went out:
    it cancels the scope the app call runs in, or its ``send`` raises."""

    def __init__(self, fault: str, scope: anyio.CancelScope) -> None:
        super().__init__([EMPTY_REQUEST])
        self.fault = fault
        self.scope = scope
        self.bodies = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and self.fault == "send raises" and self.bodies == CUT_AFTER:
            raise OSError("connection reset by peer")
        await super().send(message)
        if message["type"] == "http.response.body":
            self.bodies += 1
            if self.fault == "cancelled" and self.bodies == CUT_AFTER:
                self.scope.cancel()


class Chunks:
    """The endpoint's body: ``CHUNKS``, or a failure in their middle. An
    iterator object, not an async generator: stock leaves the iterator
    unexhausted on a cancellation, and trio warns when it collects an async
    generator in that state, which is not what these tests are about."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.sent = 0

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.sent == len(CHUNKS):
            raise StopAsyncIteration
        if self.fault == "app raises" and self.sent == CUT_AFTER:
            raise AppFailed("mid-body")
        await anyio.sleep(0)
        self.sent += 1
        return CHUNKS[self.sent - 1]


def endpoint(fault: str) -> ASGIApp:
    return StreamingResponse(Chunks(fault))


def restream(recorder: Recorder, name: str) -> Dispatch:
    """A layer that returns a new response streaming ``call_next``'s body."""

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        recorder.event(f"{name}:after")
        return StreamingResponse(response.body_iterator, status_code=response.status_code)  # type: ignore[attr-defined]

    return dispatch


LAYERS = {
    "pass": [passthrough],
    "pass-pass": [passthrough, passthrough],
    "restream-pass": [restream, passthrough],
    "pass-restream-pass": [passthrough, restream, passthrough],
    "restream-restream-restream": [restream, restream, restream],
}


async def run(base: Base, fault: str, layers: Sequence[Any], spec_version: str) -> Outcome:
    with anyio.CancelScope() as scope:
        server = FaultyServer(fault, scope)
        dispatches = [make(server, f"l{i}") for i, make in enumerate(layers)]
        app = stack(base, endpoint(fault), dispatches)
        outcome = Outcome(server.trace)
        try:
            with anyio.fail_after(5):
                await app(http_scope(spec_version=spec_version), server.receive, server.send)
        except Exception as exc:
            outcome.error, outcome.chain = _describe(exc), _chain(exc)
            outcome.group_leaves = _leaves(exc)
    server.event("cancelled" if scope.cancelled_caught else "returned")
    return outcome


def run_apart(base: Base, fault: str, layers: Sequence[Any], spec_version: str, backend: str) -> Outcome:
    """``run`` in an event loop of its own; ferroware's run must give no
    warning (stock leaves its body stream unfinished on trio, as
    ``test_differential.run_apart`` explains)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = anyio.run(run, base, fault, layers, spec_version, backend=backend)
        gc.collect()
    if base is FerrowareBaseHTTPMiddleware:
        assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    return outcome


@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])  # 2.0: StreamingResponse sends from a child task
@pytest.mark.parametrize("layers", list(LAYERS.values()), ids=list(LAYERS))
@pytest.mark.parametrize("fault", ["cancelled", "app raises", "send raises"])
def test_a_cut_body_ends_as_stock_ends_it(fault: str, layers: Sequence[Any], spec_version: str, backend: str) -> None:
    stock = run_apart(StockBaseHTTPMiddleware, fault, layers, spec_version, backend)
    ferro = run_apart(FerrowareBaseHTTPMiddleware, fault, layers, spec_version, backend)
    assert_same(stock, ferro)
    bodies = [m for m in stock.sends if m["type"] == "http.response.body"]
    # What "the same" means here, checked on stock itself: the fault struck mid-body.
    assert [m["body"] for m in bodies[:CUT_AFTER]] == CHUNKS[:CUT_AFTER]
    if fault != "app raises":
        assert all(m.get("more_body") for m in bodies), "a cut body must not end as complete"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_no_final_chunk_after_a_cancellation(depth: int, backend: str) -> None:
    """Told directly, not only as "same as stock": cancelled mid-stream, the
    server never gets a final chunk from ferroware."""
    outcome = run_apart(FerrowareBaseHTTPMiddleware, "cancelled", [passthrough] * depth, "2.4", backend)
    bodies = [m for m in outcome.sends if m["type"] == "http.response.body"]
    assert [m["body"] for m in bodies] == CHUNKS[:CUT_AFTER]
    assert all(m["more_body"] for m in bodies)
    assert outcome.events[-1] == "cancelled"
