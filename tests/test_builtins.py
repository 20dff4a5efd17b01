"""ferroware.middleware against Starlette's classes of the same names: random
request headers (absent, malformed, non-UTF-8, huge) go through both, and the
ASGI messages they send must be the same. Every test runs on asyncio and trio."""

from __future__ import annotations

import copy
import gzip
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.middleware.cors import CORSMiddleware as StarletteCORS
from starlette.middleware.gzip import GZipMiddleware as StarletteGZip
from starlette.middleware.httpsredirect import HTTPSRedirectMiddleware as StarletteHTTPSRedirect
from starlette.middleware.trustedhost import TrustedHostMiddleware as StarletteTrustedHost

from ferroware import _core
from ferroware.middleware import CORSMiddleware, GZipMiddleware, HTTPSRedirectMiddleware, TrustedHostMiddleware

pytestmark = pytest.mark.anyio
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Header values: printable text, any bytes (non-UTF-8 too), or huge.
values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.encode),
    st.binary(max_size=40),
    st.sampled_from([b"", b" ", b"\xff\xfe", b"null", b"*", b"gzip", b"x" * 70_000]),
)


def field(name: str, examples: list[bytes]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Zero, one or two fields of that name, valued from the examples or at random."""
    value = st.one_of(st.sampled_from(examples), values)
    return st.lists(value, max_size=2).map(lambda vs: [(name.encode(), v) for v in vs])


def headers_of(*fields: st.SearchStrategy[list[tuple[bytes, bytes]]]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    return st.tuples(*fields).map(lambda parts: [f for part in parts for f in part]).flatmap(st.permutations)


def endpoint(response_headers: list[tuple[bytes, bytes]], body: bytes = b"hello", chunks: int = 1) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(response_headers)})
        for i in range(chunks):
            await send({"type": "http.response.body", "body": body, "more_body": i < chunks - 1})

    return app


async def run(middleware: Any, scope: dict[str, Any]) -> tuple[str, Any]:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    try:
        await middleware(copy.deepcopy(scope), receive, send)
    except Exception as exc:  # noqa: BLE001
        return "raised", type(exc)
    return "sent", sent


async def same(ours: Any, theirs: Any, scope: dict[str, Any], normalize: Any = None) -> None:
    got, expected = await run(ours, scope), await run(theirs, scope)
    if expected[0] == "raised" and got[0] == "sent":
        # Where Starlette fails, ferroware answers a clear 400.
        assert got[1][0]["status"] == 400, (got, expected)
        return
    if normalize is not None and got[0] == expected[0] == "sent":
        got, expected = ("sent", normalize(got[1])), ("sent", normalize(expected[1]))
    assert got == expected


def http_scope(headers: list[tuple[bytes, bytes]], method: str = "GET", **extra: Any) -> dict[str, Any]:
    scope = {"type": "http", "method": method, "path": "/p", "query_string": b"a=1", "scheme": "http",
             "server": ("testserver", 80), "headers": headers}  # fmt: skip
    scope.update(extra)
    return scope


# --------------------------------------------------------------------------- CORS

CORS_CONFIGS = [
    {},
    {"allow_origins": ["*"]},
    {"allow_origins": ["*"], "allow_credentials": True, "allow_headers": ["*"], "allow_methods": ["*"]},
    {"allow_origins": ["https://a.example", "http://b.example:8080"], "allow_headers": ["X-Token"],
     "expose_headers": ["X-Id"], "allow_private_network": True},
    {"allow_origin_regex": r"https://.*\.example\.org", "allow_methods": ["GET", "POST"], "max_age": 5},
]
ORIGINS = [b"https://a.example", b"http://b.example:8080", b"https://x.example.org", b"null", b"https://evil"]


@SETTINGS
@given(
    config=st.sampled_from(CORS_CONFIGS),
    method=st.sampled_from(["GET", "OPTIONS", "POST"]),
    headers=headers_of(
        field("origin", ORIGINS),
        field("access-control-request-method", [b"GET", b"POST", b"PUT", b"get"]),
        field("access-control-request-headers", [b"x-token", b"X-Token, Accept", b"content-type,  x-other", b"\xc0"]),
        field("access-control-request-private-network", [b"true"]),
    ),
    response_headers=st.lists(st.sampled_from([(b"vary", b"Cookie"), (b"content-type", b"text/plain")]), max_size=2),
)
async def test_cors_matches_starlette(config: dict[str, Any], method: str, headers: Any, response_headers: Any) -> None:
    app = endpoint(response_headers)
    await same(CORSMiddleware(app, **config), StarletteCORS(app, **config), http_scope(headers, method))


@pytest.mark.anyio
async def test_cors_preflight_answers_share_nothing_mutable() -> None:
    # The fixed fields of a preflight answer are tuples built once per
    # middleware (rust/builtins/cors.rs); each answer still gets its own list
    # and dicts, so a server or outer middleware editing one answer leaves the
    # next one as Starlette would send it.
    config = {"allow_origins": ["https://a.example"], "allow_headers": ["X-Token"]}
    ours, theirs = CORSMiddleware(endpoint([]), **config), StarletteCORS(endpoint([]), **config)
    headers = [(b"origin", b"https://a.example"), (b"access-control-request-method", b"GET")]
    _, first = await run(ours, http_scope(headers, "OPTIONS"))
    first[0]["headers"].append((b"x-edited", b"1"))
    first[0]["headers"][0] = (b"vary", b"edited")
    first[1]["more_body"] = True
    assert await run(ours, http_scope(headers, "OPTIONS")) == await run(theirs, http_scope(headers, "OPTIONS"))


# --------------------------------------------------------------------------- TrustedHost

HOSTS = [b"example.com", b"www.example.com", b"sub.example.com", b"EXAMPLE.com:8000", b"[::1]", b"[::1]:80",
         b"[:::]", b"[v1.foo]", b"api_service:65536", b"a b", b"example.com.", b"[::1", b"x:", b":80"]  # fmt: skip


@SETTINGS
@given(
    allowed=st.sampled_from([["example.com"], ["www.example.com"], ["*.example.com", "[::1]"], ["*"], ["[v1.foo]"]]),
    www_redirect=st.booleans(),
    headers=headers_of(field("host", HOSTS)),
    kind=st.sampled_from(["http", "websocket"]),
)
async def test_trusted_host_matches_starlette(allowed: list[str], www_redirect: bool, headers: Any, kind: str) -> None:
    app = endpoint([])
    scope = http_scope(headers, type=kind) if kind == "http" else http_scope(headers, type=kind, scheme="ws")
    await same(TrustedHostMiddleware(app, allowed, www_redirect), StarletteTrustedHost(app, allowed, www_redirect), scope)


@given(st.one_of(st.sampled_from([h.decode("latin-1") for h in HOSTS]), st.text(max_size=30)))
@settings(max_examples=300, deadline=None)
def test_parse_host_header_matches_starlette(header: str) -> None:
    from starlette._utils import parse_host_header

    expected = parse_host_header(header)
    assert _core.parse_host_header(header) == (None if expected is None else (expected.host, expected.port))


# --------------------------------------------------------------------------- HTTPSRedirect


@SETTINGS
@given(
    headers=headers_of(field("host", HOSTS)),
    scheme=st.sampled_from(["http", "https", "ws"]),
    server=st.sampled_from([("testserver", 80), ("::1", 8000), ("h", 443), None]),
    query=st.sampled_from([b"", b"a=1&b=%20", b"\xff"]),
)
async def test_https_redirect_matches_starlette(headers: Any, scheme: str, server: Any, query: bytes) -> None:
    app = endpoint([])
    kind = "websocket" if scheme == "ws" else "http"
    scope = http_scope(headers, type=kind, scheme=scheme, server=server, query_string=query)
    if server is None:
        del scope["server"]
    await same(HTTPSRedirectMiddleware(app), StarletteHTTPSRedirect(app), scope)


# --------------------------------------------------------------------------- GZip


def decoded(messages: list[Any]) -> list[Any]:
    """The messages with gzip bodies decompressed and the content-length of
    compressed responses left out (zlib-rs and zlib compress differently)."""
    start, *rest = messages
    encoded = (b"content-encoding", b"gzip") in start["headers"]
    headers = [(k, v) for k, v in start["headers"] if not (encoded and k == b"content-length")]
    out = [{**start, "headers": headers}]
    body = b"".join(m.get("body", b"") for m in rest)
    if encoded:
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
    out.append([{k: v for k, v in m.items() if k != "body"} for m in rest])
    out.append(body)
    return out


@SETTINGS
@given(
    headers=headers_of(field("accept-encoding", [b"gzip", b"gzip, br", b"identity", b"GZIP", b"br;q=1, gzip;q=0"])),
    content_type=st.sampled_from([b"text/plain", b"application/json", b"image/png", b"Text/Event-Stream; x", b"\xff"]),
    size=st.sampled_from([0, 10, 499, 500, 4000, 70_000]),
    chunks=st.integers(1, 3),
    extra=st.lists(st.sampled_from([(b"vary", b"Cookie"), (b"content-encoding", b"br")]), max_size=1),
)
async def test_gzip_matches_starlette(headers: Any, content_type: bytes, size: int, chunks: int, extra: Any) -> None:
    response_headers = [(b"content-type", content_type), (b"content-length", str(size * chunks).encode()), *extra]
    app = endpoint(response_headers, b"ab" * (size // 2), chunks)
    await same(GZipMiddleware(app), StarletteGZip(app), http_scope(headers), normalize=decoded)


@pytest.mark.parametrize("level", [1, 6, 9])
def test_gzip_stream_decompresses_with_python(level: int) -> None:
    data = b"".join(b'{"id": %d, "name": "item %d"}, ' % (i, i * 7) for i in range(5000))
    stream = _core.CompressStream("gzip", level)
    out = stream.compress(data[:70_000], True) + stream.compress(b"", True) + stream.compress(data[70_000:], False)
    assert gzip.decompress(out) == data
    assert gzip.decompress(_core.gzip_compress(data, level)) == data
