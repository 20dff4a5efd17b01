"""What the two in-process fuzz tests share: the middleware stack both stocks of
it are built from, the request scope, and how their errors are compared."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Scope

# Each example's run is bounded by ``anyio.fail_after(TIMEOUT)``: a hang fails it.
TIMEOUT = 5.0

# Stock Starlette, the reference run, leaves its ``body_stream`` generator
# unfinished when the client's send fails on trio, and trio reports it when the
# generator is collected. That is stock's own leak (recorded in
# docs/reliability.md), not ferroware's: only that exact report is ignored.
STOCK_BODY_STREAM_LEAK = (
    "ignore:Exception ignored in. <async_generator object "
    "BaseHTTPMiddleware.__call__.<locals>.call_next.<locals>.body_stream:pytest.PytestUnraisableExceptionWarning"
)


class AppError(Exception):
    """Raised by the downstream app on purpose."""


class Relayed:
    """An async iterator over another (not a generator: Starlette's
    ``StreamingResponse`` leaves its iterator unfinished when its task is
    cancelled, and trio would warn of a generator collected so)."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self.body = body

    def __aiter__(self) -> Relayed:
        return self

    async def __anext__(self) -> bytes:
        return await self.body.__anext__()


def build(base: type, app: ASGIApp, read: str, restream: bool = False) -> ASGIApp:
    """Three layers of ``base`` (ferroware's or Starlette's ``BaseHTTPMiddleware``)
    over ``app``: one passes through (or, with ``restream``, answers a
    ``StreamingResponse`` over ``call_next``'s body, which it then pulls from a
    task of its own on ASGI 2.3), one edits the response headers, the innermost
    reads the request body first (``read``: "none", "body" or "stream")."""

    async def passthrough(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if not restream:
            return response
        headers = dict(response.headers)
        return StreamingResponse(Relayed(response.body_iterator), status_code=response.status_code, headers=headers)

    async def reader(request: Request, call_next: Any) -> Any:
        if read == "body":
            await request.body()
        elif read == "stream":
            async for _ in request.stream():
                pass
        return await call_next(request)

    async def edits_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-edited"] = "1"
        return response

    return base(base(base(app, dispatch=reader), dispatch=edits_headers), dispatch=passthrough)


def http_scope(spec: str) -> Scope:
    """A POST request's scope, from a server that speaks ASGI spec ``spec``."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": spec}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/", "raw_path": b"/", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "state": {},
    }  # fmt: skip


def raised(error: BaseException | None, kind: type[BaseException]) -> bool:
    """``error`` is of ``kind``, or an exception group holding one."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(kind) is not None
    return type(error) is kind


def run_bounded(main: Callable[[], Awaitable[None]], backend: str, what: str) -> Exception | None:
    """Runs ``main`` (which bounds itself with ``anyio.fail_after(TIMEOUT)``) on
    ``backend``: the exception it raised, if any. A hang fails the example."""
    try:
        anyio.run(main, backend=backend)
    except TimeoutError as exc:
        raise AssertionError(f"{what} hung on {backend}") from exc
    except Exception as exc:
        return exc
    return None
