"""``GZipMiddleware``: Starlette's, with compression in Rust (flate2 on the
zlib-rs backend, ``rust/builtins/encode.rs``) and the response-header decisions
compiled. Chunks over 64 KiB are compressed without the GIL; chunks of at least
``thread_minimum_size`` bytes are compressed in a worker thread, as Starlette
does, so the event loop keeps running."""

from __future__ import annotations

from functools import partial

from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._core import CompressStream, accepts_gzip
from ferroware.middleware._responder import Responder, normalize_content_types

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
        self.exclude_content_types = tuple(normalize_content_types(exclude_content_types))
        self._excluded = list(self.exclude_content_types)
        self._make_stream = partial(CompressStream, "gzip", compresslevel)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = b"gzip" if accepts_gzip(scope) else None
        responder = Responder(self.app, self.minimum_size, self._excluded, encoding, self._make_stream, self.thread_minimum_size)
        await responder(scope, receive, send)


class GZipResponder(Responder):
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
        super().__init__(app, minimum_size, normalize_content_types(exclude_content_types), b"gzip", make_stream, thread_minimum_size)
