"""``CompressionMiddleware``: zstd, brotli or gzip, whichever the client
prefers by its ``Accept-Encoding`` q-values (ties go to the server's
``preference``). The coding is chosen in Rust (``rust/builtins/compress.rs``),
the body compressed in Rust (``rust/builtins/encode.rs``: flate2 on zlib-rs,
the pure-Rust brotli port, the zstd C library), chunk by chunk, each chunk
flushed so a streaming response is never held back or buffered whole. The
response side (held start, skip rules, ``Vary``, ``Content-Length``, the
worker thread for large chunks) is ``GZipMiddleware``'s own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._core import CompressStream, EncodingPolicy
from ferroware.middleware._responder import Responder, Stream, normalize_content_types

# Responses left as they are. Types that gain nothing (already compressed,
# or media whose players expect byte ranges) and streams that must reach the
# client event by event. SVG, BMP, ICO and TIFF images are not listed: they
# are text or mostly uncompressed and shrink well.
DEFAULT_EXCLUDED_CONTENT_TYPES = (
    "text/event-stream",
    "application/grpc",
    "image/apng",
    "image/avif",
    "image/gif",
    "image/heic",
    "image/heif",
    "image/jp2",
    "image/jpeg",
    "image/jxl",
    "image/png",
    "image/webp",
    "audio/*",
    "video/*",
    "application/ogg",
    "font/*",
    "application/font-woff",
    "application/gzip",
    "application/x-gzip",
    "application/zip",
    "application/x-7z-compressed",
    "application/vnd.rar",
    "application/x-rar-compressed",
    "application/x-bzip2",
    "application/x-xz",
    "application/zstd",
)

DEFAULT_PREFERENCE = ("zstd", "br", "gzip")


def _never() -> Stream:  # pragma: no cover - only called when a coding was chosen
    raise AssertionError("no coding was negotiated")


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _check_names(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, not {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings, got {item!r}")
    return tuple(value)


class CompressionMiddleware:
    """Compresses responses with zstd, brotli or gzip, as the client's ``Accept-Encoding`` allows.

    ``minimum_size``: single-chunk bodies smaller than this go out as they are.
    Levels: ``zstd_level`` 1 to 22, ``brotli_quality`` 0 to 11, ``gzip_level``
    -1 to 9. ``preference``: the codings offered, best first; it settles ties
    between equal q-values. ``exclude_content_types``: media types (``type/*``
    for a whole family) sent as they are. Chunks of ``thread_minimum_size``
    bytes or more are compressed in a worker thread.
    """

    def __init__(
        self,
        app: ASGIApp,
        minimum_size: int = 500,
        *,
        zstd_level: int = 3,
        brotli_quality: int = 4,
        gzip_level: int = 6,
        preference: Sequence[str] = DEFAULT_PREFERENCE,
        exclude_content_types: Sequence[str] = DEFAULT_EXCLUDED_CONTENT_TYPES,
        thread_minimum_size: int = 128 * 1024,
    ) -> None:
        self.app = app
        self.minimum_size = _check_int("minimum_size", minimum_size, 0)
        self.thread_minimum_size = _check_int("thread_minimum_size", thread_minimum_size, 0)
        self.preference = _check_names("preference", preference)
        self.exclude_content_types = tuple(normalize_content_types(_check_names("exclude_content_types", exclude_content_types)))
        self.zstd_level = _check_int("zstd_level", zstd_level)
        self.brotli_quality = _check_int("brotli_quality", brotli_quality)
        self.gzip_level = _check_int("gzip_level", gzip_level)
        self._policy = EncodingPolicy(list(self.preference))
        self._excluded = list(self.exclude_content_types)
        # What each negotiated coding (None: none) means for a response.
        self._codings: dict[str | None, tuple[bytes | None, Callable[[], Stream]]] = {None: (None, _never)}
        for coding, argument, level in (("zstd", "zstd_level", zstd_level), ("br", "brotli_quality", brotli_quality),
                                        ("gzip", "gzip_level", gzip_level)):  # fmt: skip
            try:
                CompressStream(coding, level)  # a bad level fails here, not on the first response
            except ValueError as exc:
                raise ValueError(f"{argument}={level}: {exc}") from None
            self._codings[coding] = (coding.encode(), partial(CompressStream, coding, level))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding, make_stream = self._codings[self._policy.choose(scope)]
        responder = Responder(self.app, self.minimum_size, self._excluded, encoding, make_stream, self.thread_minimum_size)
        await responder(scope, receive, send)
