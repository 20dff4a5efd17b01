from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
import starlette.middleware.base

# Starlette's own method, taken before any test can patch it.
STOCK_CALL = starlette.middleware.base.BaseHTTPMiddleware.__dict__["__call__"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Literal["asyncio", "trio"]:
    """Every ``@pytest.mark.anyio`` test, and every TestClient test using it, runs on both backends."""
    backend: Literal["asyncio", "trio"] = request.param
    return backend


@pytest.fixture(autouse=True)
def _no_leaked_patch() -> Iterator[None]:
    """A test that left ``ferroware.patch()`` in effect fails, and later tests still get Starlette's method."""
    yield
    leaked = starlette.middleware.base.BaseHTTPMiddleware.__dict__["__call__"] is not STOCK_CALL
    starlette.middleware.base.BaseHTTPMiddleware.__call__ = STOCK_CALL  # type: ignore[method-assign]
    assert not leaked, "test left BaseHTTPMiddleware.__call__ patched"
