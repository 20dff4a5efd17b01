"""Middleware libraries from PyPI, built on ``BaseHTTPMiddleware``, used
through their public API: the same observable results with stock Starlette
and under ``ferroware.patch()``, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers import Backend
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

import ferroware

REQUEST_ID = "2b0f4bd3-4c8d-4a2c-9a51-0a7c1f0c9e11"


@contextmanager
def implementation(name: str) -> Iterator[None]:
    if name == "stock":
        yield
        return
    ferroware.patch()
    try:
        yield
    finally:
        ferroware.unpatch()


@pytest.mark.parametrize("name", ["stock", "ferroware"])
def test_starlette_context_reaches_the_background_task(name: str, anyio_backend: Backend) -> None:
    """starlette-context's ``ContextMiddleware`` sets its context around
    ``call_next`` and resets it after: the endpoint's background task still
    has it, as it has through stock's app task."""
    from starlette_context import context, plugins
    from starlette_context.middleware import ContextMiddleware

    in_background: list[Any] = []

    async def endpoint(request: Request) -> Response:
        def background() -> None:
            in_background.append(dict(context.data) if context.exists() else "no context")

        return JSONResponse(dict(context.data), background=BackgroundTask(background))

    with implementation(name):
        app = Starlette(
            routes=[Route("/", endpoint)],
            middleware=[Middleware(ContextMiddleware, plugins=(plugins.RequestIdPlugin(),))],
        )
        assert ferroware.is_patched() == (name == "ferroware")
        with TestClient(app, backend=anyio_backend) as client:
            response = client.get("/", headers={"x-request-id": REQUEST_ID})
    assert response.status_code == 200
    assert response.json() == {"X-Request-ID": REQUEST_ID}
    assert response.headers["x-request-id"] == REQUEST_ID
    # The plugin's key is a str enum: compared by its value.
    assert [{str(key): value for key, value in data.items()} for data in in_background] == [
        {"X-Request-ID": REQUEST_ID}
    ]


@pytest.mark.parametrize("name", ["stock", "ferroware"])
def test_slowapi_limits_and_headers(name: str, anyio_backend: Backend) -> None:
    """slowapi's ``SlowAPIMiddleware``: the default limit answers 429 past it,
    with the rate-limit headers on every response."""
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIMiddleware
    from slowapi.util import get_remote_address

    async def endpoint(request: Request) -> Response:
        return JSONResponse({"ok": True})

    limiter = Limiter(key_func=get_remote_address, default_limits=["2/minute"], headers_enabled=True)
    with implementation(name):
        app = Starlette(
            routes=[Route("/", endpoint)],
            middleware=[Middleware(SlowAPIMiddleware)],
            exception_handlers={RateLimitExceeded: _rate_limit_exceeded_handler},  # type: ignore[dict-item]
        )
        app.state.limiter = limiter
        with TestClient(app, backend=anyio_backend) as client:
            responses = [client.get("/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers.get("x-ratelimit-remaining") for r in responses] == ["1", "0", "0"]
    assert [r.headers.get("x-ratelimit-limit") for r in responses] == ["2", "2", "2"]
    assert responses[0].json() == {"ok": True}


@pytest.mark.parametrize("name", ["stock", "ferroware"])
def test_starlette_prometheus_counts(name: str, anyio_backend: Backend) -> None:
    """starlette-prometheus's ``PrometheusMiddleware``: requests, responses by
    status, exceptions and the in-progress gauge, read from prometheus_client's
    registry as deltas over the run (the registry is per process)."""
    from prometheus_client import REGISTRY
    from starlette_prometheus import PrometheusMiddleware

    async def item(request: Request) -> Response:
        if request.path_params["id"] == "boom":
            raise RuntimeError("boom")
        return JSONResponse({"id": request.path_params["id"]})

    labels = {"method": "GET", "path_template": "/items/{id}"}

    def sample(metric: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(metric, {**labels, **extra}) or 0.0

    def counts() -> dict[str, float]:
        return {
            "requests": sample("starlette_requests_total"),
            "ok": sample("starlette_responses_total", status_code="200"),
            "errors": sample("starlette_responses_total", status_code="500"),
            "exceptions": sample("starlette_exceptions_total", exception_type="RuntimeError"),
            "timed": sample("starlette_requests_processing_time_seconds_count"),
            "in progress": sample("starlette_requests_in_progress"),
        }

    before = counts()
    with implementation(name):
        app = Starlette(routes=[Route("/items/{id}", item)], middleware=[Middleware(PrometheusMiddleware)])
        with TestClient(app, backend=anyio_backend, raise_server_exceptions=False) as client:
            statuses = [client.get(path).status_code for path in ("/items/1", "/items/2", "/items/boom")]
    after = counts()
    assert statuses == [200, 200, 500]
    assert {key: after[key] - before[key] for key in after} == {
        "requests": 3,
        "ok": 2,
        "errors": 1,
        "exceptions": 1,
        "timed": 2,
        "in progress": 0,
    }
