"""``GZipMiddleware``: Starlette's, with compression in Rust (flate2 on the
zlib-rs backend, ``rust/builtins/encode.rs``) and the response-header decisions
compiled. Chunks over 64 KiB are compressed without the GIL; chunks of at least
``thread_minimum_size`` bytes are compressed in a worker thread, as Starlette
does, so the event loop keeps running."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferroware._core import CompressStream, accepts_gzip, gzip_edit_headers, gzip_inspect_start

DEFAULT_EXCLUDED_CONTENT_TYPES = (
    "application/grpc",
    "application/gzip",
    "application/x-gzip",
    "application/zip",
    "audio/*",
    "font/woff",
    "font/woff2",
    "image/avif",
    "image/gif",
    "image/jpeg",
    "image/png",
    "image/webp",
    "text/event-stream",
    "video/*",
)

_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("ferroware_gzip_limiter")


def _thread_limiter() -> anyio.CapacityLimiter:
    """Worker threads for large chunks: 40 per event loop, apart from anyio's default pool."""
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(40)
        _limiter.set(limiter)
        return limiter


def _normalize(content_types: tuple[str, ...]) -> list[str]:
    return [ct.partition(";")[0].strip().lower() for ct in content_types]


class _Stream(Protocol):
    def compress(self, body: Any, more_body: bool) -> bytes: ...


class _Responder:
    """One response through the middleware: held start, then identity or
    compressed with the stream ``make_stream`` gives (``CompressionMiddleware``
    uses it too, with its negotiated coding)."""

    __slots__ = ("app", "minimum_size", "excluded", "thread_minimum_size", "make_stream", "encoding",
                 "send", "start", "headers", "started", "passthrough", "stream")  # fmt: skip

    def __init__(
        self,
        app: ASGIApp,
        minimum_size: int,
        excluded: list[str],
        encoding: bytes | None,
        make_stream: Callable[[], _Stream],
        thread_minimum_size: int,
    ) -> None:
        self.app = app
        self.minimum_size = minimum_size
        self.excluded = excluded
        self.encoding = encoding  # None: the client accepts none of the codings
        self.make_stream = make_stream
        self.thread_minimum_size = thread_minimum_size
        self.start: Message = {}
        self.headers: list[Any] = []
        self.started = False
        self.passthrough = False
        self.stream: _Stream | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.send = send
        await self.app(scope, receive, self.send_with_compression)

    async def _compress(self, body: Any, more_body: bool) -> Any:
        if self.encoding is None:
            return body
        if self.stream is None:
            self.stream = self.make_stream()
        if len(body) >= self.thread_minimum_size:
            return await anyio.to_thread.run_sync(self.stream.compress, body, more_body, limiter=_thread_limiter())
        return self.stream.compress(body, more_body)

    async def send_with_compression(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            # Held until the first body says how to edit the headers.
            self.start = message
            self.headers, self.passthrough = gzip_inspect_start(message, self.excluded)
            if self.passthrough:
                await self.send(message)
        elif self.passthrough and kind in ("http.response.body", "http.response.pathsend"):
            await self.send(message)
        elif kind == "http.response.body" and not self.started:
            self.started = True
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if not more_body and len(body) < self.minimum_size:
                await self.send(self.start)
                await self.send(message)
                return
            compressed = await self._compress(body, more_body)
            if self.encoding is not None:
                if more_body or self.start.get("trailers", False):
                    length = None
                else:
                    length = len(compressed)
                message["body"] = compressed
            gzip_edit_headers(self.headers, self.encoding, None if self.encoding is None else length)
            await self.send(self.start)
            await self.send(message)
        elif kind == "http.response.body":
            message["body"] = await self._compress(message.get("body", b""), message.get("more_body", False))
            await self.send(message)
        elif kind in ("http.response.early_hint", "http.response.trailers"):
            await self.send(message)
        elif kind == "http.response.pathsend":
            await self.send(self.start)
            await self.send(message)


class GZipMiddleware:
    """Gzip-compresses responses for clients that accept it, as ``starlette.middleware.gzip.GZipMiddleware``."""

    def __init__(
        self,
        app: ASGIApp,
        minimum_size: int = 500,
        compresslevel: int = 9,
        thread_minimum_size: int = 128 * 1024,
        *,
        exclude_content_types: tuple[str, ...] = DEFAULT_EXCLUDED_CONTENT_TYPES,
    ) -> None:
        CompressStream("gzip", compresslevel)  # a bad level fails here, not on the first response
        self.app = app
        self.minimum_size = minimum_size
        self.compresslevel = compresslevel
        self.thread_minimum_size = thread_minimum_size
        self.exclude_content_types = tuple(_normalize(exclude_content_types))
        self._excluded = list(self.exclude_content_types)
        self._make_stream = partial(CompressStream, "gzip", compresslevel)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = b"gzip" if accepts_gzip(scope) else None
        responder = _Responder(self.app, self.minimum_size, self._excluded, encoding, self._make_stream, self.thread_minimum_size)
        await responder(scope, receive, send)


class GZipResponder(_Responder):
    """Starlette's ``GZipResponder(app, minimum_size, compresslevel=9, *, thread_minimum_size, exclude_content_types)``:
    one response, gzip-compressed whatever the request's Accept-Encoding."""

    __slots__ = ()

    def __init__(
        self,
        app: ASGIApp,
        minimum_size: int,
        compresslevel: int = 9,
        *,
        thread_minimum_size: int = 128 * 1024,
        exclude_content_types: tuple[str, ...] = DEFAULT_EXCLUDED_CONTENT_TYPES,
    ) -> None:
        make_stream = partial(CompressStream, "gzip", compresslevel)
        super().__init__(app, minimum_size, _normalize(exclude_content_types), b"gzip", make_stream, thread_minimum_size)
