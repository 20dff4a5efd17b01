"""After a benchmark run, turn pytest-benchmark's timings into the figures
that matter, all from this one run, printed after pytest-benchmark's tables:
the header operations' speed-ups (benches/test_headers.py), for each case
of benches/test_layers.py the cost per layer (least-squares slope over the
layer counts) and the ratios to stock and to pure ASGI, and what layers cost
behind uvicorn's protocol (benches/test_server_path.py). Also the event loop
the benchmarks that serve requests share, one per module."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ferroware import _bench


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    _header_ops_summary(terminalreporter, session.benchmarks)
    _builtins_summary(terminalreporter, session.benchmarks)
    _compression_summary(terminalreporter, session.benchmarks)
    _layer_summary(terminalreporter, session.benchmarks)
    _server_path_summary(terminalreporter, session.benchmarks)


def _header_ops_summary(terminalreporter: pytest.TerminalReporter, benchmarks: list) -> None:  # type: ignore[type-arg]
    """benches/test_headers.py: time per operation and ferroware's speed-up over Starlette."""
    per_op: dict[str, dict[str, float]] = {}
    for bench in benchmarks:
        extra = bench.extra_info
        if extra and "headers_op" in extra and bench.stats.rounds:
            per_op.setdefault(extra["headers_op"], {})[extra["headers_impl"]] = bench.stats.min / extra["ops"]
    if not per_op:
        return
    write = terminalreporter.write_line
    write("")
    write("MutableHeaders on 10 headers (best round, per operation; target >= 3x):")
    for op, times in per_op.items():
        if {"starlette", "ferroware"} <= times.keys():
            write(f"  {op:<17} starlette {times['starlette'] * 1e9:7.0f} ns   ferroware {times['ferroware'] * 1e9:7.0f} ns"
                  f"   {times['starlette'] / times['ferroware']:5.1f}x")


def _layer_summary(terminalreporter: pytest.TerminalReporter, benchmarks: list) -> None:  # type: ignore[type-arg]
    """benches/test_layers.py: per case, the cost per layer of each implementation and the ratios."""
    by_case: dict[tuple[str, str, int], tuple[float, int]] = {}
    for bench in benchmarks:
        extra = bench.extra_info
        if extra and "implementation" in extra and bench.stats.rounds:
            key = (extra.get("case", "header"), extra["implementation"], extra["layers"])
            by_case[key] = (bench.stats.min / extra["requests"], extra["requests"])
    measurements = [_bench.Measurement(i, n, t, c, r) for (c, i, n), (t, r) in by_case.items()]
    if not _bench.figures(measurements):
        return  # a partial run (-k): fewer than two layer counts anywhere
    write = terminalreporter.write_line
    write("")
    write("per-layer cost (best round, least-squares slope over layer counts); stock/this = x cheaper than stock,")
    write("this/pure = x the cost of hand-written pure ASGI:")
    for line in _bench.format_table(measurements).splitlines():
        write("  " + line)


def _builtins_summary(terminalreporter: pytest.TerminalReporter, benchmarks: list) -> None:  # type: ignore[type-arg]
    """benches/test_builtins.py: each middleware's own cost per request (bare app subtracted) and the ratio."""
    per: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    for bench in benchmarks:
        extra = bench.extra_info
        if extra and "builtin_case" in extra and bench.stats.rounds:
            per.setdefault(extra["builtin_case"], {})[extra["builtin_impl"]] = bench.stats.min / extra["requests"]
            if "size" in extra:
                sizes[extra["builtin_impl"]] = extra["size"]
    if not per:
        return
    write = terminalreporter.write_line
    write("")
    write("built-in middleware (best round, per request; bare app subtracted where it runs; target >= 3x cheaper):")
    for case, times in per.items():
        # The reference: Starlette's class, or a Python one where Starlette has none.
        reference = "starlette" if "starlette" in times else "python"
        if not {reference, "ferroware"} <= times.keys():
            continue
        # A preflight is answered by the middleware itself: the app never runs, nothing to subtract.
        bare = 0.0 if case == "cors-preflight" else times.get("bare", 0.0)
        s, f = times[reference] - bare, times["ferroware"] - bare
        write(f"  {case:<16} {reference:<9} {s * 1e6:8.2f} us   ferroware {f * 1e6:8.2f} us   {s / f:5.1f}x")
    if {"starlette", "ferroware"} <= sizes.keys():
        write(f"  gzip sizes: starlette {sizes['starlette']} B, ferroware {sizes['ferroware']} B "
              f"({(sizes['ferroware'] / sizes['starlette'] - 1) * 100:+.2f}%)")


def _compression_summary(terminalreporter: pytest.TerminalReporter, benchmarks: list) -> None:  # type: ignore[type-arg]
    """benches/test_builtins.py, compression: time and compressed size of the 100 KiB JSON body per coding."""
    rows = [(b.extra_info["compression_impl"], b.stats.min, b.extra_info["size"], b.extra_info["raw"])
            for b in benchmarks if b.extra_info and "compression_impl" in b.extra_info and b.stats.rounds]  # fmt: skip
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("compression of a 100 KiB JSON response (best round):")
    for impl, seconds, size, raw in rows:
        write(f"  {impl:<17} {seconds * 1e3:7.2f} ms   {size:7,d} B ({size / raw:6.1%} of {raw:,d})")


def _server_path_summary(terminalreporter: pytest.TerminalReporter, benchmarks: list) -> None:  # type: ignore[type-arg]
    """benches/test_server_path.py: per implementation, the first layer's cost, each further
    layer's, and the share of the 0-layer throughput kept at the deepest stack."""
    per: dict[str, dict[int, float]] = {}
    for bench in benchmarks:
        extra = bench.extra_info
        if extra and "server_impl" in extra and bench.stats.rounds:
            per.setdefault(extra["server_impl"], {})[extra["layers"]] = bench.stats.min / extra["requests"]
    write = terminalreporter.write_line
    rows = [(impl, times) for impl, times in per.items() if len(times) >= 3 and 0 in times and 1 in times]
    if not rows:
        return
    write("")
    write("behind uvicorn's H11Protocol, in-process (best round, per request):")
    for impl, times in rows:
        deepest = max(times)
        first = times[1] - times[0]
        further = (times[deepest] - times[1]) / (deepest - 1)
        write(f"  {impl:<10} 0 layers {times[0] * 1e6:6.1f} us   first layer {first * 1e6:5.2f} us   "
              f"each further layer {further * 1e6:5.2f} us   kept at {deepest}: {times[0] / times[deepest]:.0%}")
