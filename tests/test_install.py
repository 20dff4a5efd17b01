"""install()/uninstall() on existing apps, patch()/unpatch() process-wide."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import fastapi
import pytest
import starlette.applications
import starlette.middleware.base
from helpers import CV, Backend, ROUTES, chain, get, report_cv
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, Router
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

import ferroware._core
from ferroware._accelerate import AcceleratedLayer
from ferroware.applications import Starlette as FerrowareStarlette
from ferroware.install import install, is_patched, patch, uninstall, unpatch

StockBase = starlette.middleware.base.BaseHTTPMiddleware
STOCK_CALL = StockBase.__dict__["__call__"]
StockApp = starlette.applications.Starlette


def fastapi_decorated() -> StockApp:
    """The common case: FastAPI's own ``@app.middleware("http")``, which registers Starlette's class."""
    app = fastapi.FastAPI(routes=ROUTES)
    app.middleware("http")(report_cv)
    return app


def starlette_added() -> StockApp:
    app = starlette.applications.Starlette(routes=ROUTES)
    app.add_middleware(StockBase, dispatch=report_cv)
    return app


stock_apps = pytest.mark.parametrize("make_app", [fastapi_decorated, starlette_added])


def accelerated(client: TestClient) -> bool:
    """Whether the request's dispatch saw the endpoint's contextvar (only ferroware's dispatcher does)."""
    value = client.get("/").headers["x-cv"]
    assert value in ("endpoint", "unset")
    return value == "endpoint"


@pytest.fixture
def patched() -> Iterator[None]:
    patch()
    try:
        yield
    finally:
        unpatch()


@stock_apps
def test_install_and_uninstall(make_app: Callable[[], StockApp], anyio_backend: Backend) -> None:
    app = make_app()
    with TestClient(app, backend=anyio_backend) as client:
        assert not accelerated(client)  # the stock stack is built and running

        install(app)
        assert app.middleware_stack is None  # rebuilt on the next request
        assert accelerated(client)
        assert AcceleratedLayer in [type(layer) for layer in chain(app.middleware_stack)]  # type: ignore[arg-type]

        uninstall(app)
        assert "build_middleware_stack" not in vars(app)
        assert app.middleware_stack is None
        assert not accelerated(client)
        assert AcceleratedLayer not in [type(layer) for layer in chain(app.middleware_stack)]  # type: ignore[arg-type]


@stock_apps
def test_install_twice_is_a_noop(make_app: Callable[[], StockApp], anyio_backend: Backend) -> None:
    app = make_app()
    install(app)
    method = vars(app)["build_middleware_stack"]
    with TestClient(app, backend=anyio_backend) as client:
        assert accelerated(client)
        stack = app.middleware_stack
        install(app)
        assert app.middleware_stack is stack  # not reset: nothing to rebuild
        assert vars(app)["build_middleware_stack"] is method
        assert accelerated(client)


def test_uninstall_without_install_is_a_noop(anyio_backend: Backend) -> None:
    app = fastapi_decorated()
    with TestClient(app, backend=anyio_backend) as client:
        client.get("/")
        stack = app.middleware_stack
        uninstall(app)
        assert app.middleware_stack is stack


def test_install_on_a_ferroware_app_composes_the_user_stack_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    build_stack = ferroware._core.build_stack

    def counting(app: Any, layers: Any, accelerate: Any) -> Any:
        calls.append(len(layers))
        return build_stack(app, layers, accelerate)

    monkeypatch.setattr("ferroware._stack.build_stack", counting)
    app = FerrowareStarlette(routes=ROUTES)
    app.middleware("http")(report_cv)
    app.add_middleware(StockBase, dispatch=report_cv)
    install(app)
    app.build_middleware_stack()
    assert calls == [2]


@pytest.mark.parametrize("target", [object(), Router(), fastapi.APIRouter(), fastapi_decorated])
@pytest.mark.parametrize("action", [install, uninstall])
def test_only_apps_can_be_installed(target: object, action: Callable[[Any], None]) -> None:
    message = rf"ferroware\.{action.__name__}\(\) expects a Starlette or FastAPI application"
    with pytest.raises(TypeError, match=message):
        action(target)


@pytest.mark.anyio
async def test_requests_in_flight_finish_on_the_old_stack() -> None:
    started = anyio.Event()
    release = anyio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await release.wait()
        CV.set("endpoint")
        return PlainTextResponse("ok")

    app = fastapi.FastAPI(routes=[Route("/", slow)])
    app.middleware("http")(report_cv)
    results: list[tuple[int, dict[str, str]]] = []

    async def request() -> None:
        results.append(await get(app))

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)
        await started.wait()
        install(app)
        release.set()
    results.append(await get(app))

    assert [(status, headers["x-cv"]) for status, headers in results] == [(200, "unset"), (200, "endpoint")]


@stock_apps
def test_patch_reaches_stacks_already_built(make_app: Callable[[], StockApp], anyio_backend: Backend) -> None:
    app = make_app()
    with TestClient(app, backend=anyio_backend) as client:
        assert not accelerated(client)
        stack = app.middleware_stack
        patch()
        try:
            assert is_patched()
            assert accelerated(client)
            assert app.middleware_stack is stack  # same layers, new __call__
        finally:
            unpatch()
        assert not is_patched()
        assert StockBase.__dict__["__call__"] is STOCK_CALL
        assert not accelerated(client)


def test_patch_twice_then_unpatch_restores_the_original() -> None:
    try:
        patch()
        patch()
        assert is_patched()
    finally:
        unpatch()
    assert not is_patched()
    assert StockBase.__dict__["__call__"] is STOCK_CALL


def test_unpatch_without_patch_is_a_noop() -> None:
    unpatch()
    assert not is_patched()
    assert StockBase.__dict__["__call__"] is STOCK_CALL


def test_unpatch_keeps_a_method_someone_else_rebound() -> None:
    async def theirs(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError  # pragma: no cover

    try:
        patch()
        StockBase.__call__ = theirs  # type: ignore[method-assign]
        assert not is_patched()
        unpatch()
        assert StockBase.__dict__["__call__"] is theirs
    finally:
        StockBase.__call__ = STOCK_CALL  # type: ignore[method-assign]


@pytest.mark.usefixtures("patched")
def test_patch_reaches_subclasses_that_call_super(anyio_backend: Backend) -> None:
    class Overriding(StockBase):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await super().__call__(scope, receive, send)

    app = starlette.applications.Starlette(routes=ROUTES)
    app.add_middleware(Overriding, dispatch=report_cv)
    with TestClient(app, backend=anyio_backend) as client:
        assert accelerated(client)


@pytest.mark.anyio
@pytest.mark.usefixtures("patched")
@stock_apps
async def test_patch_and_install_together(make_app: Callable[[], StockApp]) -> None:
    app = make_app()
    install(app)
    status, headers = await get(app)
    assert (status, headers["x-cv"]) == (200, "endpoint")
    assert AcceleratedLayer in [type(layer) for layer in chain(app.middleware_stack)]  # type: ignore[arg-type]
