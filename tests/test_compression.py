"""ferroware.middleware.CompressionMiddleware: Accept-Encoding negotiation,
bodies that the standard decoders (stdlib gzip, the ``brotli`` and
``zstandard`` packages) turn back into exactly the original bytes, streaming
chunk by chunk, the skip rules and header edits, argument checks, random
header sets, and the class under ``add_middleware`` in stock Starlette,
FastAPI and ferroware apps. Every async test runs on asyncio and trio."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest
import starlette.applications
import zstandard
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import ferroware
from ferroware import _core
from ferroware.middleware import CompressionMiddleware
from ferroware.middleware.compression import DEFAULT_EXCLUDED_CONTENT_TYPES
from helpers import Backend, serve

pytestmark = pytest.mark.anyio

BODY = b"".join(b'{"id": %d, "name": "item %d", "tags": ["a", "b"]}, ' % (i, i * 7) for i in range(3000))
CODINGS = ["zstd", "br", "gzip"]


def decode(encoding: str | None, body: bytes) -> bytes:
    """The body as a client decodes it, with the standard tools; fails on a truncated stream."""
    if encoding is None:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "br":
        return bytes(brotli.decompress(body))
    assert encoding == "zstd", encoding
    decoder = zstandard.ZstdDecompressor().decompressobj()
    out = decoder.decompress(body)
    assert decoder.eof and not decoder.unused_data
    return out


def incremental_decoder(encoding: str) -> Callable[[bytes], bytes]:
    """Feeds pieces of a stream, returning what each piece decodes to."""
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if encoding == "br":
        decompress: Callable[[bytes], bytes] = brotli.Decompressor().process
        return decompress
    return zstandard.ZstdDecompressor().decompressobj().decompress


def endpoint(headers: list[tuple[bytes, bytes]], body: bytes = BODY, chunks: int = 1, status: int = 200) -> Any:
    """An app sending ``body`` in ``chunks`` near-equal pieces."""
    step = -(-len(body) // chunks) if body else 1

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        pieces = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        pieces += [b""] * (chunks - len(pieces))
        for i, piece in enumerate(pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": i < len(pieces) - 1})

    return app


JSON = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def header(message: Any, name: bytes) -> bytes | None:
    values = [v for k, v in message["headers"] if k.lower() == name]
    assert len(values) <= 1, values
    return values[0] if values else None


async def fetch(middleware: Any, accept: bytes | None = None, **scope: Any) -> tuple[Any, str | None, bytes]:
    """The response start, its Content-Encoding and its body decoded."""
    request_headers = [(b"host", b"testserver")] + ([(b"accept-encoding", accept)] if accept is not None else [])
    sent = await serve(middleware, headers=request_headers, **scope)
    start, *bodies = sent
    encoding = header(start, b"content-encoding")
    raw = b"".join(m.get("body", b"") for m in bodies if m["type"] == "http.response.body")
    return start, encoding.decode() if encoding else None, decode(encoding.decode() if encoding else None, raw)


# --------------------------------------------------------------------------- negotiation

NEGOTIATION = [
    # (Accept-Encoding, coding chosen with the default preference zstd > br > gzip)
    (b"gzip", "gzip"),
    (b"gzip, deflate, br, zstd", "zstd"),
    (b"gzip, deflate, br", "br"),
    (b"br;q=0.5, gzip;q=0.8", "gzip"),
    (b"zstd;q=0.1, br;q=0.1, gzip;q=0.1", "zstd"),
    (b"gzip;q=1.0, br;q=1", "br"),
    (b"gzip;q=0.001", "gzip"),
    (b"gzip;q=0", None),
    (b"gzip;q=0.000", None),
    (b"br;q=0, gzip", "gzip"),
    (b"*", "zstd"),
    (b"*;q=0.5, gzip", "gzip"),
    (b"*, zstd;q=0", "br"),
    (b"*;q=0", None),
    (b"*;q=0, gzip", "gzip"),
    (b"identity", None),
    (b"identity;q=0", None),
    (b"identity, gzip", "gzip"),
    (b"identity;q=1, gzip;q=0.5", None),
    (b"identity;q=0.4, gzip;q=0.5", "gzip"),
    (b"x-gzip", "gzip"),
    (b"GZip", "gzip"),
    (b"BR;Q=0.9, Gzip;q=0.8", "br"),
    (b"  gzip  ;  q=0.5 ,\tbr ; q=0.7  ", "br"),
    (b"gzip;q=abc, br;q=0.5", "br"),
    (b"gzip;q=1.5, br;q=0.2", "br"),
    (b"gzip;q=0.1234", None),
    (b"gzip;q=", None),
    (b"gzip;level=9", "gzip"),
    (b"gzip, gzip;q=0", None),
    (b"deflate, compress", None),
    (b"", None),
    (b",;=, ;;", None),
    (b"\xff\xfe, gzip\xff", None),
    (b"\xffgzip, br", "br"),
    (b"gzip;q=0.5, " * 6000 + b"br", "br"),
]


@pytest.mark.parametrize(("accept", "expected"), NEGOTIATION)
async def test_negotiation(accept: bytes, expected: str | None) -> None:
    policy = _core.EncodingPolicy(["zstd", "br", "gzip"])
    assert policy.choose({"headers": [(b"accept-encoding", accept)]}) == expected
    # And end to end: the response's Content-Encoding, and the body decodes.
    start, encoding, body = await fetch(CompressionMiddleware(endpoint(JSON)), accept)
    assert (encoding, body) == (expected, BODY)


async def test_absent_header_means_no_compression() -> None:
    assert _core.EncodingPolicy(["gzip"]).choose({"headers": []}) is None
    start, encoding, body = await fetch(CompressionMiddleware(endpoint(JSON)))
    assert (encoding, body) == (None, BODY)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([b"gzip;q=0.2", b"br;q=0.3"], "br"),
        ([b"gzip", b"gzip;q=0"], None),
        ([b"*;q=0", b"zstd"], "zstd"),
        ([b"", b"gzip"], "gzip"),
    ],
)
def test_several_fields_are_one_list(fields: list[bytes], expected: str | None) -> None:
    policy = _core.EncodingPolicy(["zstd", "br", "gzip"])
    assert policy.choose({"headers": [(b"accept-encoding", f) for f in fields]}) == expected


@pytest.mark.parametrize(
    ("preference", "accept", "expected"),
    [
        (("gzip", "br", "zstd"), b"zstd, br, gzip", "gzip"),
        (("br",), b"gzip, zstd", None),
        (("br", "gzip"), b"*", "br"),
        (("gzip", "zstd"), b"zstd;q=0.9, gzip;q=0.8", "zstd"),
    ],
)
async def test_preference_breaks_ties_and_limits_codings(preference: tuple[str, ...], accept: bytes, expected: str | None) -> None:
    start, encoding, body = await fetch(CompressionMiddleware(endpoint(JSON), preference=preference), accept)
    assert (encoding, body) == (expected, BODY)


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("chunks", [1, 2, 7])
async def test_round_trip(coding: str, chunks: int) -> None:
    start, encoding, body = await fetch(CompressionMiddleware(endpoint(JSON, chunks=chunks)), coding.encode())
    assert encoding == coding
    assert body == BODY
    assert header(start, b"vary") == b"Accept-Encoding"


@pytest.mark.parametrize("coding", CODINGS)
async def test_large_and_threaded_bodies(coding: str) -> None:
    """Chunks over 64 KiB (compressed without the GIL) and chunks sent to a worker thread."""
    big = bytes(range(256)) * 1024 + BODY * 3  # 256 KiB of byte patterns, then JSON
    app = endpoint([(b"content-type", b"application/octet-stream")], big, chunks=3)
    for thread_minimum_size in (0, 64 * 1024, 1 << 30):
        middleware = CompressionMiddleware(app, thread_minimum_size=thread_minimum_size)
        assert (await fetch(middleware, coding.encode()))[1:] == (coding, big)


@pytest.mark.parametrize("coding", CODINGS)
def test_streams_decode_with_the_standard_tools(coding: str) -> None:
    """Empty chunks, a one-byte chunk and binary data, in and out of the stream."""
    data = bytes(range(256)) * 300
    pieces = [b"", data[:1], data[1:70_000], b"", data[70_000:]]
    stream = _core.CompressStream(coding, 5)
    out = b"".join(stream.compress(p, True) for p in pieces) + stream.compress(b"", False)
    assert decode(coding, out) == data
    assert decode(coding, _core.CompressStream(coding, 5).compress(b"", False)) == b""
    with pytest.raises(RuntimeError, match="already finished"):
        stream.compress(b"more", False)


@pytest.mark.parametrize("coding", CODINGS)
async def test_streaming_is_incremental(coding: str) -> None:
    """Each chunk goes out compressed, and decodable, before the app sends the next."""
    chunks = [b"data: %d %s\n\n" % (i, b"x" * i * 50) for i in range(6)]
    events: list[tuple[str, int]] = []
    feed = incremental_decoder(coding)
    decoded = b""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i, chunk in enumerate(chunks):
            events.append(("app sends", i))
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        nonlocal decoded
        if message["type"] == "http.response.start":
            assert header(message, b"content-encoding") == coding.encode()
            assert header(message, b"content-length") is None
            return
        decoded += feed(message["body"])
        # Everything the app sent so far is already decodable from what went out.
        sent_so_far = sum(1 for event in events if event[0] == "app sends")
        assert decoded == b"".join(chunks[:sent_so_far])
        events.append(("client has", sent_so_far - 1))

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"accept-encoding", coding.encode())]}
    await CompressionMiddleware(app, minimum_size=10_000)(scope, receive, send)
    assert events == [(kind, i) for i in range(len(chunks)) for kind in ("app sends", "client has")]
    assert decoded == b"".join(chunks)


@pytest.mark.parametrize("coding", CODINGS)
async def test_levels_change_the_output(coding: str) -> None:
    low, high = {"zstd": (1, 19), "br": (0, 11), "gzip": (1, 9)}[coding]
    argument = {"zstd": "zstd_level", "br": "brotli_quality", "gzip": "gzip_level"}[coding]
    sizes = []
    for level in (low, high):
        kwargs: dict[str, Any] = {argument: level}
        middleware = CompressionMiddleware(endpoint(JSON), **kwargs)
        sent = await serve(middleware, headers=[(b"accept-encoding", coding.encode())])
        assert decode(coding, sent[1]["body"]) == BODY
        sizes.append(len(sent[1]["body"]))
    assert sizes[1] < sizes[0]


# --------------------------------------------------------------------------- headers and skip rules


async def test_single_chunk_gets_the_compressed_length() -> None:
    sent = await serve(CompressionMiddleware(endpoint(JSON)), headers=[(b"accept-encoding", b"br")])
    assert header(sent[0], b"content-length") == str(len(sent[1]["body"])).encode()
    assert len(sent[1]["body"]) < len(BODY)


async def test_streaming_drops_the_length() -> None:
    sent = await serve(CompressionMiddleware(endpoint(JSON, chunks=3)), headers=[(b"accept-encoding", b"zstd")])
    assert header(sent[0], b"content-length") is None
    assert header(sent[0], b"content-encoding") == b"zstd"


async def test_vary_is_added_to_what_is_there() -> None:
    app = endpoint([*JSON, (b"vary", b"Cookie")])
    start, encoding, _ = await fetch(CompressionMiddleware(app), b"gzip")
    assert header(start, b"vary") == b"Cookie, Accept-Encoding"


async def test_uncompressed_for_this_client_still_varies() -> None:
    """The same URL would be compressed for another client: caches must know."""
    start, encoding, body = await fetch(CompressionMiddleware(endpoint(JSON)), b"identity")
    assert (encoding, body) == (None, BODY)
    assert header(start, b"vary") == b"Accept-Encoding"
    assert header(start, b"content-length") == str(len(BODY)).encode()


@pytest.mark.parametrize("accept", [b"gzip", b"zstd, br"])
async def test_minimum_size(accept: bytes) -> None:
    middleware = CompressionMiddleware(endpoint(JSON, BODY[:999]), minimum_size=1000)
    start, encoding, body = await fetch(middleware, accept)
    assert (encoding, body, header(start, b"vary")) == (None, BODY[:999], None)
    middleware = CompressionMiddleware(endpoint(JSON, BODY[:1000]), minimum_size=1000)
    assert (await fetch(middleware, accept))[1] is not None
    # A stream is compressed however small its first chunk.
    middleware = CompressionMiddleware(endpoint(JSON, BODY[:20], chunks=2), minimum_size=1000)
    assert (await fetch(middleware, accept))[1:] == (accept.split(b",")[0].decode(), BODY[:20])


@pytest.mark.parametrize(
    "content_type",
    [b"text/event-stream", b"image/png", b"IMAGE/JPEG; q=1", b"audio/ogg", b"video/mp4", b"font/woff2",
     b"application/zip", b"application/gzip", b"application/zstd", b"application/grpc+proto"],  # fmt: skip
)
async def test_excluded_types_are_left_alone(content_type: bytes) -> None:
    app = endpoint([(b"content-type", content_type)], chunks=2)
    start, encoding, body = await fetch(CompressionMiddleware(app), b"zstd, br, gzip")
    assert (encoding, body, header(start, b"vary")) == (None, BODY, None)


@pytest.mark.parametrize("content_type", [b"image/svg+xml", b"text/html; charset=utf-8", b"application/javascript", b""])
async def test_compressible_types(content_type: bytes) -> None:
    start, encoding, body = await fetch(CompressionMiddleware(endpoint([(b"content-type", content_type)])), b"br")
    assert (encoding, body) == ("br", BODY)


async def test_exclusions_are_configurable() -> None:
    app = endpoint([(b"content-type", b"text/html")])
    middleware = CompressionMiddleware(app, exclude_content_types=["Text/*"])
    assert middleware.exclude_content_types == ("text/*",)
    assert (await fetch(middleware, b"gzip"))[1] is None
    png = endpoint([(b"content-type", b"image/png")])
    assert (await fetch(CompressionMiddleware(png, exclude_content_types=()), b"gzip"))[1:] == ("gzip", BODY)
    assert "text/event-stream" in DEFAULT_EXCLUDED_CONTENT_TYPES


async def test_already_encoded_responses_are_left_alone() -> None:
    app = endpoint([*JSON, (b"content-encoding", b"br")])
    sent = await serve(CompressionMiddleware(app), headers=[(b"accept-encoding", b"gzip")])
    assert sent[0]["headers"] == [*JSON, (b"content-encoding", b"br")]
    assert sent[1]["body"] == BODY


async def test_partial_content_is_left_alone() -> None:
    headers = [*JSON, (b"content-range", b"bytes 0-99/1000")]
    sent = await serve(CompressionMiddleware(endpoint(headers, status=206)), headers=[(b"accept-encoding", b"gzip")])
    assert sent[0]["status"] == 206
    assert sent[0]["headers"] == headers
    assert sent[1]["body"] == BODY


async def test_pathsend_goes_out_as_is() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(JSON)})
        await send({"type": "http.response.pathsend", "path": "/srv/file.json"})

    sent = await serve(CompressionMiddleware(app), headers=[(b"accept-encoding", b"gzip")])
    assert sent == [{"type": "http.response.start", "status": 200, "headers": JSON},
                    {"type": "http.response.pathsend", "path": "/srv/file.json"}]  # fmt: skip


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
async def test_other_scopes_pass_through(kind: str) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        pass

    scope = {"type": kind, "headers": [(b"accept-encoding", b"gzip")]}
    await CompressionMiddleware(app)(scope, receive, send)
    assert seen == [(scope, receive, send)]


# --------------------------------------------------------------------------- arguments


def test_defaults() -> None:
    middleware = CompressionMiddleware(endpoint(JSON))
    assert (middleware.minimum_size, middleware.zstd_level, middleware.brotli_quality, middleware.gzip_level) == (500, 3, 4, 6)
    assert middleware.preference == ("zstd", "br", "gzip")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"zstd_level": 0}, ValueError, r"zstd_level=0: .*1 to 22"),
        ({"zstd_level": 23}, ValueError, r"zstd_level=23"),
        ({"brotli_quality": 12}, ValueError, r"brotli_quality=12: .*0 to 11"),
        ({"brotli_quality": -1}, ValueError, r"brotli_quality=-1"),
        ({"gzip_level": 10}, ValueError, r"gzip_level=10: .*-1 to 9"),
        ({"gzip_level": "6"}, TypeError, r"gzip_level must be an int, not str"),
        ({"zstd_level": True}, TypeError, r"zstd_level must be an int, not bool"),
        ({"minimum_size": -1}, ValueError, r"minimum_size must be at least 0"),
        ({"minimum_size": 1.5}, TypeError, r"minimum_size must be an int"),
        ({"thread_minimum_size": -5}, ValueError, r"thread_minimum_size must be at least 0"),
        ({"preference": ("gzip", "deflate")}, ValueError, r"Unknown coding in preference: \"deflate\""),
        ({"preference": ("GZIP",)}, ValueError, r"Unknown coding"),
        ({"preference": ("br", "br")}, ValueError, r"named twice"),
        ({"preference": ()}, ValueError, r"at least one coding"),
        ({"preference": "gzip"}, TypeError, r"preference must be a sequence of strings, not str"),
        ({"preference": [b"gzip"]}, TypeError, r"preference must hold strings"),
        ({"exclude_content_types": "image/png"}, TypeError, r"exclude_content_types must be a sequence"),
        ({"exclude_content_types": [None]}, TypeError, r"exclude_content_types must hold strings"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        CompressionMiddleware(endpoint(JSON), **kwargs)


def test_bad_stream_arguments() -> None:
    with pytest.raises(ValueError, match=r"Unknown coding: \"deflate\""):
        _core.CompressStream("deflate", 1)
    with pytest.raises(ValueError, match=r"Bad compression level for br: 12"):
        _core.CompressStream("br", 12)


# --------------------------------------------------------------------------- random header sets

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOKENS = [b"gzip", b"br", b"zstd", b"x-gzip", b"identity", b"*", b"deflate", b"GZIP", b"Br", b"\xff", b""]
PARAMS = [b"", b";q=0", b";q=1", b";q=0.5", b";q=0.001", b";q=1.5", b";q=abc", b";Q=0.3", b" ; q = 0.2 ", b";level=1", b";q"]
entry = st.tuples(st.sampled_from(TOKENS), st.sampled_from(PARAMS)).map(b"".join)
accept_values = st.one_of(
    st.lists(entry, max_size=6).map(b", ".join),
    st.binary(max_size=60),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.encode),
    st.sampled_from([b"", b"\xff\xfe", b"gzip" * 17_500, b"gzip;q=0.5, " * 6000, b"x" * 70_000]),
)


def parse_reference(fields: list[bytes]) -> dict[bytes, int]:
    """A second reading of RFC 9110 §12.5.3, written apart from the Rust one: weights in thousandths."""
    weights: dict[bytes, int] = {}
    for entry_bytes in b",".join(fields).split(b","):
        name, *params = entry_bytes.split(b";")
        name = name.strip(b" \t\r\n\x0c").lower()
        weight: int | None = 1000
        for param in params:
            key, eq, value = param.partition(b"=")
            if eq and key.strip(b" \t\r\n\x0c").lower() == b"q":
                text = value.strip(b" \t\r\n\x0c").decode("latin-1")
                whole, _, fraction = text.partition(".")
                ok = whole in ("0", "1") and len(fraction) <= 3 and all(c in "0123456789" for c in fraction)
                parsed = int(whole) * 1000 + int(fraction.ljust(3, "0")) if ok else 1001
                # One malformed q and the whole entry is out.
                weight = parsed if weight is not None and parsed <= 1000 else None
        if weight is None or not name:
            continue
        name = b"gzip" if name == b"x-gzip" else name
        weights[name] = min(weights.get(name, weight), weight)
    return weights


def choose_reference(fields: list[bytes], preference: list[str]) -> str | None:
    if not fields:
        return None
    weights = parse_reference(fields)
    ranked = [(weights.get(c.encode(), weights.get(b"*", 0)), -i, c) for i, c in enumerate(preference)]
    weight, _, coding = max(ranked)
    if weight == 0 or weights.get(b"identity", -1) > weight:
        return None
    return coding


@SETTINGS
@given(
    accept=st.lists(accept_values, max_size=3),
    preference=st.permutations(CODINGS).flatmap(lambda p: st.integers(1, 3).map(lambda n: p[:n])),
    content_type=st.one_of(st.none(), st.binary(max_size=30),
                           st.sampled_from([b"text/plain", b"application/json", b"image/png", b"Text/Event-Stream; x",
                                            b"image/svg+xml", b"\xff\xfe", b"", b"audio", b"x" * 70_000])),  # fmt: skip
    content_encoding=st.sampled_from([None, b"br", b"", b"\xff"]),
    status=st.sampled_from([200, 206, 404]),
    size=st.sampled_from([0, 10, 499, 500, 4000, 70_000]),
    chunks=st.integers(1, 3),
)
async def test_random_headers_never_break_the_body(
    accept: list[bytes], preference: list[str], content_type: bytes | None, content_encoding: bytes | None,
    status: int, size: int, chunks: int,
) -> None:  # fmt: skip
    response_headers = [] if content_type is None else [(b"content-type", content_type)]
    if content_encoding is not None:
        response_headers.append((b"content-encoding", content_encoding))
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    app = endpoint(response_headers, body, chunks, status)
    middleware = CompressionMiddleware(app, preference=preference)
    expected = choose_reference(accept, preference)
    assert _core.EncodingPolicy(preference).choose({"headers": [(b"accept-encoding", v) for v in accept]}) == expected
    sent = await serve(middleware, headers=[(b"accept-encoding", v) for v in accept])
    start = sent[0]
    assert start["status"] == status
    encoding = header(start, b"content-encoding")
    raw = b"".join(m["body"] for m in sent[1:])
    if content_encoding is None and encoding is not None:
        assert encoding.decode() == expected
        assert decode(encoding.decode(), raw) == body
    else:
        assert encoding == content_encoding
        assert raw == body


# --------------------------------------------------------------------------- in applications


async def json_endpoint(request: Any) -> Response:
    return Response(BODY, media_type="application/json")


async def stream_endpoint(request: Any) -> Response:
    async def chunks() -> Any:
        for i in range(0, len(BODY), 10_000):
            yield BODY[i : i + 10_000]

    return StreamingResponse(chunks(), media_type="text/plain")


async def small_endpoint(request: Any) -> Response:
    return PlainTextResponse("tiny")


ROUTES = [Route("/json", json_endpoint), Route("/stream", stream_endpoint), Route("/small", small_endpoint)]


def stock_starlette() -> Any:
    app = starlette.applications.Starlette(routes=ROUTES)
    app.add_middleware(CompressionMiddleware, minimum_size=100, brotli_quality=5)
    return app


def stock_fastapi() -> Any:
    app = FastAPI()
    app.router.routes.extend(ROUTES)
    app.add_middleware(CompressionMiddleware, minimum_size=100, brotli_quality=5)
    return app


def ferroware_starlette() -> Any:
    app = ferroware.Starlette(routes=ROUTES)
    app.add_middleware(CompressionMiddleware, minimum_size=100, brotli_quality=5)
    return app


def ferroware_middleware_list() -> Any:
    return ferroware.Starlette(routes=ROUTES, middleware=[Middleware(CompressionMiddleware, minimum_size=100, brotli_quality=5)])


@pytest.mark.parametrize("make_app", [stock_starlette, stock_fastapi, ferroware_starlette, ferroware_middleware_list])
@pytest.mark.parametrize("coding", CODINGS)
def test_in_applications(make_app: Callable[[], Any], coding: str, anyio_backend: Backend) -> None:
    with TestClient(make_app(), backend=anyio_backend) as client:
        for path in ("/json", "/stream"):
            with client.stream("GET", path, headers={"accept-encoding": f"{coding}, identity;q=0.5"}) as response:
                raw = b"".join(response.iter_raw())
            assert response.status_code == 200
            assert response.headers["content-encoding"] == coding
            assert response.headers["vary"] == "Accept-Encoding"
            assert decode(coding, raw) == BODY
            # One chunk: the compressed length; a stream: none (chunked).
            assert response.headers.get("content-length") == (str(len(raw)) if path == "/json" else None)
        response = client.get("/small", headers={"accept-encoding": coding})
        assert "content-encoding" not in response.headers
        assert response.text == "tiny"
        response = client.get("/json", headers={"accept-encoding": "identity"})
        assert "content-encoding" not in response.headers
        assert response.content == BODY
