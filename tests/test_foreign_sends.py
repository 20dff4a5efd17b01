"""Apps that send from a task of their own while their main task waits
somewhere else than in ``receive`` (``sse-starlette``'s ``EventSourceResponse``
does this: its main task joins a task group in which a child streams)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import helpers
import pytest
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
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


def spec_scope(spec_version: str) -> Scope:
    """A GET / scope from a server speaking ASGI spec ``spec_version``."""
    return helpers.http_scope(asgi={"version": "3.0", "spec_version": spec_version})


async def add_header(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    response.headers["x-layer"] = "1"
    return response


async def _serve(middleware_cls: type, layers: int) -> list[Message]:
    app = streams_from_a_child
    for _ in range(layers):
        app = middleware_cls(app, dispatch=add_header)
    return await _serve_app(app)


async def _serve_app(app: Any) -> list[Message]:
    """One request on ASGI spec 2.3; the disconnect comes once the response is complete."""
    sent: list[Message] = []
    done = anyio.Event()

    async def receive() -> Message:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    scope = spec_scope("2.3")
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


async def own_streaming_response(request: Request, call_next: CallNext) -> Response:
    """Runs the app, then answers with a response of its own that streams from a
    task (Starlette's ``StreamingResponse`` does on ASGI spec < 2.4) into the
    layer above."""
    await call_next(request)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            await anyio.sleep(0.001)
            yield f"own {i};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ignored"})


@pytest.mark.parametrize("outer_layers", [1, 3])
@pytest.mark.anyio
async def test_inner_layer_streams_its_own_response_from_a_task(outer_layers: int) -> None:
    """The layers above an inner one that sends its own response from another
    task must still be woken by those sends (only a layer relaying call_next's
    response can't receive one)."""

    async def serve(middleware_cls: type) -> list[Message]:
        app: Any = middleware_cls(plain_app, dispatch=own_streaming_response)
        for _ in range(outer_layers):
            app = middleware_cls(app, dispatch=add_header)
        return await _serve_app(app)

    stock = await serve(StockBaseHTTPMiddleware)
    ours = await serve(BaseHTTPMiddleware)
    assert ours == stock
    assert [m.get("body") for m in ours[1:]] == [b"own 0;", b"own 1;", b"own 2;", b""]


@pytest.mark.anyio
async def test_a_parked_sender_cancelled_while_waiting_leaves_the_handoff_usable() -> None:
    """A sender waits on its flag (a bare future on asyncio) until the
    dispatcher takes its message; if the sender is cancelled first, setting the
    flag later (the dispatcher releasing it, or the response ending) is a no-op,
    not an error in the dispatcher's task."""
    from ferroware._handoff import Handoff

    class FakeChannel:
        handoff: Any = None

        def wake(self) -> bool:
            return True

    channel = FakeChannel()
    handoff = Handoff.of(channel)  # type: ignore[arg-type]
    message: Message = {"type": "http.response.body", "body": b"x", "more_body": True}
    with anyio.move_on_after(0.01) as scope:
        await handoff.send(channel, message)  # type: ignore[arg-type]
    assert scope.cancelled_caught
    assert handoff.take() == message  # still parked; the dispatcher takes it
    handoff.release(None)  # its sender is gone: nothing to wake, nothing raised
    handoff.close()

    async def sender() -> None:
        await handoff.send(channel, message)  # type: ignore[arg-type]

    handoff = Handoff.of(FakeChannel())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        await anyio.sleep(0.01)
        assert handoff.take() == message
        handoff.release(None)  # wakes the sender, which then returns


async def pass_through(request: Request, call_next: CallNext) -> Response:
    return await call_next(request)


async def restream(request: Request, call_next: CallNext) -> Response:
    """Reads the body itself, so the layer doesn't relay: every chunk is taken
    by the middleware's task."""
    response = await call_next(request)
    return StreamingResponse(response.body_iterator)


@pytest.mark.parametrize("dispatch", [pass_through, restream])
@pytest.mark.anyio
async def test_a_long_stream_from_a_task_piles_nothing_up_per_chunk(anyio_backend: str, dispatch: Any) -> None:
    """Starlette's ``StreamingResponse`` on ASGI 2.3 sends every chunk from a
    task while its main task waits in ``receive``. On asyncio the dispatcher
    waits on a proxy of that wait, a new one after each chunk taken in its own
    task; the proxies must not each leave a callback on the future the app
    waits on (they would pile up for as long as the stream lasts)."""
    chunks = 300

    async def numbers() -> AsyncIterator[bytes]:
        for i in range(chunks):
            yield b"%d;" % i

    app = BaseHTTPMiddleware(StreamingResponse(numbers()), dispatch=dispatch)
    sent: list[Message] = []
    callbacks_at_end: list[int] = []
    waiting: asyncio.Future[None] | None = None
    done = anyio.Event()

    async def receive() -> Message:
        nonlocal waiting
        if anyio_backend == "asyncio":
            waiting = asyncio.get_running_loop().create_future()
            await waiting
        else:
            await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            if waiting is not None:
                callbacks_at_end.append(len(waiting._callbacks or ()))  # type: ignore[attr-defined]
                waiting.set_result(None)
            done.set()

    scope = spec_scope("2.3")
    with anyio.fail_after(10):
        await app(scope, receive, send)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"".join(b"%d;" % i for i in range(chunks))
    assert len(sent) == chunks + 2  # start, a message per chunk, the empty final one
    if anyio_backend == "asyncio":
        assert callbacks_at_end and callbacks_at_end[0] <= 2


async def _serve_recording_tasks(app: Any) -> list[tuple[Message, bool]]:
    """One request on ASGI spec 2.3 (asyncio): each message the server got, and
    whether the request's own task sent it."""
    sent: list[tuple[Message, bool]] = []
    done = asyncio.Event()
    request_task = asyncio.current_task()

    async def receive() -> Message:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append((message, asyncio.current_task() is request_task))
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    scope = spec_scope("2.3")
    async with asyncio.timeout(2):
        await app(scope, receive, send)
    return sent


class PureHeader:
    """A hand-written pure-ASGI layer that adds a header, between dispatch layers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-pure", b"1")]
            await send(message)

        await self.app(scope, receive, send_with_header)


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.parametrize("stack", ["dispatch", "dispatch x3", "dispatch, pure, dispatch x2"])
@pytest.mark.anyio
async def test_chunks_sent_from_a_task_go_to_the_server_from_that_task(stack: str) -> None:
    """While every layer just relays the response, a chunk that Starlette's
    ``StreamingResponse`` sends from its task (ASGI 2.3) goes to the server from
    that task, as through pure-ASGI middleware, instead of being handed to the
    middleware's task and back (through a pure-ASGI layer in between too: it
    hands the chunk to the run of layers above it, which forwards it again);
    the server gets Starlette's exact messages."""

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk {i};".encode()

    def build(middleware_cls: type) -> Any:
        app: Any = StreamingResponse(chunks(), media_type="text/plain")
        # Innermost first.
        for kind in {"dispatch": ["d"], "dispatch x3": ["d"] * 3, "dispatch, pure, dispatch x2": ["d", "p", "d", "d"]}[stack]:
            app = middleware_cls(app, dispatch=add_header) if kind == "d" else PureHeader(app)
        return app

    stock = [message for message, _ in await _serve_recording_tasks(build(StockBaseHTTPMiddleware))]
    ours = await _serve_recording_tasks(build(BaseHTTPMiddleware))
    assert [message for message, _ in ours] == stock
    assert [(m.get("body"), by_request_task) for m, by_request_task in ours[1:]] == [
        (b"chunk 0;", False),
        (b"chunk 1;", False),
        (b"chunk 2;", False),
        (b"", True),  # the end of the body goes through the layers, in the request's task
    ]


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.anyio
async def test_a_send_made_while_a_chunk_is_on_its_way_from_another_task_waits_for_it(layers: int) -> None:
    """The app's main task sends while a chunk from its child task is still in
    the server's ``send`` (held up, as under backpressure): the server must
    never get two sends at once, and gets them in the order they were made."""
    in_flight = 0
    most_in_flight = 0

    async def slow_send_to(send: Send, message: Message) -> None:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            if message.get("body") == b"from the child":
                await asyncio.sleep(0.02)
            await send(message)
        finally:
            in_flight -= 1

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def child() -> None:
            await send({"type": "http.response.body", "body": b"from the child", "more_body": True})

        task = asyncio.get_running_loop().create_task(child())
        await asyncio.sleep(0.005)  # wakes while the child's chunk is held up in the server
        await send({"type": "http.response.body", "body": b"from the main task", "more_body": True})
        await task
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    ours: Any = app
    for _ in range(layers):
        ours = BaseHTTPMiddleware(ours, dispatch=add_header)

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        await ours(scope, receive, lambda message: slow_send_to(send, message))

    sent = [message for message, _ in await _serve_recording_tasks(server)]
    assert most_in_flight == 1
    assert [m.get("body") for m in sent[1:]] == [b"from the child", b"from the main task", b""]


async def _streaming_through(middleware_cls: type, layers: int, send: Send, *, routed: bool = False) -> None:
    """A 5-chunk ``StreamingResponse`` behind ``layers`` header layers, on ASGI
    2.3, to a client that stays (the app's main task waits in ``receive``).
    ``routed``: the response is called from an endpoint coroutine, as routing
    does, instead of being the app itself."""

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield b"c%d" % i

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await StreamingResponse(chunks())(scope, receive, send)

    app: Any = endpoint if routed else StreamingResponse(chunks())
    for _ in range(layers):
        app = middleware_cls(app, dispatch=add_header)

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    scope = spec_scope("2.3")
    with anyio.fail_after(2):
        await app(scope, receive, send)


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.anyio
async def test_a_server_send_failing_for_a_chunk_from_another_task_fails_the_response_as_in_starlette(
    layers: int,
) -> None:
    """The server's ``send`` raises for a chunk that went there from the app's
    task: the error comes out of the middleware as with Starlette, and nothing
    more is sent (an end of the body after it would let a server close a body
    missing that chunk as if it were whole)."""

    async def serve(middleware_cls: type) -> tuple[BaseException, list[Any]]:
        bodies: list[Any] = []

        async def send(message: Message) -> None:
            bodies.append(message.get("body"))
            if message.get("body") == b"c2":
                raise OSError("connection reset")

        with pytest.raises(OSError) as caught:
            await _streaming_through(middleware_cls, layers, send)
        return caught.value, bodies

    stock_error, stock_bodies = await serve(StockBaseHTTPMiddleware)
    error, bodies = await serve(BaseHTTPMiddleware)
    assert bodies == stock_bodies == [None, b"c0", b"c1", b"c2"]
    assert str(error) == str(stock_error) == "connection reset"


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.anyio
async def test_a_chunk_from_another_task_cancelled_in_the_server_fails_the_response(layers: int) -> None:
    """The app cancels its sending task while that task's chunk is still in the
    server's ``send`` (held up, as under backpressure): the chunk may not have
    gone out, so the layers must not end the body as if it had. The middleware
    fails with an error that says so, and nothing more is sent."""
    bodies: list[Any] = []
    held_up = asyncio.Event()

    async def send(message: Message) -> None:
        bodies.append(message.get("body"))
        if message.get("body") == b"held up":
            held_up.set()
            await asyncio.sleep(10)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def child() -> None:
            await send({"type": "http.response.body", "body": b"held up", "more_body": True})

        task = asyncio.get_running_loop().create_task(child())
        await held_up.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    ours: Any = app
    for _ in range(layers):
        ours = BaseHTTPMiddleware(ours, dispatch=add_header)
    scope = spec_scope("2.3")

    async def receive() -> Message:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    with pytest.raises(RuntimeError, match="interrupted on its way to the server") as caught:
        async with asyncio.timeout(2):
            await ours(scope, receive, send)
    assert "the response can't be completed" in str(caught.value)
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)
    assert bodies == [None, b"held up"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.anyio
async def test_a_client_leaving_while_a_chunk_from_another_task_is_in_the_server_ends_as_in_starlette(
    layers: int,
) -> None:
    """The client leaves while a chunk forwarded from ``StreamingResponse``'s
    task waits in the server's ``send`` (a slow client, under backpressure):
    ``receive`` reports the disconnect, and the response cancels its sending
    task, as it should. The body ends as through Starlette, with no error
    (the chunk's send being interrupted only fails a response whose client is
    still there, see the test above)."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"c0"
        yield b"held up"
        yield b"never sent"

    async def serve(middleware_cls: type) -> list[Any]:
        bodies: list[Any] = []
        client_left = asyncio.Event()

        async def send(message: Message) -> None:
            if client_left.is_set():
                return  # as uvicorn on spec 2.3: sends after a disconnect are dropped
            bodies.append(message.get("body"))
            if message.get("body") == b"held up":
                client_left.set()
                await asyncio.sleep(0.05)  # until the server sees the connection lost

        async def receive() -> Message:
            await client_left.wait()
            return {"type": "http.disconnect"}

        app: Any = StreamingResponse(chunks())
        for _ in range(layers):
            app = middleware_cls(app, dispatch=add_header)
        scope = spec_scope("2.3")
        async with asyncio.timeout(2):
            await app(scope, receive, send)
        return bodies

    assert await serve(BaseHTTPMiddleware) == await serve(StockBaseHTTPMiddleware) == [None, b"c0", b"held up"]


@pytest.mark.parametrize("routed", [False, True], ids=["response-app", "routed"])
@pytest.mark.parametrize("failing", ["http.response.start", "the last chunk"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.anyio
async def test_a_server_send_failing_while_the_app_streams_from_a_task_fails_the_response_as_in_starlette(
    layers: int, failing: str, routed: bool
) -> None:
    """The server's ``send`` raises for a message the layers send themselves
    (the start, the end of the body) while the app's main task waits in
    ``receive`` and a child streams: the error comes out of the middleware as
    with Starlette, and unwinding the app leaves nothing behind (a request
    stream that could never be closed used to, with a ``RuntimeError`` in
    place of the server's error). Routed, the response's task group exits in a
    coroutine the app awaits: unwinding by ``GeneratorExit`` closed it there,
    so its exit couldn't wait for the stream's task (``RuntimeError: coroutine
    ignored GeneratorExit``, a task group left open)."""

    async def serve(middleware_cls: type) -> tuple[BaseException, list[Any]]:
        bodies: list[Any] = []

        async def send(message: Message) -> None:
            bodies.append(message.get("body"))
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            if message["type"] == failing or (last and failing == "the last chunk"):
                raise OSError("connection reset")

        with pytest.raises(OSError) as caught:
            await _streaming_through(middleware_cls, layers, send, routed=routed)
        return caught.value, bodies

    stock_error, stock_bodies = await serve(StockBaseHTTPMiddleware)
    with warnings.catch_warnings():
        # Starlette's own relay leaves its body generator unfinished here (on trio).
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    error, bodies = await serve(BaseHTTPMiddleware)
    with warnings.catch_warnings():
        # StreamingResponse doesn't close its iterator when its sending task is
        # cancelled (through either stack, on trio): only that may be reported.
        # Ours must leave nothing else to finalize: a complaint now fails the test.
        warnings.filterwarnings("ignore", "Async generator '.*_streaming_through.<locals>.chunks'", ResourceWarning)
        gc.collect()
    assert bodies == stock_bodies
    assert str(error) == str(stock_error) == "connection reset"


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.anyio
async def test_a_send_from_another_task_never_awaited_leaves_nothing_open() -> None:
    """An app bug: a child task calls ``send`` for a chunk and drops the
    awaitable. Nothing may be left in flight by it (a forward begun at the call
    would hold every later send of the layers back for good): the chunk is
    simply not sent, as a coroutine never awaited isn't, and the rest goes out."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def child() -> None:
            send({"type": "http.response.body", "body": b"dropped", "more_body": True})  # never awaited

        task = asyncio.get_running_loop().create_task(child())
        await asyncio.sleep(0.005)  # the child runs while the layers wait for the next chunk
        await task
        await send({"type": "http.response.body", "body": b"after", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = [message for message, _ in await _serve_recording_tasks(BaseHTTPMiddleware(app, dispatch=add_header))]
    assert [m.get("body") for m in sent[1:]] == [b"after", b""]


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.anyio
async def test_an_app_waking_from_a_wait_takes_as_many_loop_passes_behind_ten_layers_as_behind_one() -> None:
    """While the layers wait for the response, the task waits on a proxy of the
    app's future (so that a send from another task can wake it), each layer's
    standing in for the one below. A wake-up must cross them all at once: it
    used to take one more pass of the event loop per layer, for every I/O wait
    of an endpoint. Counted by a task that ticks once per pass."""
    loop = asyncio.get_running_loop()

    async def passes_to_wake(layers: int) -> int:
        ticks = 0
        ticking = True
        woke_after: list[int] = []

        async def ticker() -> None:
            nonlocal ticks
            while ticking:
                ticks += 1
                await asyncio.sleep(0)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            waited: asyncio.Future[None] = loop.create_future()
            loop.call_soon(waited.set_result, None)  # done in the next pass, as I/O would be
            before = ticks
            await waited
            woke_after.append(ticks - before)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})

        stack: Any = app
        for _ in range(layers):
            stack = BaseHTTPMiddleware(stack, dispatch=add_header)

        async def receive() -> Message:
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            pass

        ticking_task = loop.create_task(ticker())
        await asyncio.sleep(0)
        scope = spec_scope("2.4")
        await stack(scope, receive, send)
        ticking = False
        await ticking_task
        return woke_after[0]

    bare, one, ten = await passes_to_wake(0), await passes_to_wake(1), await passes_to_wake(10)
    assert ten == one <= bare + 1, (bare, one, ten)
