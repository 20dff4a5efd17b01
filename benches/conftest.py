"""After a benchmark run, turn pytest-benchmark's timings into the figures
that matter: cost per layer (the slope between 0 and 10 layers) and the ratios
between implementations, all from this one run."""

from __future__ import annotations

import pytest

from ferroware import _bench


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    _header_ops_summary(terminalreporter, session.benchmarks)
    _layer_summary(terminalreporter, session.benchmarks)


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
            write(f"  {op:<9} starlette {times['starlette'] * 1e9:7.0f} ns   ferroware {times['ferroware'] * 1e9:7.0f} ns"
                  f"   {times['starlette'] / times['ferroware']:5.1f}x")


def _layer_summary(terminalreporter: pytest.TerminalReporter, benchmarks: list) -> None:  # type: ignore[type-arg]
    by_case: dict[tuple[str, int], float] = {}
    for bench in benchmarks:
        extra = bench.extra_info
        if extra and "implementation" in extra and bench.stats.rounds:
            by_case[(extra["implementation"], extra["layers"])] = bench.stats.min / extra["requests"]
    if not by_case:
        return
    measurements = [_bench.Measurement(impl, n, t) for (impl, n), t in by_case.items()]
    impls = sorted({m.implementation for m in measurements})
    if not all(len({m.layers for m in measurements if m.implementation == i}) > 1 for i in impls):
        return
    per_layer = {impl: _bench.per_layer_cost(measurements, impl) for impl in impls}
    write = terminalreporter.write_line
    write("")
    write("per-layer cost (best round, slope over layer counts):")
    for impl in impls:
        write(f"  {impl:<10} {per_layer[impl] * 1e6:8.2f} us/layer")
    if {"stock", "pure", "ferroware"} <= per_layer.keys():
        write(f"  ferroware is {per_layer['stock'] / per_layer['ferroware']:.1f}x cheaper than stock "
              f"(target >= 30x) and {per_layer['ferroware'] / per_layer['pure']:.2f}x pure ASGI (target <= 1.5x)")
