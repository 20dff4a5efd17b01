"""What live per-layer timings cost: the same 10-layer ferroware app with
``install(app, timings=True)`` and without, side by side in one run. The
difference divided by 10 is the cost per layer per request (target: at most
0.5 µs); pytest-benchmark's group table shows both."""

from __future__ import annotations

import asyncio

import pytest

import ferroware
from ferroware import _bench

LAYERS = 10
REQUESTS = 400


@pytest.mark.parametrize("timings", [False, True], ids=["off", "on"])
def test_layers_with_timings(benchmark, loop: asyncio.AbstractEventLoop, timings: bool) -> None:  # type: ignore[no-untyped-def]
    app = _bench.build_app("header", "ferroware", LAYERS, "fastapi")
    ferroware.install(app, timings=timings)
    benchmark.group = f"live timings ({LAYERS} ferroware layers, per {REQUESTS} requests)"
    loop.run_until_complete(_bench.serve_batch(app, 20))
    benchmark.pedantic(loop.run_until_complete, setup=lambda: ((_bench.serve_batch(app, REQUESTS),), {}), rounds=15)
    if timings:
        assert ferroware.timings(app)["set_header"]["count"] > REQUESTS
