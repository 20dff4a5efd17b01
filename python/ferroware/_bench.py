"""The in-process comparison behind ``ferroware bench`` and ``benches/``.

Three implementations of the same middleware stack, 0..N layers deep in front
of the same app (FastAPI by default, or Starlette):

- ``stock``: ``@app.middleware("http")`` (or a ``BaseHTTPMiddleware`` subclass)
  on the stock app, Starlette's ``BaseHTTPMiddleware`` underneath,
- ``pure``: hand-written pure-ASGI layers doing the same work,
- ``ferroware``: the same decorators (or ferroware's ``BaseHTTPMiddleware``
  subclass) on ferroware's app class.

Five cases (``CASES``), each with one builder (``build_app``) and one request
factory (``Exchange``) shared by the CLI and the pytest-benchmark suite:

- ``header``: a decorator layer that sets one response header (GET),
- ``body``: a decorator layer that reads a 1 KiB request body before
  ``call_next`` (POST; the endpoint echoes the body's length),
- ``stream``: header-setting decorator layers over a streaming response of
  50 chunks,
- ``subclass``: a ``BaseHTTPMiddleware`` subclass setting a header (Starlette's
  class for stock, ferroware's for ferroware),
- ``mixed``: a realistic stack, repeated: ``CORSMiddleware`` and
  ``GZipMiddleware`` (Starlette's for stock and pure, ferroware's compiled
  ones for ferroware), a request-id layer that reads and sets
  ``x-request-id`` (a decorator layer for stock, pure ASGI for pure,
  ferroware's compiled ``RequestIDMiddleware`` for ferroware), and two
  header-setting decorator layers. Layer
  ``i`` (outermost first) is ``MIXED_UNIT[i % 5]``, so 5 layers is exactly
  that stack, 10 is it twice.

Requests are batched inside one coroutine (a loop round-trip per request would
swamp the signal) and each gets fresh scope and message dicts, including fresh
request-body messages, so header edits never pile up on a shared message.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ferroware
from ferroware.middleware import CORSMiddleware as FerrowareCORSMiddleware
from ferroware.middleware import GZipMiddleware as FerrowareGZipMiddleware
from ferroware.middleware import RequestIDMiddleware as FerrowareRequestIDMiddleware
from ferroware.base import BaseHTTPMiddleware

IMPLEMENTATIONS = ("stock", "pure", "ferroware")
FRAMEWORKS = ("fastapi", "starlette")
LAYER_COUNTS = (0, 1, 5, 10, 20)

Endpoint = Callable[[Request], Awaitable[Response]]
CallNext = Callable[[Request], Awaitable[Response]]


# --- endpoints ---------------------------------------------------------------

BODY_SIZE = 1024
REQUEST_BODY = bytes(range(256)) * (BODY_SIZE // 256)
STREAM_CHUNKS = 50
STREAM_CHUNK = b"0123456789abcdef" * 4  # 64 bytes
ORIGIN = "https://app.example.com"
REQUEST_ID = "4f6c1a2e2b1d4c2a9d8e0c7b5a3f9e11"
# ~2 KiB of JSON: over GZipMiddleware's minimum_size, so every implementation compresses it.
ITEMS_JSON = json.dumps(
    [{"id": i, "name": f"item {i}", "price": i * 1.25, "tags": ["a", "b"]} for i in range(32)]
).encode()


async def _hello(request: Request) -> Response:
    return PlainTextResponse("Hello, world!")


async def _echo_length(request: Request) -> Response:
    return PlainTextResponse(str(len(await request.body())))


async def _chunks() -> AsyncIterator[bytes]:
    for _ in range(STREAM_CHUNKS):
        yield STREAM_CHUNK


async def _stream(request: Request) -> Response:
    return StreamingResponse(_chunks(), media_type="application/octet-stream")


async def _items(request: Request) -> Response:
    return Response(ITEMS_JSON, media_type="application/json")


# --- the layers, as dispatch functions / subclasses ---------------------------


async def set_header(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    response.headers["x-layer"] = "1"
    return response


async def read_body(request: Request, call_next: CallNext) -> Response:
    await request.body()
    return await call_next(request)


async def request_id(request: Request, call_next: CallNext) -> Response:
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    response = await call_next(request)
    response.headers["x-request-id"] = rid
    return response


class StockHeaderMiddleware(StockBaseHTTPMiddleware):
    """``set_header`` as a subclass of Starlette's ``BaseHTTPMiddleware``."""

    async def dispatch(self, request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.headers["x-layer"] = "1"
        return response


class FerrowareHeaderMiddleware(BaseHTTPMiddleware):
    """``set_header`` as a subclass of ferroware's ``BaseHTTPMiddleware``."""

    async def dispatch(self, request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.headers["x-layer"] = "1"
        return response


# --- the same layers, as pure ASGI -------------------------------------------


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


class PureBodyMiddleware:
    """``read_body`` as pure ASGI: read the whole body, replay it downstream as one message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class PureRequestIdMiddleware:
    """``request_id`` as pure ASGI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
                break
        rid = rid or uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


# --- cases -------------------------------------------------------------------

MIXED_UNIT = ("cors", "gzip", "request_id", "header", "header")


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    method: str
    path: str
    endpoint: Endpoint
    layer_kinds: Callable[[int], list[str]]  # layer count -> kinds, outermost first
    request_headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None


def _repeat(kind: str) -> Callable[[int], list[str]]:
    return lambda n: [kind] * n


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("header", "decorator layer setting a header (GET)", "GET", "/", _hello, _repeat("header")),
        Case(
            "body",
            "decorator layer reading a 1 KiB body (POST)",
            "POST",
            "/echo",
            _echo_length,
            _repeat("body"),
            request_headers=(
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(BODY_SIZE).encode()),
            ),
            body=REQUEST_BODY,
        ),
        Case(
            "stream",
            f"header layers over a {STREAM_CHUNKS}-chunk streaming response",
            "GET",
            "/stream",
            _stream,
            _repeat("header"),
        ),
        Case("subclass", "BaseHTTPMiddleware subclass setting a header", "GET", "/", _hello, _repeat("subclass")),
        Case(
            "mixed",
            "CORS, GZip, request id, 2 decorator layers, repeated",
            "GET",
            "/items",
            _items,
            lambda n: [MIXED_UNIT[i % len(MIXED_UNIT)] for i in range(n)],
            request_headers=(
                (b"origin", ORIGIN.encode()),
                (b"accept-encoding", b"gzip, deflate"),
                (b"x-request-id", REQUEST_ID.encode()),
            ),
        ),
    )
}

_DISPATCH: dict[str, Callable[[Request, CallNext], Awaitable[Response]]] = {
    "header": set_header,
    "body": read_body,
    "request_id": request_id,
}
_PURE: dict[str, type] = {
    "header": PureHeaderMiddleware,
    "body": PureBodyMiddleware,
    "request_id": PureRequestIdMiddleware,
    "subclass": PureHeaderMiddleware,
}


def _check_names(case: str, implementation: str, framework: str) -> Case:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    try:
        return CASES[case]
    except KeyError:
        raise ValueError(f"unknown case {case!r}; expected one of {tuple(CASES)}") from None


def _add_layer(app: Starlette, implementation: str, framework: str, kind: str) -> None:
    """Add one layer of ``kind`` as the new outermost user layer."""
    if kind == "cors":
        cors = FerrowareCORSMiddleware if implementation == "ferroware" else CORSMiddleware
        app.add_middleware(cors, allow_origins=[ORIGIN], expose_headers=["x-request-id"])
    elif kind == "gzip":
        app.add_middleware(FerrowareGZipMiddleware if implementation == "ferroware" else GZipMiddleware)
    elif kind == "request_id" and implementation == "ferroware":
        app.add_middleware(FerrowareRequestIDMiddleware)
    elif implementation == "pure":
        app.add_middleware(_PURE[kind])  # type: ignore[arg-type]
    elif kind == "subclass":
        app.add_middleware(FerrowareHeaderMiddleware if implementation == "ferroware" else StockHeaderMiddleware)
    elif framework == "fastapi" or implementation == "ferroware":
        app.middleware("http")(_DISPATCH[kind])  # type: ignore[attr-defined]
    else:  # Starlette 1.x has no decorator: what it expanded to
        app.add_middleware(StockBaseHTTPMiddleware, dispatch=_DISPATCH[kind])


def build_app(case: str, implementation: str, layers: int, framework: str = "fastapi") -> ASGIApp:
    """The case's app behind ``layers`` layers, each the case's layer as ``implementation``."""
    spec = _check_names(case, implementation, framework)
    app: Starlette
    if framework == "fastapi":
        import fastapi  # an optional extra: only needed here

        cls = ferroware.FastAPI if implementation == "ferroware" else fastapi.FastAPI
        app = cls(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_api_route(spec.path, spec.endpoint, methods=[spec.method], include_in_schema=False)
    else:
        starlette_cls = ferroware.Starlette if implementation == "ferroware" else Starlette
        app = starlette_cls(routes=[Route(spec.path, spec.endpoint, methods=[spec.method])])
    # add_middleware makes the last one added the outermost: add innermost first.
    for kind in reversed(spec.layer_kinds(layers)):
        _add_layer(app, implementation, framework, kind)
    return app


# --- requests ----------------------------------------------------------------


class Exchange:
    """One request's ``receive`` and ``send``, as a server would give them.

    ``receive`` returns a fresh request message (the case's body, or none),
    then, like a server, waits until the response is complete and reports a
    disconnect (a streaming response listens for one on ASGI spec 2.3).
    """

    __slots__ = ("body", "done", "messages", "pending", "waiter")

    def __init__(self, body: bytes | None, record: bool = False) -> None:
        self.body = body or b""
        self.pending = True
        self.done = False
        self.waiter: asyncio.Future[None] | None = None
        self.messages: list[Message] | None = [] if record else None

    async def receive(self) -> Message:
        if self.pending:
            self.pending = False
            return {"type": "http.request", "body": self.body, "more_body": False}
        if not self.done:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.messages is not None:
            self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.done = True
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)


def make_scope(case: str) -> Scope:
    """A fresh scope (and fresh header list) for one request of ``case``."""
    spec = CASES[case]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": spec.method,
        "scheme": "http",
        "path": spec.path,
        "raw_path": spec.path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"ferroware-bench"), *spec.request_headers],
        "server": ("bench", 80),
        "client": ("127.0.0.1", 1234),
    }


async def serve_batch(app: ASGIApp, requests: int, case: str = "header", concurrency: int = 1) -> None:
    """``requests`` requests of ``case`` through ``app``.

    With ``concurrency`` 1, one after another in this task. With more, split
    over that many tasks, each yielding to the loop after every request, as
    connections' tasks do on a busy server: the others are then ready to run
    whenever one of them is in the middle of a request.
    """
    body = CASES[case].body
    if concurrency <= 1:
        for _ in range(requests):
            exchange = Exchange(body)
            await app(make_scope(case), exchange.receive, exchange.send)
        return

    async def connection(count: int) -> None:
        for _ in range(count):
            exchange = Exchange(body)
            await app(make_scope(case), exchange.receive, exchange.send)
            await asyncio.sleep(0)

    share, extra = divmod(requests, concurrency)
    await asyncio.gather(*(connection(share + (i < extra)) for i in range(concurrency)))


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes  # decompressed if gzip-encoded

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


async def _serve_one(app: ASGIApp, case: str) -> Reply:
    exchange = Exchange(CASES[case].body, record=True)
    await app(make_scope(case), exchange.receive, exchange.send)
    assert exchange.messages is not None
    start = next(m for m in exchange.messages if m["type"] == "http.response.start")
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in start["headers"]]
    body = b"".join(m.get("body", b"") for m in exchange.messages if m["type"] == "http.response.body")
    if ("content-encoding", "gzip") in headers:
        body = gzip.decompress(body)
    return Reply(start["status"], headers, body)


def serve_one(app: ASGIApp, case: str) -> Reply:
    """One request of ``case`` through ``app``, on a loop of its own: what came back."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_serve_one(app, case))
    finally:
        loop.close()


def expected_reply(case: str, layers: int) -> tuple[int, bytes, dict[str, int]]:
    """Status, body, and how many times each marker header must appear."""
    spec = CASES[case]
    kinds = spec.layer_kinds(layers)
    body = {
        "header": b"Hello, world!",
        "subclass": b"Hello, world!",
        "body": str(BODY_SIZE).encode(),
        "stream": STREAM_CHUNK * STREAM_CHUNKS,
        "mixed": ITEMS_JSON,
    }[case]
    markers = {"x-layer": sum(k in ("header", "subclass") for k in kinds)}
    if case == "mixed":
        markers["x-request-id"] = min(1, kinds.count("request_id"))
        markers["access-control-allow-origin"] = min(1, kinds.count("cors"))
    return 200, body, markers


def check(app: ASGIApp, case: str, layers: int) -> None:
    """Raise ``AssertionError`` unless ``app`` answers ``case`` as every implementation must."""
    reply = serve_one(app, case)
    status, body, markers = expected_reply(case, layers)
    assert reply.status == status, (case, layers, reply.status)
    assert reply.body == body, (case, layers, reply.body[:80])
    for name, count in markers.items():
        got = len(reply.header_values(name))
        # Header-setting layers replace the field, so it appears once however many set it.
        assert got == min(count, 1), (case, layers, name, got, reply.headers)


# --- timing ------------------------------------------------------------------


def time_batch(
    loop: asyncio.AbstractEventLoop, app: ASGIApp, requests: int, case: str = "header", concurrency: int = 1
) -> float:
    """Seconds per request for one batch."""
    start = time.perf_counter()
    loop.run_until_complete(serve_batch(app, requests, case, concurrency))
    return (time.perf_counter() - start) / requests


def batch_size(requests: int, reference: float, estimate: float, minimum: int = 3) -> int:
    """Requests per round so a round takes about as long as ``requests`` at ``reference`` s each.

    Deep stock stacks cost 100x a bare app per request: without this they would
    take most of the run.
    """
    return max(minimum, min(requests, round(requests * reference / estimate)))


@dataclass(frozen=True)
class Measurement:
    implementation: str
    layers: int
    seconds_per_request: float
    case: str = "header"
    requests: int = 0  # per round


def measure(
    cases: Iterable[str] = ("header",),
    implementations: Iterable[str] = IMPLEMENTATIONS,
    layer_counts: Iterable[int] = (0, 10),
    *,
    framework: str = "fastapi",
    requests: int = 500,
    rounds: int = 7,
    concurrency: int = 1,
    on_progress: Callable[[], None] | None = None,
) -> list[Measurement]:
    """Best-of-``rounds`` time per request for each case, implementation and depth.

    Every app is first checked (same status, body and headers for all three),
    then warmed up and its cost estimated; a round's batch is scaled so that it
    takes about as long as ``requests`` requests to the case's bare app.
    Rounds are interleaved across everything, so a noisy moment on a shared
    machine hits all of them alike rather than one. ``concurrency``: see
    ``serve_batch`` (its batches are at least that many requests). ``on_progress`` is called
    once per warm-up and once per timed batch: ``progress_steps`` of them.
    """
    cases, implementations, layer_counts = list(cases), list(implementations), list(layer_counts)
    configs = [(c, i, n) for c in cases for i in implementations for n in layer_counts]
    apps = {key: build_app(*key, framework=framework) for key in configs}
    loop = asyncio.new_event_loop()
    try:
        estimate: dict[tuple[str, str, int], float] = {}
        for key, app in apps.items():
            check(app, key[0], key[2])
            loop.run_until_complete(serve_batch(app, 1, key[0]))  # builds the stack, fills caches
            estimate[key] = time_batch(loop, app, max(3, concurrency), key[0], concurrency)
            if on_progress is not None:
                on_progress()
        # Long-lived objects (75 apps) out of the collector's way: a full
        # collection triggered by stock's per-request cycles would otherwise walk
        # all of them, a cost that grows with the number of cases measured.
        gc.collect()
        gc.freeze()
        # The cheapest config of each case (its bare app) sets the round length.
        reference = {c: min(t for (case, _, _), t in estimate.items() if case == c) for c in cases}
        batches = {key: batch_size(requests, reference[key[0]], estimate[key], max(3, concurrency)) for key in configs}
        best: dict[tuple[str, str, int], float] = {}
        for _ in range(rounds):
            for key, app in apps.items():
                t = time_batch(loop, app, batches[key], key[0], concurrency)
                best[key] = min(t, best.get(key, t))
                if on_progress is not None:
                    on_progress()
    finally:
        gc.unfreeze()
        loop.close()
    return [Measurement(i, n, best[(c, i, n)], c, batches[(c, i, n)]) for c, i, n in configs]


def progress_steps(cases: int, implementations: int, layer_counts: int, rounds: int) -> int:
    return cases * implementations * layer_counts * (rounds + 1)


# --- figures -----------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``y`` over ``x``."""
    if len({x for x, _ in points}) < 2:
        raise ValueError("a slope needs at least two distinct x values")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def per_layer_cost(measurements: Sequence[Measurement], implementation: str, case: str | None = None) -> float:
    """Seconds per layer per request: the least-squares slope over layer counts."""
    return slope(
        [
            (m.layers, m.seconds_per_request)
            for m in measurements
            if m.implementation == implementation and (case is None or m.case == case)
        ]
    )


@dataclass(frozen=True)
class CaseFigures:
    case: str
    per_layer: dict[str, float]  # seconds per layer, by implementation
    vs_stock: dict[str, float]  # stock's per-layer cost / this one's ("x cheaper")
    vs_pure: dict[str, float]  # this one's per-layer cost / pure ASGI's ("x the cost")


def figures(measurements: Sequence[Measurement]) -> list[CaseFigures]:
    """Per-layer cost and the ratios, for each case that has at least two layer counts."""
    out = []
    for case in dict.fromkeys(m.case for m in measurements):
        impls = list(dict.fromkeys(m.implementation for m in measurements if m.case == case))
        try:
            per_layer = {impl: per_layer_cost(measurements, impl, case) for impl in impls}
        except ValueError:
            continue
        vs_stock = {i: per_layer["stock"] / c for i, c in per_layer.items()} if "stock" in per_layer else {}
        vs_pure = {i: c / per_layer["pure"] for i, c in per_layer.items()} if "pure" in per_layer else {}
        out.append(CaseFigures(case, per_layer, vs_stock, vs_pure))
    return out


def format_table(measurements: Sequence[Measurement]) -> str:
    """Per case and implementation: µs per request at 0 layers, µs per layer, and the ratios."""
    lines = [
        f"{'case':<10}{'implementation':<16}{'0 layers':>12}{'per layer':>12}{'stock/this':>12}{'this/pure':>11}",
    ]
    for fig in figures(measurements):
        base = {m.implementation: m.seconds_per_request for m in measurements if m.case == fig.case and m.layers == 0}
        for impl, cost in fig.per_layer.items():
            zero = f"{base[impl] * 1e6:.1f} us" if impl in base else "-"
            ratio_stock = f"{fig.vs_stock[impl]:.1f}x" if impl in fig.vs_stock else "-"
            ratio_pure = f"{fig.vs_pure[impl]:.2f}x" if impl in fig.vs_pure else "-"
            lines.append(f"{fig.case:<10}{impl:<16}{zero:>12}{cost * 1e6:>9.2f} us{ratio_stock:>12}{ratio_pure:>11}")
    return "\n".join(lines)


# --- the chart -----------------------------------------------------------------

COLORS = {"stock": "#d62728", "pure": "#7f7f7f", "ferroware": "#1f77b4"}


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def svg_chart(measurements: Sequence[Measurement], title: str = "") -> str:
    """A dependency-free SVG: µs per request over layer count, one line per
    implementation, one panel per case. The y axis is logarithmic: stock is
    one to two orders of magnitude above the other two."""
    import math

    cases = list(dict.fromkeys(m.case for m in measurements))
    impls = list(dict.fromkeys(m.implementation for m in measurements))
    pw, ph = 300, 230  # panel
    ml, mr, mt, mb = 58, 12, 28, 38  # margins inside a panel
    cols = min(3, max(1, len(cases)))
    rows = math.ceil(len(cases) / cols)
    head = 52
    width, height = cols * pw + 20, head + rows * ph + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="18" font-size="14" font-weight="bold">{_esc(title or "µs per request vs layers")}</text>',
    ]
    # legend
    x = 10
    for impl in impls:
        color = COLORS.get(impl, "black")
        out.append(f'<line x1="{x}" y1="36" x2="{x + 22}" y2="36" stroke="{color}" stroke-width="2.5"/>')
        out.append(f'<text x="{x + 27}" y="40">{_esc(impl)}</text>')
        x += 40 + 7 * len(impl)
    out.append(f'<text x="{x + 10}" y="40" fill="#555">(log scale; µs per request)</text>')
    for index, case in enumerate(cases):
        ox, oy = 10 + (index % cols) * pw, head + (index // cols) * ph
        pts = [m for m in measurements if m.case == case and m.seconds_per_request > 0]
        if not pts:
            continue
        xs = sorted({m.layers for m in pts})
        ys = [m.seconds_per_request * 1e6 for m in pts]
        lo = 10 ** math.floor(math.log10(min(ys)))
        hi = 10 ** math.ceil(math.log10(max(ys)))
        if hi <= lo:
            hi = lo * 10
        x0, x1 = ox + ml, ox + pw - mr
        y0, y1 = oy + ph - mb, oy + mt
        xmax = max(xs) or 1

        def px(layers: float, x0: float = x0, x1: float = x1, xmax: float = xmax) -> float:
            return x0 + (x1 - x0) * layers / xmax

        def py(us: float, lo: float = lo, hi: float = hi, y0: float = y0, y1: float = y1) -> float:
            return y0 - (y0 - y1) * (math.log10(us) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

        out.append(f'<text x="{ox + ml}" y="{oy + 16}" font-size="12" font-weight="bold">{_esc(case)}</text>')
        out.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#999"/>')
        decade = lo
        while decade <= hi * 1.0001:
            y = py(decade)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            label = f"{decade:g}"
            out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
            decade *= 10
        for layers in xs:
            xp = px(layers)
            out.append(f'<line x1="{xp:.1f}" y1="{y0}" x2="{xp:.1f}" y2="{y0 + 4}" stroke="#999"/>')
            out.append(f'<text x="{xp:.1f}" y="{y0 + 16}" text-anchor="middle">{layers}</text>')
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + 31}" text-anchor="middle" fill="#555">layers</text>')
        for impl in impls:
            line = sorted((m.layers, m.seconds_per_request * 1e6) for m in pts if m.implementation == impl)
            if not line:
                continue
            color = COLORS.get(impl, "black")
            coords = " ".join(f"{px(lx):.1f},{py(ly):.1f}" for lx, ly in line)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
            for lx, ly in line:
                out.append(
                    f'<circle cx="{px(lx):.1f}" cy="{py(ly):.1f}" r="2.5" fill="{color}">'
                    f"<title>{_esc(impl)}, {lx} layers: {ly:.1f} µs</title></circle>"
                )
    out.append("</svg>")
    return "\n".join(out) + "\n"
