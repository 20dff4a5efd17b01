"""The ASGI app the integration servers run: ``rel_app:root``.

One process serves the same mixed middleware stack twice, so a test can send
the same request to both and compare what the client gets:

- ``/ferro/...``: ``ferroware.FastAPI``, its ``@app.middleware("http")`` layers
  and a ``ferroware.BaseHTTPMiddleware`` subclass;
- ``/stock/...``: ``fastapi.FastAPI`` with Starlette's ``BaseHTTPMiddleware``;
- ``/l10/...``: ``ferroware.FastAPI`` with ten decorator layers (the soak);
- ``/bare/...``: the same endpoints with no user middleware (the server's own behaviour);
- ``/debug``: the process's own figures (pid, RSS and peak RSS from
  ``/proc/self/status``, live asyncio tasks, gc objects), after a collection.

The mixed stack, outermost first: pure ASGI ``Outer``, decorator ``layer_b``,
pure ASGI ``Counter``, decorator ``layer_a``, decorator ``faults`` (raises or
times out on request), decorator ``restream`` (re-streams the body on
request), decorator ``call_next_from`` (awaits ``call_next`` from another task
or in a cancel scope, on request), the ``Subclass`` layer, decorator ``reader`` (reads the whole body
with ``request.body()`` on ``/upload-read``), pure ASGI ``Inner``, then
FastAPI's router. A re-streamed request's end, and an exception escaping the
app on it, are recorded as events. A request with ``x-cut-after: SECONDS``
runs under an outer timeout that cancels it then (any prefix).

What the endpoints observe (cleanups, disconnects, cancellations), and every
warning or unraisable exception in the process, is appended as one JSON line
to the file named by ``REL_EVENTS``; the tests read it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import random
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import fastapi
import sniffio
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ferroware
from call_next_patterns import PATTERNS

CallNext = Callable[[Request], Awaitable[Response]]
MB = 1 << 20
SOAK_BODY = b"soak-ok " * 64  # 512 bytes, checked byte for byte by the clients
SOAK_LAYERS = 10


# --- deterministic data, shared with the tests -------------------------------------------


def payload_block(index: int, size: int = MB) -> bytes:
    """Block ``index`` of the test payloads: distinct pseudo-random bytes per block."""
    return random.Random(index).randbytes(size)


def payload(total: int, block: int = MB) -> Iterator[bytes]:
    for start in range(0, total, block):
        yield payload_block(start // block, min(block, total - start))


# --- what the process observes -----------------------------------------------------------

_EVENTS = os.environ.get("REL_EVENTS")


def record(**event: Any) -> None:
    """Append one observation to the events file (and echo it on stdout)."""
    event.setdefault("t", time.monotonic())
    event.setdefault("pid", os.getpid())
    line = json.dumps(event, default=repr) + "\n"
    if _EVENTS:
        fd = os.open(_EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    sys.stdout.write("REL " + line)
    sys.stdout.flush()


if _EVENTS:  # only in a server process, not when the tests import this module
    _show = warnings.showwarning

    def _record_warning(message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        record(ev="warning", category=category.__name__, message=str(message), where=f"{filename}:{lineno}")
        _show(message, category, filename, lineno, *args, **kwargs)

    warnings.showwarning = _record_warning
    warnings.simplefilter("always")
    _unraisable = sys.unraisablehook

    def _record_unraisable(info: Any) -> None:
        record(ev="unraisable", exc=f"{info.exc_type.__name__}: {info.exc_value}", obj=repr(info.object))
        _unraisable(info)

    sys.unraisablehook = _record_unraisable


def _proc_status() -> dict[str, int]:
    fields: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024  # kB -> bytes
    return fields


def _live_tasks() -> int:
    library = sniffio.current_async_library()
    if library == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    def count(task: Any) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return count(trio.lowlevel.current_root_task())


# --- layers ------------------------------------------------------------------------------


class Outer:
    """Pure ASGI, outermost: adds a response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-outer", b"1")]
            await send(message)

        await self.app(scope, receive, send_tagged)


class Counter:
    """Pure ASGI pass-through that counts requests (no wrapper of send or receive)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen += 1
        await self.app(scope, receive, send)


class Inner:
    """Pure ASGI, innermost user layer: passes the body through chunk by chunk, counting it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-inner", b"1")]
            await send(message)

        await self.app(scope, counting_receive, send_counted)


def _fault(request: Request) -> str:
    return request.headers.get("x-fault", "")


async def faults(request: Request, call_next: CallNext) -> Response:
    """Decorator layer: raises before or after call_next, or times call_next out, on request."""
    fault = _fault(request)
    tag = request.query_params.get("tag", "")
    if fault == "dispatch-before":
        raise RuntimeError("fault: dispatch before call_next")
    if fault == "timeout-anyio":
        try:
            with anyio.fail_after(0.3):
                return await call_next(request)
        except TimeoutError:
            record(ev="timeout", how="anyio", tag=tag)
            return PlainTextResponse("call_next timed out", status_code=504)
    if fault == "timeout-asyncio":
        try:
            async with asyncio.timeout(0.3):
                return await call_next(request)
        except TimeoutError:
            record(ev="timeout", how="asyncio", tag=tag)
            return PlainTextResponse("call_next timed out", status_code=504)
    response = await call_next(request)
    if fault == "dispatch-after":
        raise RuntimeError("fault: dispatch after call_next")
    return response


async def call_next_from(request: Request, call_next: CallNext) -> Response:
    """Decorator layer: on ``x-call-next: PATTERN``, awaits call_next that way
    (timeout and fan-out middleware do); else directly."""
    pattern = PATTERNS.get(request.headers.get("x-call-next", ""))
    if pattern is None:
        return await call_next(request)
    response = await pattern(call_next, request)
    response.headers["x-call-next"] = request.headers["x-call-next"]
    return response


def make_subclass(base: type) -> type:
    class Subclass(base):  # type: ignore[misc, valid-type]
        """A BaseHTTPMiddleware subclass: echoes the request id, edits a header."""

        async def dispatch(self, request: Request, call_next: CallNext) -> Response:
            response = await call_next(request)
            response.headers["x-subclass"] = request.headers.get("x-request-id", "none")
            return response

    return Subclass


def header_layer(name: str) -> Callable[[Request, CallNext], Awaitable[Response]]:
    async def dispatch(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.headers[f"x-{name}"] = "1"
        return response

    dispatch.__name__ = name
    return dispatch


async def reader(request: Request, call_next: CallNext) -> Response:
    """Reads the whole body in dispatch on /upload-read; downstream must get it replayed."""
    if not request.url.path.endswith("/upload-read"):
        return await call_next(request)
    body = await request.body()
    digest = hashlib.sha256(body).hexdigest()
    del body
    response = await call_next(request)
    response.headers["x-dispatch-sha256"] = digest
    return response


async def restream(request: Request, call_next: CallNext) -> Response:
    """Answers ``StreamingResponse`` over call_next's body on ``x-restream: 1``
    (on ASGI 2.3 servers that response pulls the body from a task of its
    own), or ``FromChildren`` on ``x-restream: children``."""
    response = await call_next(request)
    how = request.headers.get("x-restream")
    if how == "children":
        return FromChildren(response)  # type: ignore[return-value]
    if how != "1":
        return response

    async def relayed() -> AsyncIterator[bytes]:
        async for chunk in response.body_iterator:  # type: ignore[attr-defined]
            yield chunk

    return StreamingResponse(relayed(), status_code=response.status_code, headers=dict(response.headers))


class FromChildren:
    """Streams a response's body from one child task and waits for the
    disconnect in another, its own task only waiting for them to end (as
    sse-starlette's ``EventSourceResponse`` does): its task never waits in the
    ``receive`` it was given."""

    def __init__(self, response: Response) -> None:
        self.response = response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.response
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
                await send(start)
                async for chunk in response.body_iterator:  # type: ignore[attr-defined]
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()

            async def listen() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(stream)
            group.start_soon(listen)


# --- endpoints ---------------------------------------------------------------------------


def add_routes(app: fastapi.FastAPI, kind: str) -> None:
    @app.get("/hello")
    async def hello() -> PlainTextResponse:
        return PlainTextResponse("hello")

    @app.get("/stream")
    async def stream(n: int = 5, interval: float = 0.1) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for i in range(n):
                await anyio.sleep(interval)
                yield f"data: {i} {time.time():.6f}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/sse-forever")
    async def sse_forever(request: Request, tag: str, limit: int = 400) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            produced = 0
            record(ev="stream-start", tag=tag, kind=kind)
            try:
                for _ in range(min(limit, 400)):  # 20 s at most, whatever happens
                    if await request.is_disconnected():
                        record(ev="saw-disconnect", tag=tag, kind=kind, produced=produced)
                        return
                    produced += 1
                    record(ev="produced", tag=tag, kind=kind, n=produced)
                    yield f"data: {produced}\n\n".encode()
                    await anyio.sleep(0.05)
                record(ev="ran-out", tag=tag, kind=kind, produced=produced)
            finally:
                record(ev="cleanup", tag=tag, kind=kind, produced=produced)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/wait-disconnect")
    async def wait_disconnect(request: Request, tag: str, polls: int = 100) -> PlainTextResponse:
        record(ev="wait-start", tag=tag, kind=kind)
        try:
            for _ in range(min(polls, 100)):  # 5 s at most
                if await request.is_disconnected():
                    record(ev="saw-disconnect", tag=tag, kind=kind)
                    return PlainTextResponse("gone")
                await anyio.sleep(0.05)
            record(ev="no-disconnect", tag=tag, kind=kind)
            return PlainTextResponse("still here")
        finally:
            record(ev="cleanup", tag=tag, kind=kind)

    @app.post("/upload")
    @app.post("/upload-read")
    async def upload(request: Request) -> JSONResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse({"size": size, "sha256": digest.hexdigest()})

    @app.get("/download")
    async def download(size: int) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for block in payload(size):
                yield block

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/slow")
    async def slow(tag: str, secs: float = 1.0) -> PlainTextResponse:
        record(ev="slow-start", tag=tag, kind=kind)
        try:
            await anyio.sleep(secs)
        except BaseException as exc:
            record(ev="slow-interrupted", tag=tag, kind=kind, exc=type(exc).__name__)
            raise
        finally:
            record(ev="cleanup", tag=tag, kind=kind)
        record(ev="slow-done", tag=tag, kind=kind)
        return PlainTextResponse("slow done")

    @app.get("/fault/endpoint-before")
    async def endpoint_before() -> Response:
        raise RuntimeError("fault: endpoint before the response starts")

    @app.get("/fault/endpoint-after")
    async def endpoint_after(tag: str = "") -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first chunk;"
            await anyio.sleep(0.05)
            raise RuntimeError("fault: endpoint after the response started")

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/file")
    async def file() -> FileResponse:
        return FileResponse(__file__, media_type="text/plain")

    @app.get("/background")
    async def background_ok(tag: str) -> PlainTextResponse:
        return PlainTextResponse("background scheduled", background=BackgroundTask(record, ev="background-ran", tag=tag))

    @app.get("/fault/background")
    async def background(tag: str) -> PlainTextResponse:
        def fail() -> None:
            record(ev="background-ran", tag=tag, kind=kind)
            raise RuntimeError("fault: background task")

        return PlainTextResponse("background scheduled", background=BackgroundTask(fail))


def build(kind: str) -> fastapi.FastAPI:
    """The mixed stack on ferroware (``kind="ferro"``) or on stock Starlette (``"stock"``)."""
    if kind == "ferro":
        app: fastapi.FastAPI = ferroware.FastAPI()
        base: type = ferroware.BaseHTTPMiddleware
    else:
        app = fastapi.FastAPI()
        base = StockBaseHTTPMiddleware
    add_routes(app, kind)
    # Added innermost first: the last one added is the outermost.
    app.add_middleware(Inner)
    app.middleware("http")(reader)
    app.add_middleware(make_subclass(base))
    app.middleware("http")(call_next_from)
    app.middleware("http")(restream)
    app.middleware("http")(faults)
    app.middleware("http")(header_layer("layer-a"))
    app.add_middleware(Counter)
    app.middleware("http")(header_layer("layer-b"))
    app.add_middleware(Outer)
    return app


def build_soak() -> fastapi.FastAPI:
    app = ferroware.FastAPI()

    @app.get("/soak")
    async def soak() -> Response:
        return Response(SOAK_BODY, media_type="text/plain")

    for i in range(SOAK_LAYERS):
        app.middleware("http")(header_layer(f"l{i}"))
    return app


FERRO = build("ferro")
STOCK = build("stock")
SOAK = build_soak()
BARE = fastapi.FastAPI()  # the same endpoints with no user middleware: what the server itself gives
add_routes(BARE, "bare")
PREFIXES: dict[str, ASGIApp] = {"/ferro": FERRO, "/stock": STOCK, "/l10": SOAK, "/bare": BARE}


async def debug(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] == "POST":  # reset the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    gc.collect()
    body = json.dumps(
        {
            "pid": os.getpid(),
            **_proc_status(),
            "tasks": _live_tasks(),
            "gc_objects": len(gc.get_objects()),
            "async_library": sniffio.current_async_library(),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def root(scope: Scope, receive: Receive, send: Send) -> None:
    """Route by prefix (pure ASGI); answers the lifespan itself."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path: str = scope["path"]
    if path == "/debug":
        await debug(scope, receive, send)
        return
    for name, value in scope["headers"]:
        if name == b"x-cut-after":  # an outer timeout: cancels the app, whatever it is doing
            with anyio.move_on_after(float(value)):
                await root({**scope, "headers": [h for h in scope["headers"] if h[0] != name]}, receive, send)
            return
    for prefix, app in PREFIXES.items():
        if path.startswith(prefix + "/"):
            if not any(name == b"x-restream" for name, _ in scope["headers"]):
                await app({**scope, "path": path[len(prefix) :]}, receive, send)
                return
            tag = Request(scope).query_params.get("tag", "")
            try:
                await app({**scope, "path": path[len(prefix) :]}, receive, send)
            except BaseException as exc:
                record(ev="escaped", tag=tag, exc=type(exc).__name__, message=str(exc)[:200])
                raise
            finally:
                record(ev="ended", tag=tag)
            return
    response = PlainTextResponse("no such prefix", status_code=404)
    await response(scope, receive, send)
