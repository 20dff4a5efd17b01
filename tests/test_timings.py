"""Live per-layer timings: ``ferroware.install(app, timings=True)``."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

import fastapi
import pytest
from helpers import serve
from starlette.requests import Request
from starlette.responses import Response

import ferroware

CallNext = Callable[[Request], Awaitable[Response]]
SERVER_TIMING = re.compile(rb'^mw(\d+);desc="([^"]*)";dur=(\d+\.\d{3})$')


def _app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.middleware("http")
    async def quick(request: Request, call_next: CallNext) -> Response:
        return await call_next(request)

    @app.middleware("http")
    async def busy(request: Request, call_next: CallNext) -> Response:
        deadline = time.perf_counter() + 0.002  # 2 ms of this layer's own work
        while time.perf_counter() < deadline:
            pass
        return await call_next(request)

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.mark.anyio
async def test_snapshot_counts_and_own_time_per_layer() -> None:
    app = _app()
    ferroware.install(app, timings=True)
    for _ in range(5):
        await serve(app)
    snapshot = ferroware.timings(app)
    assert list(snapshot) == ["busy", "quick"]  # outermost first
    assert {stats["count"] for stats in snapshot.values()} == {5}
    # The outer layer's own time leaves out the inner one's, and the endpoint's.
    assert snapshot["busy"]["p50_us"] >= 2000
    assert snapshot["quick"]["p50_us"] < 1000
    assert all(stats["p99_us"] >= stats["p50_us"] for stats in snapshot.values())


@pytest.mark.anyio
async def test_server_timing_field_per_layer() -> None:
    app = _app()
    ferroware.install(app, timings=True)
    start = (await serve(app))[0]
    fields = [value for name, value in start["headers"] if name == b"server-timing"]
    parsed = {m.group(2).decode(): float(m.group(3)) for m in map(SERVER_TIMING.match, fields) if m}
    assert len(parsed) == len(fields) == 2, fields
    assert parsed["busy"] >= 2.0  # milliseconds
    assert parsed["quick"] < 1.0


@pytest.mark.anyio
async def test_off_by_default_and_after_uninstall() -> None:
    app = _app()
    ferroware.install(app)
    start = (await serve(app))[0]
    assert all(name != b"server-timing" for name, _ in start["headers"])
    with pytest.raises(ValueError, match="timings are off"):
        ferroware.timings(app)
    ferroware.install(app, timings=True)  # turning them on later rebuilds the stack
    await serve(app)
    assert ferroware.timings(app)["busy"]["count"] == 1
    ferroware.uninstall(app)
    with pytest.raises(ValueError, match="timings are off"):
        ferroware.timings(app)


def test_duplicate_layer_names_are_made_unique() -> None:
    from ferroware._core import Timings

    recorded = Timings()
    assert [recorded.register("layer") for _ in range(3)] == [0, 1, 2]
    assert list(recorded.snapshot()) == ["layer", "layer#2", "layer#3"]
    recorded.reset()
    assert all(stats["count"] == 0 for stats in recorded.snapshot().values())
