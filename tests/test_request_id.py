"""RequestIDMiddleware: its options, the contextvar wherever the request runs
(endpoint, exception handlers, the 500 handler, background tasks, under
dispatch layers), a differential test against asgi-correlation-id's
CorrelationIdMiddleware, and random header sets (absent, malformed,
non-UTF-8, 70 KB). Every async test runs on asyncio and trio."""

from __future__ import annotations

import copy
import itertools
import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

import fastapi
import pytest
import starlette.applications
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from asgi_correlation_id.middleware import is_valid_uuid4 as original_is_valid_uuid4
from helpers import Backend, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

import ferroware.applications
import ferroware.base
from ferroware.middleware import RequestIDMiddleware, get_request_id, request_id
from ferroware.middleware.requestid import FAILED_VALIDATION_MESSAGE, generate_request_id, is_valid_uuid4

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HEX32 = re.compile(r"[0-9a-f]{32}")
VALID = "1b4e28ba2fa1411d8e4f5e6f8a9b0c1d"


def recorder(seen: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    """A raw ASGI app that records the id and request headers it sees."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["id"] = get_request_id()
        seen["headers"] = list(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": list(headers or [])})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def response_ids(start: Message, name: bytes = b"x-request-id") -> list[bytes]:
    return [v for k, v in start["headers"] if k.lower() == name]


def request_ids(headers: list[tuple[bytes, bytes]], name: bytes = b"x-request-id") -> list[bytes]:
    return [v for k, v in headers if k == name]


# --------------------------------------------------------------------------- the compiled defaults


def test_generated_ids_look_like_uuid4_hex() -> None:
    ids = {generate_request_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert HEX32.fullmatch(value)
        assert uuid.UUID(value).version == 4
        assert uuid.UUID(value).variant == uuid.RFC_4122


# Characters that matter to UUID(): hex digits, its separators and prefixes,
# int()'s sign, prefix and underscores, ASCII and latin-1 whitespace.
uuidish = st.lists(
    st.one_of(
        st.sampled_from(list("0123456789abcdefABCDEF")),
        st.sampled_from(["-", "{", "}", "urn:", "uuid:", "u", "rn:", "id:", "_", "+", "0x", "0X", "x",
                         " ", "\t", "\n", "\x0b", "\x1c", "\x85", "\xa0", "\x00", "\x7f", "g", "\xff"]),  # fmt: skip
    ),
    max_size=45,
).map("".join)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(uuidish, st.text(st.characters(max_codepoint=0xFF), max_size=40), st.uuids().map(str)))
def test_is_valid_uuid4_agrees_with_the_original(text: str) -> None:
    assert is_valid_uuid4(text) == original_is_valid_uuid4(text)


@pytest.mark.parametrize(
    "text",
    [VALID, str(uuid.UUID(VALID)), "{" + str(uuid.UUID(VALID)) + "}", "urn:uuid:" + str(uuid.UUID(VALID)),
     " " + VALID[1:], "+" + VALID[1:], "0x" + VALID[2:], "0x_" + VALID[3:], VALID[:30] + "_0", "\xa0" + VALID[1:]],  # fmt: skip
)
def test_is_valid_uuid4_accepts_what_uuid_accepts(text: str) -> None:
    assert is_valid_uuid4(text)
    assert original_is_valid_uuid4(text)


@pytest.mark.parametrize("text", ["", "x", VALID[:31], VALID + "0", "\x1c" + VALID[1:], "0x__" + VALID[4:], VALID[:31] + "_"])
def test_is_valid_uuid4_refuses_what_uuid_refuses(text: str) -> None:
    assert not is_valid_uuid4(text)
    assert not original_is_valid_uuid4(text)


def test_is_valid_uuid4_refuses_text_beyond_latin1() -> None:
    # Python's int() reads other scripts' digits; a header never holds them.
    assert not is_valid_uuid4("\u0661" * 32)
    with pytest.raises(TypeError, match="expects a str"):
        is_valid_uuid4(VALID.encode())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- options


@pytest.mark.anyio
async def test_no_incoming_id_gets_a_new_one_everywhere() -> None:
    seen: dict[str, Any] = {}
    sent = await serve(RequestIDMiddleware(recorder(seen)))
    assert HEX32.fullmatch(seen["id"])
    assert request_ids(seen["headers"]) == [seen["id"].encode()]
    assert response_ids(sent[0]) == [seen["id"].encode()]


@pytest.mark.anyio
@pytest.mark.parametrize("incoming", [VALID, str(uuid.UUID(VALID)), VALID.upper()])
async def test_a_valid_incoming_id_is_kept_as_sent(incoming: str) -> None:
    seen: dict[str, Any] = {}
    headers = [(b"host", b"t"), (b"x-request-id", incoming.encode())]
    sent = await serve(RequestIDMiddleware(recorder(seen)), headers=headers)
    assert seen["id"] == incoming
    assert seen["headers"] == headers
    assert response_ids(sent[0]) == [incoming.encode()]


@pytest.mark.anyio
@pytest.mark.parametrize("incoming", [b"not-a-uuid", b"\xff\xfe", b"x" * 70_000, b"abc\r\nset-cookie: a=b"])
async def test_an_invalid_incoming_id_is_replaced_and_logged(incoming: bytes, caplog: pytest.LogCaptureFixture) -> None:
    seen: dict[str, Any] = {}
    headers = [(b"x-request-id", incoming), (b"x-request-id", VALID.encode()), (b"accept", b"*/*")]
    with caplog.at_level(logging.WARNING, logger="ferroware.middleware.requestid"):
        sent = await serve(RequestIDMiddleware(recorder(seen)), headers=headers)
    assert HEX32.fullmatch(seen["id"]) and seen["id"] != VALID
    # The first field gets the new id in place; the later one of that name goes (Starlette's headers[name] = v).
    assert seen["headers"] == [(b"x-request-id", seen["id"].encode()), (b"accept", b"*/*")]
    assert response_ids(sent[0]) == [seen["id"].encode()]
    assert [r.getMessage() for r in caplog.records] == [FAILED_VALIDATION_MESSAGE % seen["id"]]


@pytest.mark.anyio
async def test_an_empty_incoming_id_is_replaced_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    seen: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING):
        await serve(RequestIDMiddleware(recorder(seen)), headers=[(b"x-request-id", b"")])
    assert HEX32.fullmatch(seen["id"])
    assert caplog.records == []


@pytest.mark.anyio
async def test_update_request_header_false_leaves_the_request_alone() -> None:
    seen: dict[str, Any] = {}
    headers = [(b"x-request-id", b"bad")]
    sent = await serve(RequestIDMiddleware(recorder(seen), update_request_header=False), headers=headers)
    assert seen["headers"] == headers
    assert response_ids(sent[0]) == [seen["id"].encode()] and seen["id"] != "bad"


@pytest.mark.anyio
async def test_the_scopes_own_header_list_is_not_edited() -> None:
    original = [(b"host", b"t")]
    scope_headers = list(original)
    seen: dict[str, Any] = {}
    await serve(RequestIDMiddleware(recorder(seen)), headers=scope_headers)
    assert scope_headers == original
    assert len(seen["headers"]) == 2


@pytest.mark.anyio
async def test_custom_header_name_generator_validator_transformer(caplog: pytest.LogCaptureFixture) -> None:
    counter = itertools.count()
    seen: dict[str, Any] = {}
    middleware = RequestIDMiddleware(
        recorder(seen),
        header_name="X-Correlation-ID",
        generator=lambda: f"gen-{next(counter)}",
        validator=lambda value: value.startswith("ok-"),
        transformer=str.upper,
    )
    sent = await serve(middleware, headers=[(b"x-correlation-id", b"ok-abc")])
    assert seen["id"] == "OK-ABC"
    assert response_ids(sent[0], b"x-correlation-id") == [b"OK-ABC"]
    assert request_ids(seen["headers"], b"x-correlation-id") == [b"OK-ABC"]
    with caplog.at_level(logging.WARNING):
        sent = await serve(middleware, headers=[(b"x-correlation-id", b"nope")])
    assert seen["id"] == "GEN-0"
    assert response_ids(sent[0], b"x-correlation-id") == [b"GEN-0"]
    assert [r.getMessage() for r in caplog.records] == [FAILED_VALIDATION_MESSAGE % "GEN-0"]


@pytest.mark.anyio
async def test_validator_none_accepts_any_id_but_never_one_that_could_split_the_response() -> None:
    seen: dict[str, Any] = {}
    middleware = RequestIDMiddleware(recorder(seen), validator=None)
    await serve(middleware, headers=[(b"x-request-id", b"anything \xff")])
    assert seen["id"] == "anything \xff"
    sent = await serve(middleware, headers=[(b"x-request-id", b"a\r\nb")])
    assert HEX32.fullmatch(seen["id"])
    assert response_ids(sent[0]) == [seen["id"].encode()]


@pytest.mark.anyio
async def test_the_app_setting_its_own_id_field_still_gives_one() -> None:
    seen: dict[str, Any] = {}
    app = recorder(seen, headers=[(b"X-Request-ID", b"from-app"), (b"x-request-id", b"again"), (b"vary", b"a")])
    sent = await serve(RequestIDMiddleware(app))
    assert response_ids(sent[0]) == [seen["id"].encode()]
    assert (b"vary", b"a") in sent[0]["headers"]


@pytest.mark.anyio
async def test_a_shared_response_header_list_is_not_edited() -> None:
    shared = [(b"content-type", b"text/plain")]
    sent = await serve(RequestIDMiddleware(recorder({}, headers=shared)))
    sent = await serve(RequestIDMiddleware(recorder({}, headers=shared)))
    assert shared == [(b"content-type", b"text/plain")]
    assert len(response_ids(sent[0])) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: 123, TypeError, "generator returned int"),
        (lambda: "a\nb", ValueError, "the generator returned an unsendable id: invalid value for header 'x-request-id': it contains LF"),
        (lambda: "caf\u20ac", ValueError, "not latin-1"),
    ],
)
async def test_a_generator_returning_an_unsendable_id_raises_clearly(make: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        await serve(RequestIDMiddleware(recorder({}), generator=make))


@pytest.mark.anyio
async def test_a_transformer_returning_an_unsendable_id_raises_clearly() -> None:
    with pytest.raises(ValueError, match="the transformer returned an unsendable id: .* NUL"):
        await serve(RequestIDMiddleware(recorder({}), transformer=lambda v: v + "\0"))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"header_name": "X Request"}, ValueError, "invalid header name 'x request'"),
        ({"header_name": ""}, ValueError, "empty"),
        ({"header_name": "X-\u20ac"}, ValueError, "not latin-1"),
        ({"header_name": b"x-id"}, TypeError, "header_name must be a str"),
        ({"generator": "uuid"}, TypeError, "generator must be callable"),
        ({"generator": None}, TypeError, "generator must be callable"),
        ({"validator": 1}, TypeError, "validator must be callable"),
        ({"transformer": "upper"}, TypeError, "transformer must be callable"),
    ],
)
def test_bad_constructor_arguments_raise_clearly(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        RequestIDMiddleware(recorder({}), **kwargs)


@pytest.mark.anyio
async def test_other_scope_types_pass_through_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(copy.copy(scope))
        assert get_request_id() is None

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None: ...

    await RequestIDMiddleware(app)(scope, nothing, ignore)
    assert seen == [scope]


def test_websocket_gets_the_id_in_the_scope_and_contextvar_not_in_accept(anyio_backend: Backend) -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"var": get_request_id(), "header": websocket.headers.get("x-request-id")})
        await websocket.close()

    app = starlette.applications.Starlette(routes=[WebSocketRoute("/ws", ws)])
    app.add_middleware(RequestIDMiddleware)
    with TestClient(app, backend=anyio_backend) as client:
        with client.websocket_connect("/ws", headers={"X-Request-ID": "bad"}) as connection:
            got = connection.receive_json()
    assert HEX32.fullmatch(got["var"])
    assert got["header"] == got["var"]


# --------------------------------------------------------------------------- the contextvar in a real app

APP_KINDS = ["starlette", "fastapi", "ferroware.Starlette", "ferroware.FastAPI"]


def build_app(kind: str, log: dict[str, Any], *, layers: bool) -> Any:
    """An app whose endpoint, handlers, background task and (optionally) a
    ferroware ``@app.middleware("http")`` layer and a stock BaseHTTPMiddleware
    layer, both inside RequestIDMiddleware, record the id they see."""

    def record(where: str) -> None:
        log.setdefault(where, []).append(get_request_id())

    async def ok(request: Request) -> Response:
        record("endpoint")
        return PlainTextResponse("ok", background=BackgroundTask(record, "background"))

    async def missing(request: Request) -> Response:
        raise HTTPException(404, "nope")

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def http_handler(request: Request, exc: Exception) -> Response:
        record("http_handler")
        return JSONResponse({"id": get_request_id()}, status_code=404)

    async def error_handler(request: Request, exc: Exception) -> Response:
        record("500_handler")
        return JSONResponse({"id": get_request_id()}, status_code=500)

    async def dispatch(request: Request, call_next: Any) -> Response:
        record(f"dispatch:{type(request).__module__.split('.')[0]}")
        response: Response = await call_next(request)
        return response

    routes: list[BaseRoute] = [Route("/", ok), Route("/missing", missing), Route("/boom", boom)]
    handlers: dict[Any, Any] = {HTTPException: http_handler, 500: error_handler}
    app: Any
    if kind == "starlette":
        app = starlette.applications.Starlette(routes=routes, exception_handlers=handlers)
    elif kind == "fastapi":
        app = fastapi.FastAPI(routes=routes, exception_handlers=handlers)
    elif kind == "ferroware.Starlette":
        app = ferroware.applications.Starlette(routes=routes, exception_handlers=handlers)
    else:
        app = ferroware.applications.FastAPI(routes=routes, exception_handlers=handlers)
    if layers:
        app.add_middleware(StockBaseHTTPMiddleware, dispatch=dispatch)
        if kind.startswith("ferroware"):
            app.middleware("http")(dispatch)
        else:
            app.add_middleware(ferroware.base.BaseHTTPMiddleware, dispatch=dispatch)
    app.add_middleware(RequestIDMiddleware)
    return app


@pytest.mark.parametrize("layers", [False, True], ids=["bare", "with-dispatch-layers"])
@pytest.mark.parametrize("kind", APP_KINDS)
def test_the_id_is_visible_wherever_the_request_runs(kind: str, layers: bool, anyio_backend: Backend) -> None:
    log: dict[str, Any] = {}
    app = build_app(kind, log, layers=layers)
    with TestClient(app, backend=anyio_backend, raise_server_exceptions=False) as client:
        ok = client.get("/", headers={"X-Request-ID": VALID})
        missing = client.get("/missing")
        boom = client.get("/boom")
    assert ok.headers["x-request-id"] == VALID
    assert log["endpoint"] == [VALID]
    assert log["background"] == [VALID]

    assert missing.status_code == 404
    assert HEX32.fullmatch(missing.headers["x-request-id"])
    assert log["http_handler"] == [missing.headers["x-request-id"]] == [missing.json()["id"]]

    # The 500 handler runs outside every user middleware (ServerErrorMiddleware),
    # after the app raised: the id is still there, as the var is not reset.
    assert boom.status_code == 500
    assert HEX32.fullmatch(boom.json()["id"])
    assert log["500_handler"] == [boom.json()["id"]]
    # The 500 response is sent by ServerErrorMiddleware, outside RequestIDMiddleware.
    assert "x-request-id" not in boom.headers
    if layers:
        dispatch_ids = [entry for key, entries in log.items() if key.startswith("dispatch") for entry in entries]
        assert len(dispatch_ids) == 6
        assert dispatch_ids.count(VALID) == 2
    assert request_id.get() is None  # the test's own context never saw a request


@pytest.mark.parametrize("kind", APP_KINDS)
def test_under_add_middleware_the_header_round_trips(kind: str, anyio_backend: Backend) -> None:
    async def echo(request: Request) -> Response:
        return JSONResponse({"header": request.headers.get("x-request-id"), "var": get_request_id()})

    app = build_app(kind, {}, layers=False)
    app.router.routes.append(Route("/echo", echo))
    with TestClient(app, backend=anyio_backend) as client:
        given_id = client.get("/echo", headers={"X-Request-ID": VALID})
        new_id = client.get("/echo", headers={"X-Request-ID": "short"})
    assert given_id.json() == {"header": VALID, "var": VALID}
    assert given_id.headers.get_list("x-request-id") == [VALID]
    fresh = new_id.headers["x-request-id"]
    assert HEX32.fullmatch(fresh) and new_id.json() == {"header": fresh, "var": fresh}


# --------------------------------------------------------------------------- against asgi-correlation-id

# Header values: printable text, any bytes (non-UTF-8 too), uuid shapes, huge.
values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.encode),
    st.binary(max_size=40),
    st.uuids().map(lambda u: str(u).encode()),
    st.uuids().map(lambda u: u.hex.encode()),
    uuidish.map(lambda t: t.encode("latin-1")),
    st.sampled_from([b"", b" ", b"\xff\xfe", b"null", VALID.encode(), b"x" * 70_000]),
)
request_headers = st.lists(
    st.tuples(st.sampled_from([b"x-request-id", b"x-correlation-id", b"host", b"x-other"]), values), max_size=4
)
response_headers = st.lists(
    st.tuples(st.sampled_from([b"content-type", b"x-other", b"vary"]), values), max_size=3
)

CONFIGS: list[dict[str, Any]] = [
    {},
    {"validator": None},
    {"update_request_header": False},
    {"header_name": "X-Correlation-ID", "transformer": lambda value: value[:8]},
    {"validator": lambda value: len(value) < 10, "transformer": str.strip},
]


async def run_one(middleware_cls: type, config: dict[str, Any], var: Any, scope: Scope, app_headers: Any) -> Any:
    """The messages sent, what the app saw, and the warnings logged."""
    counter = itertools.count()
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["var"] = var.get()
        seen["headers"] = list(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": list(app_headers)})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = middleware_cls(app, generator=lambda: f"{next(counter):032x}", **config)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    loggers = [logging.getLogger("asgi_correlation_id"), logging.getLogger("ferroware.middleware.requestid")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False  # thousands of examples: keep them out of pytest's log capture
    try:
        await middleware(copy.deepcopy(scope), receive, send)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.propagate = True
    return sent, seen, records


def splits_response(values: list[bytes]) -> bool:
    return any(c in value for value in values for c in b"\r\n\0")


def first_id(config: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    name = config.get("header_name", "X-Request-ID").lower().encode()
    return request_ids(headers, name)[:1]


@pytest.mark.anyio
@SETTINGS
@given(config=st.sampled_from(CONFIGS), headers=request_headers, app_headers=response_headers)
async def test_same_as_asgi_correlation_id(config: dict[str, Any], headers: Any, app_headers: Any) -> None:
    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    ours = await run_one(RequestIDMiddleware, config, request_id, scope, app_headers)
    theirs = await run_one(CorrelationIdMiddleware, config, correlation_id, scope, app_headers)
    if splits_response(first_id(config, headers)):
        # A deliberate difference: an incoming id with CR, LF or NUL is never echoed.
        sent, _, _ = ours
        assert not splits_response(response_ids(sent[0], b"x-correlation-id") + response_ids(sent[0]))
        return
    assert ours == theirs


# --------------------------------------------------------------------------- random header sets


@pytest.mark.anyio
@SETTINGS
@given(config=st.sampled_from(CONFIGS), headers=request_headers, app_headers=response_headers,
       app_id=st.lists(st.sampled_from([b"x-request-id", b"X-Correlation-Id"]), max_size=2))  # fmt: skip
async def test_random_headers_give_exactly_one_id(config: dict[str, Any], headers: Any, app_headers: Any, app_id: Any) -> None:
    name = config.get("header_name", "X-Request-ID").lower().encode()
    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    sent, seen, _ = await run_one(RequestIDMiddleware, config, request_id, scope, app_headers + [(n, b"app") for n in app_id])
    sent_ids = response_ids(sent[0], name)
    # One field with the id. A transformer that made the id empty leaves the
    # response as the app made it (as in asgi-correlation-id).
    app_ids = [b"app" for n in app_id if n.lower() == name]
    assert sent_ids == ([seen["var"].encode("latin-1")] if seen["var"] else app_ids)
    assert not splits_response(sent_ids)
    if config.get("update_request_header", True):
        # The app sees the id in the first field of that name (later ones only stay if it was there already).
        assert request_ids(seen["headers"], name)[:1] == [seen["var"].encode("latin-1")]
    else:
        assert seen["headers"] == headers


def test_public_names() -> None:
    import ferroware.middleware as middleware

    # The contextvar is not shadowed by (nor shadows) the module it lives in.
    assert isinstance(middleware.request_id, ContextVar) and middleware.request_id is request_id
    assert middleware.requestid.request_id is request_id
    assert middleware.get_request_id is get_request_id
    assert "RequestIDMiddleware" in middleware.__all__


@pytest.mark.parametrize(
    ("app_cls", "outer", "visible"),
    [
        pytest.param(starlette.applications.Starlette, StockBaseHTTPMiddleware, False, id="stock-app-stock-layer"),
        pytest.param(starlette.applications.Starlette, ferroware.base.BaseHTTPMiddleware, True, id="stock-app-ferroware-layer"),
        pytest.param(ferroware.applications.Starlette, StockBaseHTTPMiddleware, True, id="ferroware-app-stock-layer"),
    ],
)
def test_a_dispatch_layer_outside_and_the_500_handler(app_cls: Any, outer: Any, visible: bool, anyio_backend: Backend) -> None:
    """Stock BaseHTTPMiddleware runs the inner app in a child task, so a value
    set there never reaches ServerErrorMiddleware (with asgi-correlation-id too);
    ferroware's dispatcher runs it in the dispatch's own task, so it does."""

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def error_handler(request: Request, exc: Exception) -> Response:
        return JSONResponse({"id": get_request_id()}, status_code=500)

    async def dispatch(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        return response

    app = app_cls(routes=[Route("/", boom)], exception_handlers={500: error_handler})
    app.add_middleware(RequestIDMiddleware)
    app.add_middleware(outer, dispatch=dispatch)
    with TestClient(app, backend=anyio_backend, raise_server_exceptions=False) as client:
        seen = client.get("/", headers={"X-Request-ID": VALID}).json()["id"]
    assert seen == (VALID if visible else None)
