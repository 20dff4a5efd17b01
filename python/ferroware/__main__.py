"""``ferroware`` / ``python -m ferroware``: the command line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import TextIO

import starlette

import ferroware
from ferroware import _bench


def _versions() -> dict[str, str]:
    versions = {
        "ferroware": ferroware.__version__,
        "starlette": starlette.__version__,
        "python": platform.python_version(),
    }
    try:
        import fastapi

        versions["fastapi"] = fastapi.__version__
    except ImportError:  # pragma: no cover - the bench extra brings it
        pass
    return versions


def _machine() -> dict[str, object]:
    return {"system": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


class _Progress:
    """Progress of a long run, on stderr.

    On a terminal, a one-line bar redrawn in place with ``\\r`` after every step.
    Anywhere else (a log file, a pipe, CI) each redraw would be a line of its own,
    hundreds of them, so it prints a plain line at each tenth of the way instead.
    """

    PLAIN_LINES = 10  # at most this many lines when stderr is not a terminal

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = sys.stderr if stream is None else stream
        self.on_terminal = self.stream.isatty()
        self.start = time.monotonic()

    def step(self) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        if self.on_terminal:
            width = 30
            filled = width * self.done // self.total
            print(
                f"\r  {self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:4.0f}s",
                end="",
                file=self.stream,
                flush=True,
            )
        elif self._tenths(self.done) > self._tenths(self.done - 1):
            percent = 100 * self.done // self.total
            print(f"  {self.label}: {self.done}/{self.total} ({percent}%), {elapsed:.0f}s", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.on_terminal:  # end the bar's line; plain lines end themselves
            print(file=self.stream, flush=True)

    def _tenths(self, done: int) -> int:
        return self.PLAIN_LINES * done // self.total


def _bench_command(args: argparse.Namespace) -> int:
    layer_counts = sorted(set(args.layers))
    if 0 not in layer_counts or len(layer_counts) < 2:
        print("--layers needs 0 and at least one other count (the cost per layer is a slope)", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.requests < 1 or args.concurrency < 1:
        print("--rounds, --requests and --concurrency must be at least 1", file=sys.stderr)
        return 2
    if not 1 <= args.server_duration <= 60 or args.server_layers < 1:
        print("--server-duration must be 1 to 60 seconds and --server-layers at least 1", file=sys.stderr)
        return 2
    cases = args.cases or list(_bench.CASES)
    wrk = None
    if args.server:
        # Fail before the in-process run, not a minute into it.
        from ferroware import _server_bench

        try:
            wrk = _server_bench.preflight()
        except _server_bench.ServerBenchError as e:
            print(f"ferroware bench: {e}", file=sys.stderr)
            return 2

    versions = _versions()
    print(
        ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {os.cpu_count()} CPUs; on {args.framework}",
        file=sys.stderr,
    )
    progress = _Progress(
        _bench.progress_steps(len(cases), len(_bench.IMPLEMENTATIONS), len(layer_counts), args.rounds), "measuring"
    )
    started = time.monotonic()
    results = _bench.measure(
        cases,
        layer_counts=layer_counts,
        framework=args.framework,
        requests=args.requests,
        rounds=args.rounds,
        concurrency=args.concurrency,
        on_progress=progress.step,
    )
    progress.finish()
    elapsed = time.monotonic() - started

    served = "one at a time" if args.concurrency == 1 else f"{args.concurrency} concurrent tasks"
    print(f"Per-layer cost (least-squares slope over {', '.join(map(str, layer_counts))} layers), "
          f"requests served {served}, best of {args.rounds} rounds, in {elapsed:.0f} s:")
    print()
    print(_bench.format_table(results))
    print()
    for case in cases:
        print(f"  {case:<9} {_bench.CASES[case].title}")
    figs = _bench.figures(results)

    chart = Path(args.chart)
    chart.parent.mkdir(parents=True, exist_ok=True)
    title = f"µs per request vs layers: ferroware {versions['ferroware']}, {args.framework}, Python {versions['python']}"
    chart.write_text(_bench.svg_chart(results, title), encoding="utf-8")
    print(f"chart written to {chart}", file=sys.stderr)

    server_payload = None
    if args.server:
        from ferroware import _server_bench

        assert wrk is not None
        runs = []
        impls = list(_bench.IMPLEMENTATIONS)
        server_layers = (0, args.server_layers)
        bar = _Progress(len(impls) * len(server_layers), f"serving ({args.server_duration}s each)")
        try:
            for impl in impls:
                for n in server_layers:
                    runs.append(
                        _server_bench.run_one(
                            wrk, impl, n, duration=args.server_duration,
                            threads=args.wrk_threads, connections=args.wrk_connections,
                        )
                    )  # fmt: skip
                    bar.step()
        except (_server_bench.ServerBenchError, OSError, ValueError) as e:
            bar.finish()
            print(f"ferroware bench --server: {e}", file=sys.stderr)
            return 1
        except Exception as e:  # subprocess errors: say which command failed
            bar.finish()
            print(f"ferroware bench --server: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        bar.finish()
        print()
        print(
            f"uvicorn (1 worker, --interface asgi3, h11) + wrk -t{args.wrk_threads} -c{args.wrk_connections} "
            f"-d{args.server_duration}s on 127.0.0.1, the header case:"
        )
        print(_server_bench.format_server_table(runs, args.server_layers))
        server_payload = {
            "command": f"wrk -t{args.wrk_threads} -c{args.wrk_connections} -d{args.server_duration}s --latency",
            "runs": [r.__dict__ for r in runs],
            "throughput_kept": {impl: _server_bench.kept(runs, impl, args.server_layers) for impl in impls},
            "layers": args.server_layers,
        }

    if args.json:
        payload = {
            "framework": args.framework,
            "versions": versions,
            "machine": _machine(),
            "settings": {
                "layers": layer_counts, "requests": args.requests, "rounds": args.rounds,
                "concurrency": args.concurrency,
            },  # fmt: skip
            "cases": {
                fig.case: {
                    "title": _bench.CASES[fig.case].title,
                    "seconds_per_request": [
                        {"implementation": m.implementation, "layers": m.layers,
                         "seconds": m.seconds_per_request, "requests_per_round": m.requests}
                        for m in results if m.case == fig.case
                    ],  # fmt: skip
                    "seconds_per_layer": fig.per_layer,
                    "ratio_to_stock": fig.vs_stock,
                    "ratio_to_pure": fig.vs_pure,
                }
                for fig in figs
            },
            "server": server_payload,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"figures written to {args.json}", file=sys.stderr)
    return 0


# ``literal`` and :role:`target` (with an optional ~ or !): the reST markup docstrings use.
_REST_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_REST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`[~!]?(.+?)`", re.DOTALL)


def _plain_text(docstring: str) -> str:
    """``docstring`` as a terminal shows it: reST literals and roles reduced to their text."""
    return _REST_ROLE.sub(r"\1", _REST_LITERAL.sub(r"\1", docstring)).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ferroware",
        description=_plain_text(ferroware.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the docstring's paragraphs
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser(
        "bench",
        help="per-layer cost: stock FastAPI vs pure ASGI vs ferroware",
        description="Per-layer cost of stock BaseHTTPMiddleware, hand-written pure ASGI and ferroware, "
        "in-process, for each case; with --server, also end to end behind uvicorn and wrk.",
    )
    bench.add_argument("--cases", nargs="+", choices=list(_bench.CASES), help="cases to run (default: all)")
    bench.add_argument(
        "--layers", type=int, nargs="+", default=list(_bench.LAYER_COUNTS), help="layer counts to measure"
    )
    bench.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="requests per round for a case's bare app; deeper stacks get fewer, so each round takes about as long",
    )
    bench.add_argument("--rounds", type=int, default=9, help="rounds per measurement; the best is kept")
    bench.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="serve each batch from this many tasks, each yielding to the loop between requests, "
        "as on a busy server (default: 1, one request after another)",
    )
    bench.add_argument("--framework", choices=_bench.FRAMEWORKS, default="fastapi", help="the app the layers wrap")
    bench.add_argument("--chart", metavar="PATH", default="ferroware-bench.svg", help="SVG chart (default: %(default)s)")
    bench.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    bench.add_argument("--server", action="store_true", help="also run uvicorn + wrk end to end (needs wrk)")
    bench.add_argument("--server-layers", type=int, default=10, help="layers for --server, against 0 (default: 10)")
    bench.add_argument("--server-duration", type=int, default=8, help="seconds of wrk per server run (default: 8)")
    bench.add_argument("--wrk-threads", type=int, default=2)
    bench.add_argument("--wrk-connections", type=int, default=32)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench_command(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
