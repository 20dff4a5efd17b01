"""ferroware.Starlette and ferroware.FastAPI: same stack as the frameworks', user part compiled."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import subprocess
import sys
from typing import Any

import fastapi
import pytest
import starlette.applications
import starlette.middleware.base
from helpers import CV, Backend, ROUTES, Tagger, chain, get, recording, report_cv
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

import ferroware.base
from ferroware._accelerate import AcceleratedLayer, accelerate
from ferroware.applications import FastAPI, Starlette

StockBase = starlette.middleware.base.BaseHTTPMiddleware
AppClass = type[Starlette] | type[FastAPI]

# Each ferroware app class next to the framework class it must mirror.
APP_CLASSES = [
    pytest.param(Starlette, starlette.applications.Starlette, id="Starlette"),
    pytest.param(FastAPI, fastapi.FastAPI, id="FastAPI"),
]
app_classes = pytest.mark.parametrize(("app_cls", "stock_cls"), APP_CLASSES)


class Overriding(StockBase):
    """A stock subclass with its own ``__call__``: it does more than dispatch, so it stays stock."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


class StockSubclass(StockBase):
    """A stock subclass overriding ``dispatch``, with an option of its own."""

    def __init__(self, app: ASGIApp, header: str) -> None:
        super().__init__(app)
        self.header = header

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers[self.header] = CV.get()
        return response


@app_classes
def test_last_added_is_outermost_whatever_its_form(app_cls: AppClass, stock_cls: type, anyio_backend: Backend) -> None:
    log: list[str] = []
    app = app_cls(
        routes=ROUTES,
        middleware=[
            Middleware(Tagger, "m1", log=log),
            Middleware(StockBase, dispatch=recording(log, "m2")),
        ],
    )
    app.middleware("http")(recording(log, "d1"))
    app.add_middleware(ferroware.base.BaseHTTPMiddleware, dispatch=recording(log, "a1"))
    app.add_middleware(StockBase, recording(log, "s1"))  # dispatch passed positionally
    app.middleware("http")(recording(log, "d2"))
    app.add_middleware(Tagger, "p1", log=log)

    with TestClient(app, backend=anyio_backend) as client:
        assert client.get("/").text == "ok"

    # Entry order only: call_next returns at the response start, so a dispatch layer
    # may finish before a pure-ASGI layer inside it has sent the body.
    order = ["p1", "d2", "s1", "a1", "d1", "m1", "m2"]
    assert log[: len(order)] == [f"{name}>" for name in order]
    assert sorted(log[len(order) :]) == sorted(f"<{name}" for name in order)


@app_classes
def test_decorator_returns_the_function(app_cls: AppClass, stock_cls: type) -> None:
    app = app_cls()
    assert app.middleware("http")(report_cv) is report_cv
    [entry] = app.user_middleware
    factory: object = entry.cls
    assert factory is ferroware.base.BaseHTTPMiddleware
    assert entry.kwargs == {"dispatch": report_cv}


@app_classes
@pytest.mark.parametrize("middleware_type", ["websocket", "HTTP", ""])
def test_decorator_rejects_other_types(app_cls: AppClass, stock_cls: type, middleware_type: str) -> None:
    app = app_cls()
    with pytest.raises(ValueError, match=f"got {middleware_type!r}"):
        app.middleware(middleware_type)
    assert app.user_middleware == []


@app_classes
def test_cannot_add_middleware_after_start(app_cls: AppClass, stock_cls: type, anyio_backend: Backend) -> None:
    app = app_cls(routes=ROUTES)
    app.middleware("http")(report_cv)
    with TestClient(app, backend=anyio_backend) as client:
        client.get("/")
    message = "Cannot add middleware after an application has started"
    with pytest.raises(RuntimeError, match=message):
        app.add_middleware(Tagger, "late", log=[])
    with pytest.raises(RuntimeError, match=message):
        app.middleware("http")(report_cv)


@app_classes
@pytest.mark.parametrize("layer", ["decorator", "stock", "stock-subclass"])
def test_dispatch_runs_on_the_compiled_dispatcher(
    app_cls: AppClass, stock_cls: type, layer: str, anyio_backend: Backend
) -> None:
    app = app_cls(routes=ROUTES)
    if layer == "decorator":
        app.middleware("http")(report_cv)
    elif layer == "stock":
        app.add_middleware(StockBase, dispatch=report_cv)
    else:
        app.add_middleware(StockSubclass, header="x-cv")
    with TestClient(app, backend=anyio_backend) as client:
        assert client.get("/").headers["x-cv"] == "endpoint"


@app_classes
def test_the_same_app_on_the_framework_class_loses_the_contextvar(
    app_cls: AppClass, stock_cls: type, anyio_backend: Backend
) -> None:
    """The control for the test above: it can tell the two dispatchers apart."""
    app = stock_cls(routes=ROUTES, middleware=[Middleware(StockBase, dispatch=report_cv)])
    with TestClient(app, backend=anyio_backend) as client:
        assert client.get("/").headers["x-cv"] == "unset"


@pytest.mark.anyio
@app_classes
async def test_called_directly_in_the_current_task(app_cls: AppClass, stock_cls: type) -> None:
    app = app_cls(routes=ROUTES)
    app.middleware("http")(report_cv)
    app.add_middleware(StockBase, dispatch=report_cv)
    status, headers = await get(app)
    assert (status, headers["x-cv"]) == (200, "endpoint")


def user_layers(log: list[str]) -> list[Middleware]:
    return [
        Middleware(Tagger, "outer", log=log),
        Middleware(ferroware.base.BaseHTTPMiddleware, dispatch=report_cv),
        Middleware(StockBase, dispatch=report_cv),
        Middleware(Overriding, dispatch=report_cv),
    ]


@app_classes
@pytest.mark.parametrize("max_body_size", [None, 1024])
def test_user_stack_sits_where_the_framework_puts_it(
    app_cls: AppClass, stock_cls: type, max_body_size: int | None
) -> None:
    # The option (and the layer it adds) exists from Starlette 1.6 and FastAPI 0.164.
    options = {} if max_body_size is None else {"max_body_size": max_body_size}
    if options and "max_body_size" not in inspect.signature(stock_cls).parameters:
        pytest.skip(f"{stock_cls.__module__}.{stock_cls.__qualname__} has no max_body_size in this version")
    log: list[str] = []
    ours = chain(app_cls(middleware=user_layers(log), **options).build_middleware_stack())
    theirs = chain(stock_cls(middleware=user_layers(log), **options).build_middleware_stack())

    # Layer for layer the framework's own stack, with only stock BaseHTTPMiddleware wrapped.
    assert [type(layer) for layer in ours] == [
        AcceleratedLayer if type(layer) is StockBase else type(layer) for layer in theirs
    ]
    assert isinstance(ours[0], ServerErrorMiddleware)
    first = next(i for i, layer in enumerate(ours) if isinstance(layer, Tagger))
    kinds = [type(layer) for layer in ours[first : first + 5]]
    assert kinds == [Tagger, ferroware.base.BaseHTTPMiddleware, AcceleratedLayer, Overriding, ExceptionMiddleware]


@app_classes
def test_layers_get_their_options_and_pure_asgi_ones_are_not_wrapped(app_cls: AppClass, stock_cls: type) -> None:
    log: list[str] = []
    app = app_cls(middleware=[Middleware(Tagger, "mw", log=log)])
    app.add_middleware(Tagger, "added", log=log)
    layers = chain(app.build_middleware_stack())
    tagged = [layer for layer in layers if isinstance(layer, Tagger)]
    assert [type(layer) for layer in tagged] == [Tagger, Tagger]
    assert [(layer.name, layer.log) for layer in tagged] == [("added", log), ("mw", log)]


@app_classes
def test_no_user_middleware_builds_the_framework_stack(app_cls: AppClass, stock_cls: type) -> None:
    ours = chain(app_cls().build_middleware_stack())
    theirs = chain(stock_cls().build_middleware_stack())
    assert [type(layer) for layer in ours] == [type(layer) for layer in theirs]


@app_classes
def test_user_middleware_is_restored_even_if_a_layer_fails(app_cls: AppClass, stock_cls: type) -> None:
    class Broken:
        def __init__(self, app: ASGIApp) -> None:
            raise LookupError("broken layer")

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            raise NotImplementedError  # pragma: no cover

    app = app_cls()
    app.add_middleware(Broken)
    app.middleware("http")(report_cv)
    before = app.user_middleware
    entries = list(before)
    with pytest.raises(LookupError, match="broken layer"):
        app.build_middleware_stack()
    assert app.user_middleware is before
    assert app.user_middleware == entries


def test_accelerated_layer_forwards_to_the_stock_instance() -> None:
    inner = Tagger(None, "inner", log=[])  # type: ignore[arg-type]
    stock = StockSubclass(inner, header="x-h")
    wrapped = accelerate(stock)
    assert isinstance(wrapped, AcceleratedLayer)
    assert isinstance(wrapped, ferroware.base.BaseHTTPMiddleware)  # so the dispatcher links it
    assert copy.copy(wrapped).app is inner  # no recursion while half-built
    assert wrapped.app is inner
    assert wrapped.dispatch_func == stock.dispatch
    assert wrapped.header == "x-h"
    wrapped.header = "x-other"
    assert stock.header == "x-other"
    other = Tagger(inner, "other", log=[])
    wrapped.app = other  # type: ignore[misc]  # read-only to the type checker, forwarded at run time
    assert stock.app is other


def test_accelerate_leaves_other_layers_alone() -> None:
    inner = Tagger(None, "inner", log=[])  # type: ignore[arg-type]
    for layer in (
        inner,
        ferroware.base.BaseHTTPMiddleware(inner, dispatch=report_cv),
        Overriding(inner, dispatch=report_cv),
    ):
        assert accelerate(layer) is layer
    assert type(accelerate(StockBase(inner, dispatch=report_cv))) is AcceleratedLayer


def test_accelerate_imported_after_a_swap_leaves_ferroware_layers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test plugin may rebind Starlette's name to ferroware's class before ``_accelerate`` is first imported."""
    monkeypatch.setattr(starlette.middleware.base, "BaseHTTPMiddleware", ferroware.base.BaseHTTPMiddleware)
    spec = importlib.util.find_spec("ferroware._accelerate")
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)  # a private copy: sys.modules is untouched
    spec.loader.exec_module(fresh)
    assert fresh.STOCK_BASE is ferroware.base.BaseHTTPMiddleware
    inner = Tagger(None, "inner", log=[])  # type: ignore[arg-type]
    layer = ferroware.base.BaseHTTPMiddleware(inner, dispatch=report_cv)
    assert fresh.accelerate(layer) is layer


def test_accelerated_layers_are_linked_like_ferroware_layers() -> None:
    """Consecutive layers are handed to the dispatcher as one chain, whatever class they were added as."""
    app = Starlette(routes=ROUTES)
    app.add_middleware(StockBase, dispatch=report_cv)
    app.add_middleware(ferroware.base.BaseHTTPMiddleware, dispatch=report_cv)
    app.add_middleware(StockBase, dispatch=report_cv)
    layers = chain(app.build_middleware_stack())
    outer, middle, inner = [layer for layer in layers if isinstance(layer, ferroware.base.BaseHTTPMiddleware)]
    assert [type(outer), type(middle), type(inner)] == [
        AcceleratedLayer,
        ferroware.base.BaseHTTPMiddleware,
        AcceleratedLayer,
    ]
    assert ferroware.base.dispatcher_for(outer).inner is ferroware.base.dispatcher_for(middle)
    assert ferroware.base.dispatcher_for(middle).inner is ferroware.base.dispatcher_for(inner)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_importing_ferroware_does_not_import_fastapi() -> None:
    """FastAPI is an optional extra and slow to import: only ``ferroware.FastAPI`` brings it in."""
    done = run_python("import sys, ferroware; print('fastapi' in sys.modules); ferroware.FastAPI; print('fastapi' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_fastapi_missing_is_named() -> None:
    done = run_python("import sys; sys.modules['fastapi'] = None\nimport ferroware\nferroware.FastAPI")
    assert done.returncode == 1
    assert "ferroware.FastAPI needs FastAPI: pip install 'ferroware[fastapi]'" in done.stderr
