"""What ``GZipMiddleware`` and ``CompressionMiddleware`` share: the responder
that holds a response's start until its first body says whether to compress,
then sends it identity or through a compiled stream (``rust/builtins/encode.rs``),
large chunks in a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferroware._core import gzip_edit_headers, gzip_inspect_start

_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("ferroware_gzip_limiter")


def _thread_limiter() -> anyio.CapacityLimiter:
    """Worker threads for large chunks: 40 per event loop, apart from anyio's default pool."""
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(40)
        _limiter.set(limiter)
        return limiter


def normalize_content_types(content_types: tuple[str, ...]) -> list[str]:
    return [ct.partition(";")[0].strip().lower() for ct in content_types]


class Stream(Protocol):
    def compress(self, body: Any, more_body: bool) -> bytes: ...


class Responder:
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
        make_stream: Callable[[], Stream],
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
        self.stream: Stream | None = None

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
