"""Property-based: random ASGI message sequences from the downstream app, random
request bodies and disconnects from the client, in-process, on asyncio and trio;
on asyncio the app also sends from a child task while its main task waits on
the task group (trio's limitation there is in README, "Known limitations").

The same example runs through a stack of ferroware layers and through the same
stack of stock Starlette layers. Every run is bounded by ``anyio.fail_after``:
a hang fails the example. Then:

- a valid sequence (one start, bodies, an optional final body; sends after the
  end are discarded by both) reaches the client exactly as through stock
  Starlette (every message, in order), and the app sees the same receives;
- an invalid one (a body before the start, a second start, an unknown type, a
  body that is not bytes, no response at all) makes the app call raise a
  ``RuntimeError`` or ``TypeError`` (stock Starlette fails there too, in its
  own way). Like Starlette, ferroware relays a body that is not bytes as it
  is; the fake server's ``send`` rejects it as a real one does;
- an app error, or the client's disconnect, comes out of ferroware as the same
  exception type as out of stock Starlette.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from fuzz_stack import STOCK_BODY_STREAM_LEAK, TIMEOUT, AppError, build, http_scope, raised, run_bounded
from rel_harness import SUMMARY
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ferroware

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FERROWARE_FUZZ_EXAMPLES", "600"))

# --- the downstream app's script ---------------------------------------------------------

header = st.tuples(st.sampled_from([b"x-a", b"x-b", b"content-type", b"set-cookie"]), st.binary(max_size=8).map(
    lambda v: v.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")))  # fmt: skip
action = st.one_of(
    st.tuples(st.just("start"), st.sampled_from([200, 201, 204, 404, 500]), st.lists(header, max_size=3)),
    st.tuples(st.just("body"), st.binary(max_size=64), st.booleans()),
    st.tuples(st.just("body-default")),  # {"type": "http.response.body"}: empty, final
    st.tuples(st.just("receive")),
    st.tuples(st.just("checkpoint")),
    st.tuples(st.just("raise")),
    # invalid messages
    st.tuples(st.just("bogus-type")),
    st.tuples(st.just("str-body")),
    st.tuples(st.just("no-type")),
)


def message_for(step: tuple[Any, ...]) -> Message | None:
    kind = step[0]
    if kind == "start":
        return {"type": "http.response.start", "status": step[1], "headers": list(step[2])}
    if kind == "body":
        return {"type": "http.response.body", "body": step[1], "more_body": step[2]}
    if kind == "body-default":
        return {"type": "http.response.body"}
    if kind == "bogus-type":
        return {"type": "http.response.bogus"}
    if kind == "str-body":
        return {"type": "http.response.body", "body": "text", "more_body": False}
    if kind == "no-type":
        return {"status": 200}
    return None


def expected_outcome(script: list[tuple[Any, ...]]) -> str:
    """'valid', 'invalid' (a protocol error) or 'app-error', from the app's side alone."""
    state = "before"
    for step in script:
        kind = step[0]
        if kind == "raise":
            return "app-error"
        message = message_for(step)
        if message is None or state == "done":  # sends after the end are discarded
            continue
        if kind in ("bogus-type", "str-body", "no-type"):
            return "invalid"
        if kind == "start":
            if state != "before":
                return "invalid"
            state = "streaming"
        elif state == "before":  # a body before the start
            return "invalid"
        elif not message.get("more_body", False):
            state = "done"
    return "invalid" if state == "before" else "valid"


@dataclass
class Run:
    sent: list[Message] = field(default_factory=list)
    app_received: list[Message] = field(default_factory=list)
    error: BaseException | None = None


def make_app(script: list[tuple[Any, ...]], run: Run, from_task: bool) -> ASGIApp:
    """The app that plays ``script``: in its own task, or (``from_task``) in a
    child task of a task group its main task waits on, as apps that stream from
    a task of their own do (``sse-starlette``)."""

    async def play(receive: Receive, send: Send) -> None:
        for step in script:
            kind = step[0]
            if kind == "receive":
                run.app_received.append(dict(await receive()))
            elif kind == "checkpoint":
                await anyio.lowlevel.checkpoint()
            elif kind == "raise":
                raise AppError("downstream app error")
            else:
                message = message_for(step)
                assert message is not None
                await send(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if not from_task:
            await play(receive, send)
            return
        async with anyio.create_task_group() as group:
            group.start_soon(play, receive, send)

    return app


@dataclass(frozen=True)
class Client:
    chunks: list[bytes]
    disconnect_after: int | None  # client messages before it leaves mid-body (None: after the body)
    send_fails_after: int | None  # server sends before the connection is gone (spec 2.4: OSError)


def drive(
    base: type, script: list[tuple[Any, ...]], client: Client, read: str, backend: str, from_task: bool = False
) -> Run:
    run = Run()
    app = build(base, make_app(script, run, from_task), read)
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(client.chunks) - 1}
        for i, chunk in enumerate(client.chunks or [b""])
    ]
    if client.disconnect_after is not None:
        messages = messages[: client.disconnect_after]

    async def receive() -> Message:
        await anyio.lowlevel.checkpoint()
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await anyio.lowlevel.checkpoint()
        if client.send_fails_after is not None and len(run.sent) >= client.send_fails_after:
            raise OSError("client gone")
        # As strict as a real server (uvicorn raises these too): a message that
        # reached it unchanged through both stacks is rejected here.
        if message.get("type") not in ("http.response.start", "http.response.body"):
            raise RuntimeError(f"server: unexpected ASGI message {message.get('type')!r}")
        if not isinstance(message.get("body", b""), bytes):
            raise TypeError("server: the body must be bytes")
        run.sent.append(dict(message))

    async def main() -> None:
        with anyio.fail_after(TIMEOUT):
            await app(http_scope("2.4" if client.send_fails_after is not None else "2.3"), receive, send)

    run.error = run_bounded(main, backend, f"{base.__module__} stack, {script} {client},")
    return run


filler = st.lists(st.sampled_from([("receive",), ("checkpoint",)]), max_size=2)


@st.composite
def valid_scripts(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """A start, bodies, a final body (or none), sends after it, with receives and checkpoints between."""
    script = [*draw(filler), draw(action.filter(lambda step: step[0] == "start"))]
    for chunk in draw(st.lists(st.binary(max_size=64), max_size=4)):
        script += [*draw(filler), ("body", chunk, True)]
    ending = draw(st.sampled_from(["final", "default", "open"]))
    if ending == "final":
        script.append(("body", draw(st.binary(max_size=16)), False))
    elif ending == "default":
        script.append(("body-default",))
    return script + draw(st.lists(action, max_size=2))  # after the end: discarded, or an app error


clients = st.builds(
    Client,
    chunks=st.lists(st.binary(max_size=32), max_size=3),
    disconnect_after=st.one_of(st.none(), st.integers(0, 2)),
    send_fails_after=st.one_of(st.none(), st.integers(0, 3)),
)
STATS: dict[str, int] = {"examples": 0, "valid": 0, "invalid": 0, "app-error": 0}


@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.one_of(st.lists(action, max_size=8), valid_scripts()),
    client=clients,
    read=st.sampled_from(["none", "body", "stream"]),
    backend=st.sampled_from(["asyncio", "trio"]),
    from_task=st.booleans(),
)
def test_random_message_sequences(
    script: list[tuple[Any, ...]], client: Client, read: str, backend: str, from_task: bool
) -> None:
    # On trio, a send from a child task is taken only while the app's main task
    # waits in `receive` (README, "Known limitations"); here it waits on the group.
    assume(backend == "asyncio" or not from_task)
    expected = expected_outcome(script)
    ferro = drive(ferroware.BaseHTTPMiddleware, script, client, read, backend, from_task)
    stock = drive(StockBaseHTTPMiddleware, script, client, read, backend, from_task)
    STATS["examples"] += 1
    STATS[expected] += 1
    SUMMARY["fuzz"] = dict(STATS)
    if expected == "invalid":
        # A clear error, whatever stock Starlette does (an assert, a KeyError, ...),
        # unless the request ended earlier the same way for both (the client left).
        # (Stock may wrap that error in its task group's ExceptionGroup, with its
        # own assertion about the invalid message beside it: the client's error
        # came first, as ferroware reports it.)
        if isinstance(ferro.error, (OSError, ClientDisconnect)) and raised(stock.error, type(ferro.error)):
            return
        # (From a task, the error comes inside the app's task group's group.)
        assert raised(ferro.error, RuntimeError) or raised(ferro.error, TypeError), (
            f"invalid sequence: ferroware raised {ferro.error!r} (stock: {stock.error!r})"
        )
        return
    # Valid sequences, app errors and disconnects: as stock Starlette.
    assert type(ferro.error) is type(stock.error), f"ferroware raised {ferro.error!r}, stock {stock.error!r}"
    if ferro.error is None:
        assert ferro.sent == stock.sent
        assert ferro.app_received == stock.app_received
