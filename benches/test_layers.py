"""Per-layer cost of a header-setting layer on FastAPI: stock, pure ASGI, ferroware.

Run with ``python -m pytest benches`` (see BENCHMARKS.md). pytest-benchmark has
no async support, so each round serves a batch of requests inside one coroutine
on one event loop; every request gets fresh scope and message dicts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ferroware import _bench

REQUESTS = {"stock": 25, "pure": 400, "ferroware": 400}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("layers", [0, 10])
@pytest.mark.parametrize("implementation", _bench.IMPLEMENTATIONS)
def test_header_layer(benchmark, loop: asyncio.AbstractEventLoop, implementation: str, layers: int) -> None:  # type: ignore[no-untyped-def]
    """``@app.middleware("http")`` on FastAPI (stock, ferroware) vs a pure-ASGI layer."""
    app = _bench.build_app(implementation, layers, "fastapi")
    requests = REQUESTS[implementation] if layers else 400
    benchmark.group = "header-setting layer"
    benchmark.extra_info.update(implementation=implementation, layers=layers, requests=requests)
    loop.run_until_complete(_bench.serve_batch(app, 20))  # warm-up: builds the stack
    benchmark.pedantic(
        loop.run_until_complete, setup=lambda: ((_bench.serve_batch(app, requests),), {}), rounds=15
    )
