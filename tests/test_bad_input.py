"""Misuse of ``BaseHTTPMiddleware`` (ferroware's): clear errors, completed cleanup, no warnings, no leaks.

Every case runs on asyncio and trio through ``run_checked``, which drives the
app with ``anyio.run`` while recording every warning and unraisable exception
(a "coroutine ... was never awaited" RuntimeWarning, an exception in a
finalizer), then collects garbage once the event loop is gone and fails if
anything was emitted, even where a filter would have hidden it.
"""

from __future__ import annotations

import gc
import re
import sys
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import helpers
import pytest
from starlette.middleware.base import BaseHTTPMiddleware as StockBaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferroware import BaseHTTPMiddleware

CallNext = Callable[[Request], Awaitable[Response]]
Dispatch = Callable[[Request, CallNext], Awaitable[Any]]
TIMEOUT = 5  # seconds: a hang fails the test instead of stalling the suite


class Sentinel:
    """Something weak-referenceable to put where a leak would keep it alive."""


@dataclass
class Run:
    sent: list[Message] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    scope_alive: Callable[[], Any] = lambda: None  # a weak reference into the request's scope


def http_scope(**extra: Any) -> Scope:
    return helpers.http_scope(
        asgi={"version": "3.0", "spec_version": "2.4"}, client=("127.0.0.1", 50000), state={}, **extra
    )


@contextmanager
def nothing_emitted() -> Iterator[None]:
    """Fail if a warning or an unraisable exception is emitted inside, or by the
    garbage collected right after."""
    unraisable: list[str] = []

    def hook(info: Any) -> None:
        unraisable.append(f"{info.exc_type.__name__}: {info.exc_value} (in {info.object!r})")

    old_hook = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            for _ in range(3):
                gc.collect()
    finally:
        sys.unraisablehook = old_hook
    emitted = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught] + unraisable
    assert not emitted, "emitted:\n  " + "\n  ".join(emitted)


def run_checked(backend: str, app: ASGIApp, scope: Scope | None = None, *, check_leaks: bool = True) -> Run:
    """One request through ``app`` on ``backend``; the outcome, with nothing emitted.

    Unless ``check_leaks`` is off, the test then also fails (at teardown) if
    the request's scope is still alive once garbage was collected: something
    (a suspended downstream app, the request object, a channel) leaked.
    """
    run = Run()
    if scope is None:
        scope = http_scope()
    scope["ferroware_test_sentinel"] = sentinel = Sentinel()
    run.scope_alive = weakref.ref(sentinel)
    del sentinel

    async def receive() -> Message:
        await anyio.lowlevel.checkpoint()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        run.sent.append(dict(message))

    async def main(scope: Scope) -> None:
        with anyio.fail_after(TIMEOUT):
            await app(scope, receive, send)

    with nothing_emitted():
        try:
            anyio.run(main, scope, backend=backend)
        except Exception as exc:
            run.error = exc
        del scope
        if run.error is not None:  # its traceback holds the frames that held the scope
            run.error.__traceback__ = None
            for chained in (run.error.__cause__, run.error.__context__):
                if chained is not None:
                    chained.__traceback__ = None
    if check_leaks:
        _TO_CHECK_FOR_LEAKS.append(run)
    return run


_TO_CHECK_FOR_LEAKS: list[Run] = []


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """After the test's own checks: nothing of any run's request is still alive."""
    _TO_CHECK_FOR_LEAKS.clear()
    yield
    runs, _TO_CHECK_FOR_LEAKS[:] = list(_TO_CHECK_FOR_LEAKS), []
    for run in runs:
        assert_no_leak(run)


def assert_no_leak(run: Run) -> None:
    gc.collect()
    assert run.scope_alive() is None, "the request's scope is still alive after the run: something leaked"


def ok_app(events: list[Any]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        events.append("app:start")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"downstream"})
        events.append("app:done")

    return app


def cleanup_app(events: list[Any], cleanup_error: type[Exception] | None = None) -> ASGIApp:
    """A downstream app whose ``finally`` awaits: it must be run to completion.

    The ``finally`` is in a coroutine the app awaits (as an endpoint is, under
    routing), not in the app's own frame: unwinding the app must reach it as an
    exception it can await in, not close it. ``cleanup_error``: raised at the end
    of the cleanup (a new one each time: a kept one would keep its traceback)."""

    async def endpoint(send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"one", "more_body": True})
            await send({"type": "http.response.body", "body": b"two", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            events.append("cleanup:start")
            await anyio.sleep(0)
            events.append("cleanup:done")
            if cleanup_error is not None:
                raise cleanup_error("cleanup failed")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        events.append("app:start")
        await endpoint(send)

    return app


def layer(app: ASGIApp, dispatch: Dispatch, style: str) -> ASGIApp:
    """``dispatch`` as ``dispatch=`` (style "function") or as a subclass's method."""
    if style == "function":
        return BaseHTTPMiddleware(app, dispatch=dispatch)

    class Layer(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: CallNext) -> Any:  # type: ignore[override]
            return await dispatch(request, call_next)

    return Layer(app)


def expect(run: Run, exc_type: type[BaseException], pattern: str) -> BaseException:
    assert run.error is not None, f"expected {exc_type.__name__} matching {pattern!r}, nothing was raised"
    assert isinstance(run.error, exc_type) and re.search(pattern, str(run.error)), (
        f"expected {exc_type.__name__} matching {pattern!r}, got {type(run.error).__name__}: {run.error}"
    )
    return run.error


# --------------------------------------------------------------------------- dispatch returns garbage


async def returns_none_after_call_next(request: Request, call_next: CallNext) -> None:
    await call_next(request)


async def returns_none_without_call_next(request: Request, call_next: CallNext) -> None:
    return None


async def returns_a_string(request: Request, call_next: CallNext) -> str:
    return "not a response"


class DispatchOwner:
    """So that the function's ``__qualname__`` differs from its ``__name__``."""

    @staticmethod
    async def returns_a_string_after_call_next(request: Request, call_next: CallNext) -> str:
        await call_next(request)
        return "not a response"


@pytest.mark.parametrize(
    "dispatch",
    [
        returns_none_after_call_next,
        returns_none_without_call_next,
        returns_a_string,
        DispatchOwner.returns_a_string_after_call_next,
    ],
)
def test_dispatch_function_returns_non_response(anyio_backend: str, dispatch: Dispatch) -> None:
    events: list[Any] = []
    run = run_checked(anyio_backend, BaseHTTPMiddleware(cleanup_app(events), dispatch=dispatch))
    expect(run, TypeError, re.escape(dispatch.__qualname__))
    assert run.sent == []
    if "app:start" in events:  # the downstream app was started: it was also finished
        assert events[-2:] == ["cleanup:start", "cleanup:done"], events


@pytest.mark.parametrize("returned", [None, "not a response"])
def test_dispatch_method_returns_non_response(anyio_backend: str, returned: Any) -> None:
    class ReturnsGarbage(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: CallNext) -> Any:  # type: ignore[override]
            await call_next(request)
            return returned

    events: list[Any] = []
    run = run_checked(anyio_backend, ReturnsGarbage(cleanup_app(events)))
    expect(run, TypeError, re.escape(ReturnsGarbage.dispatch.__qualname__))
    assert events[-2:] == ["cleanup:start", "cleanup:done"], events


# --------------------------------------------------------------------------- downstream protocol errors


async def passthrough(request: Request, call_next: CallNext) -> Response:
    return await call_next(request)


def checked_send(send: Send, events: list[Any]) -> Send:
    """The app's ``send``, recording what it raised into the app (if anything)."""

    async def wrapped(message: Message) -> None:
        try:
            await send(message)
        except Exception as exc:
            events.append(("send raised", message["type"], type(exc), str(exc)))
            raise

    return wrapped


@pytest.mark.parametrize("style", ["function", "subclass"])
def test_body_before_start(anyio_backend: str, style: str) -> None:
    events: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await checked_send(send, events)({"type": "http.response.body", "body": b"too early"})

    run = run_checked(anyio_backend, layer(app, passthrough, style))
    error = expect(run, RuntimeError, re.escape("http.response.start"))
    assert run.sent == []
    # Raised at the app's own ``await send(...)`` (as documented in the README).
    assert events == [("send raised", "http.response.body", RuntimeError, str(error))]


@pytest.mark.parametrize("style", ["function", "subclass"])
def test_start_sent_twice(anyio_backend: str, style: str) -> None:
    events: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        send = checked_send(send, events)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"never"})

    run = run_checked(anyio_backend, layer(app, passthrough, style))
    error = expect(run, RuntimeError, r"twice")
    assert events == [("send raised", "http.response.start", RuntimeError, str(error))]
    assert [m.get("status") for m in run.sent if m["type"] == "http.response.start"] == [200]
    assert b"never" not in b"".join(m.get("body", b"") for m in run.sent)


@pytest.mark.parametrize("style", ["function", "subclass"])
def test_app_returns_without_response(anyio_backend: str, style: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0)

    run = run_checked(anyio_backend, layer(app, passthrough, style))
    error = expect(run, RuntimeError, r"^No response returned\.$")
    assert str(error) == "No response returned."
    assert run.sent == []


# --------------------------------------------------------------------------- exceptions in dispatch


class DispatchError(Exception):
    pass


def test_dispatch_raises_before_call_next(anyio_backend: str) -> None:
    async def dispatch(request: Request, call_next: CallNext) -> Response:
        raise DispatchError("before call_next")

    events: list[Any] = []
    run = run_checked(anyio_backend, BaseHTTPMiddleware(cleanup_app(events), dispatch=dispatch))
    expect(run, DispatchError, r"^before call_next$")
    assert events == [] and run.sent == []


@pytest.mark.parametrize("where", ["after-call_next", "mid-body"])
@pytest.mark.parametrize("layers", [1, 2])
def test_dispatch_raises_after_call_next(anyio_backend: str, where: str, layers: int) -> None:
    """The suspended downstream app is finished: its ``finally`` runs, awaits included."""

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        if where == "mid-body":
            iterator = response.body_iterator.__aiter__()  # type: ignore[attr-defined]
            events.append(("dispatch:read", await iterator.__anext__()))
        raise DispatchError(f"dispatch failed {where}")

    events: list[Any] = []
    app = BaseHTTPMiddleware(cleanup_app(events), dispatch=dispatch)
    for _ in range(layers - 1):
        app = BaseHTTPMiddleware(app, dispatch=passthrough)
    run = run_checked(anyio_backend, app)
    expect(run, DispatchError, rf"^dispatch failed {where}$")
    assert events[0] == "app:start"
    assert events[-2:] == ["cleanup:start", "cleanup:done"], events
    assert run.sent == []


def test_an_error_from_the_app_as_it_is_unwound_leaves_the_dispatch_error_as_in_starlette(anyio_backend: str) -> None:
    """``dispatch`` fails after ``call_next``, and the app's cleanup raises too
    as it is unwound: the dispatch error goes on, as through Starlette (whose
    task group keeps the app's ``Exception`` aside)."""

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        await call_next(request)
        raise DispatchError("dispatch failed")

    def stack(base: type) -> ASGIApp:
        return base(cleanup_app([], cleanup_error=ValueError), dispatch=dispatch)

    run = run_checked(anyio_backend, stack(BaseHTTPMiddleware))
    expect(run, DispatchError, r"^dispatch failed$")
    stock = Run()

    async def stock_run() -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            stock.sent.append(message)

        await stack(StockBaseHTTPMiddleware)(http_scope(), receive, send)

    with pytest.raises(DispatchError, match=r"^dispatch failed$"):
        anyio.run(stock_run, backend=anyio_backend)


# --------------------------------------------------------------------------- call_next misuse


@pytest.mark.parametrize("style", ["function", "subclass"])
def test_call_next_result_dropped(anyio_backend: str, style: str) -> None:
    """``call_next(request)`` called but never awaited: no warning, nothing kept alive, app never run."""
    refs: dict[str, weakref.ref[Any]] = {}

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        refs["request"] = weakref.ref(request)
        call_next(request)  # dropped at once
        return PlainTextResponse("own response")

    events: list[Any] = []
    app = layer(ok_app(events), dispatch, style)
    run = run_checked(anyio_backend, app)
    gc.collect()
    assert run.error is None, repr(run.error)
    assert [m["type"] for m in run.sent] == ["http.response.start", "http.response.body"]
    assert run.sent[1]["body"] == b"own response"
    assert events == [], "the downstream app ran although call_next's result was never awaited"
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert not alive, f"still alive after the request: {alive}"


def test_call_next_result_kept_but_never_awaited(anyio_backend: str) -> None:
    kept: list[Any] = []

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        kept.append(call_next(request))
        return PlainTextResponse("own response")

    events: list[Any] = []
    run = run_checked(anyio_backend, BaseHTTPMiddleware(ok_app(events), dispatch=dispatch), check_leaks=False)
    assert run.error is None and events == []
    assert run.sent[-1]["body"] == b"own response"
    with nothing_emitted():  # dropping it later, outside any event loop
        kept.clear()
    assert_no_leak(run)


def test_call_next_called_twice(anyio_backend: str) -> None:
    async def dispatch(request: Request, call_next: CallNext) -> Response:
        await call_next(request)
        return await call_next(request)

    events: list[Any] = []
    run = run_checked(anyio_backend, BaseHTTPMiddleware(cleanup_app(events), dispatch=dispatch))
    expect(run, RuntimeError, r"call_next")
    assert events.count("app:start") == 1
    assert events[-2:] == ["cleanup:start", "cleanup:done"], events


def test_call_next_awaitable_awaited_twice(anyio_backend: str) -> None:
    async def dispatch(request: Request, call_next: CallNext) -> Response:
        pending = call_next(request)
        await pending
        return await pending

    events: list[Any] = []
    run = run_checked(anyio_backend, BaseHTTPMiddleware(cleanup_app(events), dispatch=dispatch))
    expect(run, RuntimeError, r"already awaited|twice|once")
    assert events.count("app:start") == 1
    assert events[-2:] == ["cleanup:start", "cleanup:done"], events
