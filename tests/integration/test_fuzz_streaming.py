"""Property-based: Starlette's ``StreamingResponse`` through the layers while the
connection goes away, in-process, on asyncio and trio.

On servers that speak ASGI spec 2.3 (uvicorn does), ``StreamingResponse`` sends
every chunk from a task of its own while its main task waits for the client to
leave: the case where ferroware takes or forwards sends made from another task
(docs/design.md, "Sends from another task"). ``test_fuzz_messages.py`` sends
from the app's main task only. Here the stream is random (chunks, checkpoints,
an error from the generator), the response may have a background task, the
outermost layer may re-stream the body (``StreamingResponse`` over
``call_next``'s, pulled from a task of its own on 2.3: docs/design.md, "The
body pulled from another task"), and the client may leave at any point, in
the way the server reports it:

- ``raise``: the server's ``send`` raises ``OSError`` from then on (spec 2.4
  says so; some 2.3 servers do too);
- ``drop`` (2.3 only): the server drops later sends silently and ``receive``
  reports ``http.disconnect``, which stops the stream.

Until the client leaves, or the response is complete, the server's ``receive``
waits, as a real one does. Each example runs through ferroware's stack and
through the same stack of stock Starlette layers (``fuzz_stack.build``),
bounded by ``anyio.fail_after``. Then both end with the same exception type (or
none); with none, the server got the same messages, in order, and the app's
background task ran in both or in neither. Nothing is left behind by
ferroware's run: it may not warn (trio warns of an async generator collected
unfinished), and an error in a finalizer, or a task exception never retrieved,
is reported by pytest as an unraisable exception, an error here.
"""

from __future__ import annotations

import gc
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from fuzz_stack import STOCK_BODY_STREAM_LEAK, TIMEOUT, AppError, build, http_scope, raised, run_bounded
from rel_harness import SUMMARY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ferroware

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FERROWARE_FUZZ_EXAMPLES", "600")) // 2

stream_steps = st.lists(
    st.one_of(
        st.tuples(st.just("chunk"), st.binary(max_size=32)),
        st.tuples(st.just("checkpoint")),
        st.tuples(st.just("raise")),
    ),
    max_size=6,
)


@dataclass(frozen=True)
class Client:
    spec: str
    chunks: list[bytes]  # the request body
    leaves_after: int | None  # server sends that get through before the client leaves (None: it stays)
    leaving: str  # how the server reports it: "raise" (OSError from send) or "drop" (2.3 only)


clients = st.builds(
    Client,
    spec=st.sampled_from(["2.3", "2.4"]),
    chunks=st.lists(st.binary(max_size=32), max_size=3),
    leaves_after=st.one_of(st.none(), st.integers(0, 4)),
    leaving=st.sampled_from(["raise", "drop"]),
).map(lambda c: c if c.spec == "2.3" else Client(c.spec, c.chunks, c.leaves_after, "raise"))


@dataclass
class Run:
    sent: list[Message] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


def make_app(steps: list[tuple[Any, ...]], background: bool, run: Run) -> ASGIApp:
    async def chunks() -> Any:
        for step in steps:
            if step[0] == "chunk":
                yield step[1]
            elif step[0] == "checkpoint":
                await anyio.lowlevel.checkpoint()
            else:
                raise AppError("the stream failed")

    async def record() -> None:
        await anyio.lowlevel.checkpoint()
        run.events.append("background")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        task = BackgroundTask(record) if background else None
        await StreamingResponse(chunks(), media_type="text/plain", background=task)(scope, receive, send)

    return app


def drive(
    base: type, steps: list[tuple[Any, ...]], background: bool, client: Client, read: str, restream: bool, backend: str
) -> Run:
    run = Run()
    app = build(base, make_app(steps, background, run), read, restream)
    requests: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(client.chunks) - 1}
        for i, chunk in enumerate(client.chunks or [b""])
    ]

    async def main() -> None:
        # Set when the client is gone or the response is complete: then
        # `receive` reports the disconnect.
        over = anyio.Event()

        async def receive() -> Message:
            await anyio.lowlevel.checkpoint()
            if requests:
                return requests.pop(0)
            await over.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await anyio.lowlevel.checkpoint()
            if client.leaves_after is not None and len(run.sent) >= client.leaves_after:
                over.set()
                if client.leaving == "raise":
                    raise OSError("client gone")
                return
            run.sent.append(dict(message))
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                over.set()

        with anyio.fail_after(TIMEOUT):
            await app(http_scope(client.spec), receive, send)

    # Warnings are kept per stack: stock Starlette's runs have some of their
    # own (below). Anything left suspended is finalized by the collection, in
    # here: trio warns of an async generator left unfinished then.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.error = run_bounded(main, backend, f"{base.__module__} stack, {steps} {client},")
        gc.collect()
    run.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
    return run


APP_STREAM_UNFINISHED = "Async generator 'test_fuzz_streaming.make_app.<locals>.chunks' was garbage collected"
STATS: dict[str, int] = {"examples": 0, "complete": 0, "client-left": 0, "app-error": 0}


@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=stream_steps,
    background=st.booleans(),
    client=clients,
    read=st.sampled_from(["none", "body", "stream"]),
    restream=st.booleans(),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_streaming_response_while_the_client_leaves(
    steps: list[tuple[Any, ...]], background: bool, client: Client, read: str, restream: bool, backend: str
) -> None:
    ferro = drive(ferroware.BaseHTTPMiddleware, steps, background, client, read, restream, backend)
    stock = drive(StockBaseHTTPMiddleware, steps, background, client, read, restream, backend)
    # Starlette's StreamingResponse doesn't close its iterator when its task is
    # cancelled, so trio may warn of the app's stream left unfinished, through
    # either stack; stock's runs may also warn of their own body_stream.
    # Nothing else may be left behind by ferroware's.
    assert not [w for w in ferro.warnings if APP_STREAM_UNFINISHED not in w], ferro.warnings
    STATS["examples"] += 1
    outcome = "app-error" if ("raise",) in steps else "complete" if client.leaves_after is None else "client-left"
    STATS[outcome] += 1
    SUMMARY["fuzz_streaming"] = dict(STATS)
    if outcome == "app-error" and client.leaves_after is not None:
        # The client leaves and the stream fails: which comes first is up to
        # task scheduling, in Starlette itself, and the two stacks schedule
        # their tasks differently. Left silently, the main task's cancelling
        # the stream on the disconnect may stop it before its error (a slower
        # `receive` lets the error through). With the server's `send` raising,
        # stock raises the server's error, or on trio a group of both (the
        # app's error came inside a cancellation its task group didn't drop).
        if client.leaving == "drop":
            assert ferro.error is None or type(ferro.error) is type(stock.error), repr(ferro.error)
        else:
            assert type(ferro.error) is type(stock.error) or raised(stock.error, type(ferro.error)), (
                f"ferroware raised {ferro.error!r}, stock {stock.error!r}"
            )
        return
    assert type(ferro.error) is type(stock.error), f"ferroware raised {ferro.error!r}, stock {stock.error!r}"
    if ferro.error is None:
        assert ferro.sent == stock.sent
        assert ferro.events == stock.events
