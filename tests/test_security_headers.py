"""SecurityHeadersMiddleware: presets, overrides, None-disables, no
duplicates, overwrite, HSTS on https only, constructor validation, random
response header sets, and real apps under add_middleware. Every async test
runs on asyncio and trio."""

from __future__ import annotations

import re
from typing import Any

import fastapi
import pytest
import starlette.applications
from helpers import Backend, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

import ferroware.applications
from ferroware.middleware import SecurityHeadersMiddleware
from ferroware.middleware.securityheaders import PRESETS

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

DEFAULT = [
    (b"strict-transport-security", b"max-age=31536000"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
]
STRICT = [
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"content-security-policy", b"default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"),  # noqa: E501
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()"),  # noqa: E501
    (b"x-permitted-cross-domain-policies", b"none"),
]
HSTS = b"strict-transport-security"
BASE = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"2")]


def endpoint(headers: Any = BASE, with_key: bool = True) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {"type": "http.response.start", "status": 200}
        if with_key:
            start["headers"] = headers
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def start_headers(middleware: Any, scheme: str = "https") -> list[tuple[bytes, bytes]]:
    sent = await serve(middleware, scheme=scheme)
    assert sent[1]["body"] == b"ok"
    return list(sent[0]["headers"])


pytestmark = pytest.mark.anyio


async def test_default_preset_over_https() -> None:
    assert await start_headers(SecurityHeadersMiddleware(endpoint())) == BASE + DEFAULT


async def test_no_hsts_over_plain_http_unless_asked() -> None:
    assert await start_headers(SecurityHeadersMiddleware(endpoint()), scheme="http") == BASE + DEFAULT[1:]
    forced = SecurityHeadersMiddleware(endpoint(), hsts_on_http=True)
    assert await start_headers(forced, scheme="http") == BASE + DEFAULT


async def test_a_scope_without_scheme_counts_as_http() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    await SecurityHeadersMiddleware(endpoint())({"type": "http", "headers": []}, receive, send)
    assert HSTS not in dict(sent[0]["headers"])


async def test_strict_preset() -> None:
    assert await start_headers(SecurityHeadersMiddleware(endpoint(), "strict")) == BASE + STRICT


def test_presets_table_matches_what_is_sent() -> None:
    names = {"hsts": "strict-transport-security"}
    for preset, expected in (("default", DEFAULT), ("strict", STRICT)):
        middleware = SecurityHeadersMiddleware(endpoint(), preset)  # type: ignore[arg-type]
        assert [(k.lower().encode(), v.encode()) for k, v in middleware.headers.items()] == expected
        sent = {names.get(arg, arg.replace("_", "-")).encode(): v.encode() for arg, v in PRESETS[preset].items() if v}
        assert sent == dict(expected)


async def test_arguments_override_the_preset_and_none_disables() -> None:
    middleware = SecurityHeadersMiddleware(
        endpoint(),
        "strict",
        content_security_policy="default-src 'self' cdn.example",
        hsts=None,
        x_frame_options=None,
        cross_origin_embedder_policy="require-corp",
        extra_headers={"X-XSS-Protection": "0"},
    )
    headers = dict(await start_headers(middleware))
    assert headers[b"content-security-policy"] == b"default-src 'self' cdn.example"
    assert HSTS not in headers and b"x-frame-options" not in headers
    assert headers[b"cross-origin-embedder-policy"] == b"require-corp"
    assert headers[b"x-xss-protection"] == b"0"
    assert headers[b"referrer-policy"] == b"no-referrer"


async def test_all_disabled_sends_the_response_unchanged() -> None:
    off: dict[str, Any] = dict.fromkeys(PRESETS["strict"], None)
    assert await start_headers(SecurityHeadersMiddleware(endpoint(), "strict", **off)) == BASE


async def test_a_header_the_app_set_is_left_alone_in_any_case() -> None:
    app_headers = [(b"X-Frame-Options", b"ALLOW-FROM x"), (b"referrer-policy", b"origin"), (b"referrer-policy", b"same-origin")]
    headers = await start_headers(SecurityHeadersMiddleware(endpoint(app_headers)))
    assert headers == app_headers + [DEFAULT[0], DEFAULT[1]]


async def test_overwrite_replaces_in_place_without_duplicates() -> None:
    app_headers = [(b"X-Frame-Options", b"ALLOW-FROM x"), (b"vary", b"a"), (b"referrer-policy", b"origin"),
                   (b"Referrer-Policy", b"same-origin"), (HSTS, b"max-age=1")]  # fmt: skip
    headers = await start_headers(SecurityHeadersMiddleware(endpoint(app_headers), overwrite=True))
    assert headers == [
        (b"x-frame-options", b"SAMEORIGIN"),
        (b"vary", b"a"),
        (b"referrer-policy", b"strict-origin-when-cross-origin"),
        DEFAULT[0],
        (b"x-content-type-options", b"nosniff"),
    ]


async def test_overwrite_over_http_leaves_the_apps_hsts() -> None:
    app_headers = [(HSTS, b"max-age=1"), (HSTS, b"max-age=2")]
    headers = await start_headers(SecurityHeadersMiddleware(endpoint(app_headers), overwrite=True), scheme="http")
    assert headers == app_headers + DEFAULT[1:]


async def test_the_apps_header_list_is_not_edited() -> None:
    shared = list(BASE)
    for _ in range(2):
        assert await start_headers(SecurityHeadersMiddleware(endpoint(shared))) == BASE + DEFAULT
    assert shared == BASE


@pytest.mark.parametrize("headers", [tuple(BASE), None])
async def test_tuple_or_missing_header_lists(headers: Any) -> None:
    got = await start_headers(SecurityHeadersMiddleware(endpoint(headers, with_key=headers is not None)))
    assert got == list(headers or []) + DEFAULT


async def test_other_scope_types_pass_through() -> None:
    calls: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(send)

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None: ...

    for kind in ("websocket", "lifespan"):
        await SecurityHeadersMiddleware(app)({"type": kind}, receive, send)
    assert calls == [send, send]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"content_security_policy": "default-src 'self'\r\nSet-Cookie: a=b"}, ValueError,
         "invalid value for header 'content-security-policy': it contains CR"),
        ({"referrer_policy": "no-referrer\0"}, ValueError, "'referrer-policy': it contains NUL"),
        ({"x_frame_options": "DENY\n"}, ValueError, "'x-frame-options': it contains LF"),
        ({"permissions_policy": "camera=(\u20ac)"}, ValueError, "'permissions-policy': 'camera=(\u20ac)' is not latin-1"),
        ({"extra_headers": {"X Bad": "1"}}, ValueError, "invalid header name 'x bad'"),
        ({"extra_headers": {"": "1"}}, ValueError, "empty"),
        ({"extra_headers": {"x-frame-options": "DENY"}}, ValueError, "'x-frame-options' is given twice"),
        ({"extra_headers": {"X-A": "1", "x-a": "2"}}, ValueError, "'x-a' is given twice"),
        ({"extra_headers": {"X-A": 1}}, TypeError, "extra_headers must map str to str"),
        ({"hsts": 31536000}, TypeError, "hsts must be a str or None, got int"),
        ({"preset": "paranoid"}, ValueError, "unknown preset 'paranoid'"),
    ],
)  # fmt: skip
def test_bad_constructor_arguments_raise_clearly(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        SecurityHeadersMiddleware(endpoint(), **kwargs)


# --------------------------------------------------------------------------- random response headers

SECURITY_NAMES = [name for name, _ in STRICT] + [b"x-xss-protection"]
values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.encode),
    st.binary(max_size=30),
    st.sampled_from([b"", b"\xff\xfe", b"x" * 70_000]),
)
names = st.one_of(
    st.sampled_from(SECURITY_NAMES).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()])),
    st.sampled_from([b"content-type", b"vary", b"set-cookie"]),
    st.binary(min_size=1, max_size=12),
)


def lower(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [k.lower() for k, _ in headers]


@SETTINGS
@given(
    app_headers=st.lists(st.tuples(names, values), max_size=8),
    preset=st.sampled_from(["default", "strict"]),
    overwrite=st.booleans(),
    scheme=st.sampled_from(["http", "https"]),
)
async def test_random_response_headers(app_headers: Any, preset: Any, overwrite: bool, scheme: str) -> None:
    middleware = SecurityHeadersMiddleware(endpoint(app_headers), preset, overwrite=overwrite)
    ours = {k.lower().encode(): v.encode() for k, v in middleware.headers.items()}
    if scheme == "http":
        del ours[HSTS]
    got = await start_headers(middleware, scheme=scheme)
    got_names, app_names = lower(got), lower(app_headers)
    for name, value in ours.items():
        if name not in app_names:
            assert got_names.count(name) == 1 and dict(got)[name] == value
        elif overwrite:
            assert [v for k, v in got if k.lower() == name] == [value]
        else:
            assert [v for k, v in got if k.lower() == name] == [v for k, v in app_headers if k.lower() == name]
    # Every other field of the app's is still there, in order.
    others = [(k, v) for k, v in app_headers if k.lower() not in ours]
    assert [(k, v) for k, v in got if k.lower() not in ours] == others
    # Nothing is duplicated that the app did not duplicate itself.
    for name in set(got_names):
        assert got_names.count(name) <= max(1, app_names.count(name))


# --------------------------------------------------------------------------- real apps


async def hello(request: Any) -> Response:
    return PlainTextResponse("hi", headers={"X-Frame-Options": "DENY"})


@pytest.mark.parametrize(
    "app_cls",
    [starlette.applications.Starlette, fastapi.FastAPI, ferroware.applications.Starlette, ferroware.applications.FastAPI],
)
def test_under_add_middleware(app_cls: Any, anyio_backend: Backend) -> None:
    app = app_cls(routes=[Route("/", hello)])
    app.add_middleware(SecurityHeadersMiddleware, preset="strict")
    with TestClient(app, backend=anyio_backend, base_url="https://testserver") as client:
        response = client.get("/")
    assert response.text == "hi"
    assert response.headers.get_list("x-frame-options") == ["DENY"]
    for name, value in STRICT:
        assert response.headers.get_list(name.decode()) == [value.decode()]
    with TestClient(app, backend=anyio_backend) as client:
        assert "strict-transport-security" not in client.get("/").headers
