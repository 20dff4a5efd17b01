"""The in-process comparison behind ``ferroware bench`` and ``benches/``.

Three implementations of the same middleware, a layer that sets one response
header, stacked 0..N deep in front of the same hello-world app (FastAPI, or
Starlette):

- ``stock``: ``@app.middleware("http")`` on the stock app (Starlette's
  ``BaseHTTPMiddleware`` underneath),
- ``pure``: a hand-written pure-ASGI layer doing the same edit,
- ``ferroware``: ``@app.middleware("http")`` on ferroware's app class.

Requests are batched inside one coroutine (a loop round-trip per request would
swamp the signal) and each gets fresh scope and message dicts, so header edits
never pile up on a shared message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ferroware
from ferroware.base import BaseHTTPMiddleware

IMPLEMENTATIONS = ("stock", "pure", "ferroware")


async def _hello(request: Request) -> Response:
    return PlainTextResponse("Hello, world!")


async def set_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["x-layer"] = "1"
    return response


class PureHeaderMiddleware:
    """The same edit as ``set_header``, written as pure ASGI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-layer"] = "1"
            await send(message)

        await self.app(scope, receive, send_with_header)


FRAMEWORKS = ("fastapi", "starlette")


def build_app(implementation: str, layers: int, framework: str = "fastapi") -> ASGIApp:
    """A hello-world app behind ``layers`` header-setting layers."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    if framework == "fastapi":
        import fastapi  # an optional extra: only needed here

        cls = ferroware.FastAPI if implementation == "ferroware" else fastapi.FastAPI
        app = cls(openapi_url=None, docs_url=None, redoc_url=None)
        app.get("/")(_hello)
    elif framework == "starlette":
        cls = ferroware.Starlette if implementation == "ferroware" else Starlette
        app = cls(routes=[Route("/", _hello)])
    else:
        raise ValueError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    for _ in range(layers):
        if implementation == "pure":
            app.add_middleware(PureHeaderMiddleware)
        elif framework == "fastapi":
            app.middleware("http")(set_header)
        else:  # Starlette 1.x has no decorator: what it expands to
            app.add_middleware(
                BaseHTTPMiddleware if implementation == "ferroware" else StockBaseHTTPMiddleware, dispatch=set_header
            )
    return app


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


def _scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"ferroware-bench")],
        "server": ("bench", 80),
        "client": ("127.0.0.1", 1234),
    }


async def serve_batch(app: ASGIApp, requests: int) -> None:
    """``requests`` GET requests through ``app``, one after another, in this task."""
    for _ in range(requests):
        await app(_scope(), _receive, _discard)


def time_batch(loop: asyncio.AbstractEventLoop, app: ASGIApp, requests: int) -> float:
    """Seconds per request for one batch."""
    start = time.perf_counter()
    loop.run_until_complete(serve_batch(app, requests))
    return (time.perf_counter() - start) / requests


@dataclass(frozen=True)
class Measurement:
    implementation: str
    layers: int
    seconds_per_request: float


def measure(
    implementations: Iterable[str] = IMPLEMENTATIONS,
    layer_counts: Iterable[int] = (0, 10),
    *,
    framework: str = "fastapi",
    requests: int = 500,
    rounds: int = 7,
    on_progress: Callable[[], None] | None = None,
) -> list[Measurement]:
    """Best-of-``rounds`` time per request for each implementation and depth.

    Rounds are interleaved across the cases, so a noisy moment on a shared
    machine hits all of them alike rather than one.
    """
    cases = [(impl, n, build_app(impl, n, framework)) for impl in implementations for n in layer_counts]
    loop = asyncio.new_event_loop()
    try:
        best: dict[tuple[str, int], float] = {}
        for impl, n, app in cases:  # warm-up: builds the stacks, fills caches
            time_batch(loop, app, max(10, requests // 10))
        for _ in range(rounds):
            for impl, n, app in cases:
                # stock is ~100x slower: fewer requests keep its rounds short
                batch = max(20, requests // 20) if impl == "stock" and n else requests
                t = time_batch(loop, app, batch)
                best[(impl, n)] = min(t, best.get((impl, n), t))
                if on_progress is not None:
                    on_progress()
    finally:
        loop.close()
    return [Measurement(impl, n, best[(impl, n)]) for impl, n, _ in cases]


def per_layer_cost(measurements: list[Measurement], implementation: str) -> float:
    """Seconds per layer per request: the least-squares slope over layer counts."""
    points = [(m.layers, m.seconds_per_request) for m in measurements if m.implementation == implementation]
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var
