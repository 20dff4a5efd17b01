"""The CPython details the dispatcher checks at import (docs/design.md) hold
here; and the request and response the layer builds without ``__init__``
(rust/objects.rs) behave as ordinary instances: the symptoms CPython 3.13.0
showed when their ``__dict__`` was handed over with ``PyObject_GenericSetDict``
(attributes not found), checked against stock Starlette."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import starlette.middleware.base
from helpers import Backend
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import ferroware
from ferroware import _core
from ferroware.base import HOOKS

LAYERS = [
    pytest.param(starlette.middleware.base.BaseHTTPMiddleware, id="stock"),
    pytest.param(ferroware.BaseHTTPMiddleware, id="ferroware"),
]


def test_this_interpreter_builds_them_directly() -> None:
    # The fallback (object.__new__ and setattr) is correct but slower: on a
    # supported CPython the direct way must pass its check.
    assert HOOKS.builds_directly


def test_this_interpreter_lays_contexts_out_as_expected() -> None:
    # Likewise for telling that the app changed no contextvar (rust/context.rs).
    assert _core.reads_context_maps()


async def chunks() -> AsyncIterator[bytes]:
    yield b"one "
    yield b"two"


async def streamed(request: Request) -> Response:
    return StreamingResponse(chunks())


async def plain(request: Request) -> Response:
    return PlainTextResponse("plain")


def client(layer: type, backend: Backend, ran: list[str]) -> TestClient:
    async def dispatch(request: Request, call_next: starlette.middleware.base.RequestResponseEndpoint) -> Response:
        assert request.scope["path"] in ("/plain", "/streamed")
        response = await call_next(request)
        response.headers["x-status"] = str(response.status_code)
        response.background = BackgroundTask(ran.append, request.url.path)
        return response

    app = Starlette(
        routes=[Route("/plain", plain), Route("/streamed", streamed)],
        middleware=[Middleware(layer, dispatch=dispatch)],
    )
    return TestClient(app, backend=backend)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("path", ["/plain", "/streamed"])
def test_layer_reads_status_and_sets_background(layer: type, path: str, anyio_backend: Backend) -> None:
    ran: list[str] = []
    with client(layer, anyio_backend, ran) as test_client:
        response = test_client.get(path)
    assert response.status_code == 200
    assert response.headers["x-status"] == "200"
    assert response.text == ("plain" if path == "/plain" else "one two")
    assert ran == [path]
