"""ferroware.middleware against Starlette's classes of the same names, side by
side in one run.

Each round runs REQUESTS requests through the middleware in front of a trivial
ASGI app, batched inside one coroutine (nothing suspends, so it is stepped with
``send(None)``, no event loop), with fresh scope and message dicts per request.
The bare app is measured too: the summary subtracts it, giving the
middleware's own cost per request, and the ratio (target >= 3x). GZip: one
100 KiB JSON response at level 9 (Starlette's default) per round, both
compressed sizes reported (target: at least as fast, sizes within 1%)."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from asgi_correlation_id import CorrelationIdMiddleware
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware as StarletteCORS
from starlette.middleware.gzip import GZipMiddleware as StarletteGZip
from starlette.middleware.trustedhost import TrustedHostMiddleware as StarletteTrustedHost

from ferroware.middleware import (
    CompressionMiddleware,
    CORSMiddleware,
    GZipMiddleware,
    RequestIDMiddleware,
    SecurityHeadersMiddleware,
    TrustedHostMiddleware,
)

REQUESTS = 2000
IMPLS = {"starlette": (StarletteCORS, StarletteTrustedHost, StarletteGZip), "ferroware": (CORSMiddleware, TrustedHostMiddleware, GZipMiddleware)}  # fmt: skip
CORS_CONFIG = {"allow_origins": ["https://app.example", "https://admin.example"], "allow_methods": ["GET", "POST"],
               "allow_headers": ["X-Token"], "allow_credentials": True}  # fmt: skip


def _json_body() -> bytes:
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10))) for _ in range(400)]
    rows: list[dict[str, Any]] = []
    while len(json.dumps(rows)) < 100 * 1024:
        rows.append({"id": len(rows), "user": rng.choice(words) + str(rng.randint(1, 999)),
                     "email": f"{rng.choice(words)}@{rng.choice(words)}.com", "score": round(rng.random() * 1000, 3),
                     "active": rng.random() < 0.5, "tags": rng.sample(words, 3), "bio": " ".join(rng.choices(words, k=8))})  # fmt: skip
    return json.dumps(rows).encode()[: 100 * 1024]


JSON_BODY = _json_body()
RESPONSE_BODY = b"Hello, world!"


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")]})  # fmt: skip
    await send({"type": "http.response.body", "body": RESPONSE_BODY})


async def json_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(JSON_BODY)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": JSON_BODY})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def scope_for(method: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "", "server": ("app.example", 80),
            "client": ("127.0.0.1", 5000), "headers": headers}  # fmt: skip


SIMPLE = lambda: scope_for("GET", [(b"host", b"app.example"), (b"origin", b"https://app.example"), (b"accept", b"*/*")])  # noqa: E731
PREFLIGHT = lambda: scope_for("OPTIONS", [(b"host", b"app.example"), (b"origin", b"https://app.example"),  # noqa: E731
                                          (b"access-control-request-method", b"POST"),
                                          (b"access-control-request-headers", b"x-token, content-type")])  # fmt: skip
HOSTED = lambda: scope_for("GET", [(b"host", b"api.example.com:8000"), (b"accept", b"*/*")])  # noqa: E731


def batch(asgi: Any, make_scope: Callable[[], dict[str, Any]], n: int) -> Callable[[], list[Any]]:
    def run() -> list[Any]:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def many() -> None:
            for _ in range(n):
                await asgi(make_scope(), receive, send)

        coro = many()
        try:
            coro.send(None)
        except StopIteration:
            pass
        else:  # pragma: no cover
            raise RuntimeError("the batch suspended")
        return sent

    return run


CASES = {
    "cors-simple": (0, {**CORS_CONFIG}, SIMPLE),
    "cors-preflight": (0, {**CORS_CONFIG}, PREFLIGHT),
    "trustedhost": (1, {"allowed_hosts": ["example.com", "*.example.com"]}, HOSTED),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["bare", *IMPLS])
def test_middleware(benchmark: Any, case: str, impl: str) -> None:
    index, config, make_scope = CASES[case]
    asgi = app if impl == "bare" else IMPLS[impl][index](app, **config)
    benchmark.group = case
    benchmark.extra_info.update(builtin_case=case, builtin_impl=impl, requests=REQUESTS)
    sent = benchmark(batch(asgi, make_scope, REQUESTS))
    assert len(sent) == 2 * REQUESTS
    if case == "cors-preflight" and impl != "bare":
        assert sent[0]["status"] == 200


@pytest.mark.parametrize("impl", list(IMPLS))
def test_gzip_100k_json(benchmark: Any, impl: str) -> None:
    asgi = IMPLS[impl][2](json_app)
    benchmark.group = "gzip-100k-json"
    make_scope = lambda: scope_for("GET", [(b"host", b"app.example"), (b"accept-encoding", b"gzip, br")])  # noqa: E731
    sent = benchmark(batch(asgi, make_scope, 1))
    body = sent[1]["body"]
    assert zlib.decompress(body, 16 + zlib.MAX_WBITS) == JSON_BODY
    benchmark.extra_info.update(builtin_case="gzip-100k-json", builtin_impl=impl, requests=1, size=len(body), raw=len(JSON_BODY))


# CompressionMiddleware at its defaults against Starlette's GZipMiddleware at its
# default (level 9) and at CompressionMiddleware's gzip level (6), same body.
COMPRESSION_IMPLS = {
    "starlette gzip-9": (lambda a: StarletteGZip(a), "gzip"),
    "starlette gzip-6": (lambda a: StarletteGZip(a, compresslevel=6), "gzip"),
    "ferroware gzip-6": (lambda a: CompressionMiddleware(a), "gzip"),
    "ferroware br-4": (lambda a: CompressionMiddleware(a), "br"),
    "ferroware zstd-3": (lambda a: CompressionMiddleware(a), "zstd"),
}


@pytest.mark.parametrize("impl", list(COMPRESSION_IMPLS))
def test_compression_100k_json(benchmark: Any, impl: str) -> None:
    make, coding = COMPRESSION_IMPLS[impl]
    asgi = make(json_app)
    benchmark.group = "compression-100k-json"
    make_scope = lambda: scope_for("GET", [(b"host", b"app.example"), (b"accept-encoding", coding.encode())])  # noqa: E731
    sent = benchmark(batch(asgi, make_scope, 1))
    assert dict(sent[0]["headers"])[b"content-encoding"] == coding.encode()
    benchmark.extra_info.update(compression_impl=impl, size=len(sent[1]["body"]), raw=len(JSON_BODY))


# --------------------------------------------------------------------------- request id and security headers
# No Starlette class to compare with: the reference ("python") is
# asgi-correlation-id's CorrelationIdMiddleware, and for the security headers
# the same fields set with Starlette's MutableHeaders in a plain pure-ASGI layer.


class PythonSecurityHeaders:
    """SecurityHeadersMiddleware's default preset, written the usual way."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = SecurityHeadersMiddleware(app).headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if https or name != "Strict-Transport-Security":
                        headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


GIVEN_ID = b"1b4e28ba2fa1411d8e4f5e6f8a9b0c1d"
EXTRA_CASES: dict[str, tuple[dict[str, Any], Callable[[], dict[str, Any]]]] = {
    "request-id-new": ({"python": CorrelationIdMiddleware, "ferroware": RequestIDMiddleware}, SIMPLE),
    "request-id-given": ({"python": CorrelationIdMiddleware, "ferroware": RequestIDMiddleware},
                         lambda: scope_for("GET", [(b"host", b"app.example"), (b"x-request-id", GIVEN_ID), (b"accept", b"*/*")])),
    "security-headers": ({"python": PythonSecurityHeaders, "ferroware": SecurityHeadersMiddleware},
                         lambda: {**scope_for("GET", [(b"host", b"app.example"), (b"accept", b"*/*")]), "scheme": "https"}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXTRA_CASES))
@pytest.mark.parametrize("impl", ["bare", "python", "ferroware"])
def test_request_id_and_security_headers(benchmark: Any, case: str, impl: str) -> None:
    classes, make_scope = EXTRA_CASES[case]
    asgi = app if impl == "bare" else classes[impl](app)
    benchmark.group = case
    benchmark.extra_info.update(builtin_case=case, builtin_impl=impl, requests=REQUESTS)
    sent = benchmark(batch(asgi, make_scope, REQUESTS))
    assert len(sent) == 2 * REQUESTS
    if impl != "bare":
        names = [k for k, _ in sent[0]["headers"]]
        assert (b"x-request-id" in names) if case.startswith("request-id") else (b"strict-transport-security" in names)
