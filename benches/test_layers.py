"""Per-layer cost of middleware on FastAPI: stock, pure ASGI, ferroware, for each case.

Cases (``ferroware._bench.CASES``, the same builders ``ferroware bench`` uses):
a header-setting decorator layer, a layer reading a 1 KiB body, header layers
over a 50-chunk streaming response, a ``BaseHTTPMiddleware`` subclass, and a
mixed CORS/GZip/request-id/decorator stack; each at 0, 1, 5, 10 and 20 layers.

Run with ``python -m pytest benches`` (see BENCHMARKS.md); the per-layer cost
(least-squares slope over the layer counts) and the ratios to stock and to pure
ASGI are printed at the end of the run (``conftest.py``). pytest-benchmark has
no async support, so each round serves a batch of requests inside one coroutine
on one event loop; every request gets fresh scope, message and body dicts.
"""

from __future__ import annotations

import asyncio

import pytest

from ferroware import _bench

REQUESTS = 1000  # per round for a bare app (~30 µs a request)
BATCH_SECONDS = 0.03  # deeper stacks get fewer requests, so a round takes about this long
ROUNDS = 10


@pytest.mark.parametrize("layers", _bench.LAYER_COUNTS)
@pytest.mark.parametrize("implementation", _bench.IMPLEMENTATIONS)
@pytest.mark.parametrize("case", _bench.CASES)
def test_layers(benchmark, loop: asyncio.AbstractEventLoop, case: str, implementation: str, layers: int) -> None:  # type: ignore[no-untyped-def]
    app = _bench.build_app(case, implementation, layers, "fastapi")
    _bench.check(app, case, layers)  # all three answer the same before any timing
    loop.run_until_complete(_bench.serve_batch(app, 1, case))  # warm-up: builds the stack
    estimate = _bench.time_batch(loop, app, 3, case)
    requests = _bench.batch_size(REQUESTS, BATCH_SECONDS / REQUESTS, estimate)
    benchmark.group = f"{case}: {_bench.CASES[case].title}"
    benchmark.extra_info.update(case=case, implementation=implementation, layers=layers, requests=requests)
    benchmark.pedantic(
        loop.run_until_complete, setup=lambda: ((_bench.serve_batch(app, requests, case),), {}), rounds=ROUNDS
    )
