"""Reassigning a layer's ``app`` or ``dispatch_func`` after requests went
through it takes effect on the next request, inner layers included (their
compiled links to each other are made again)."""

from __future__ import annotations

import pytest
from helpers import serve
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ferroware import BaseHTTPMiddleware


def _answer(body: bytes):  # type: ignore[no-untyped-def]
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


async def passthrough(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
    return await call_next(request)


async def _body(app: BaseHTTPMiddleware) -> bytes:
    return b"".join(message.get("body", b"") for message in await serve(app))


@pytest.mark.anyio
async def test_inner_layer_app_reassigned() -> None:
    inner = BaseHTTPMiddleware(_answer(b"first"), dispatch=passthrough)
    outer = BaseHTTPMiddleware(inner, dispatch=passthrough)
    assert await _body(outer) == b"first"
    inner.app = _answer(b"second")
    assert await _body(outer) == b"second"


@pytest.mark.anyio
async def test_inner_layer_dispatch_reassigned() -> None:
    inner = BaseHTTPMiddleware(_answer(b"body"), dispatch=passthrough)
    outer = BaseHTTPMiddleware(inner, dispatch=passthrough)
    assert await _body(outer) == b"body"

    async def replace(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
        await call_next(request)
        return Response(b"replaced")

    inner.dispatch_func = replace
    assert await _body(outer) == b"replaced"
