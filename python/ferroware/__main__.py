"""``ferroware`` / ``python -m ferroware``: the command line."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import starlette

import ferroware
from ferroware import _bench


def _bench_command(args: argparse.Namespace) -> int:
    layer_counts = sorted(set(args.layers))
    if 0 not in layer_counts or len(layer_counts) < 2:
        print("--layers needs 0 and at least one other count (the cost per layer is a slope)", file=sys.stderr)
        return 2
    total = len(_bench.IMPLEMENTATIONS) * len(layer_counts) * args.rounds
    done = 0

    def progress() -> None:
        nonlocal done
        done += 1
        width = 30
        filled = width * done // total
        print(f"\r  measuring [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)

    print(
        f"ferroware {ferroware.__version__}, starlette {starlette.__version__}, "
        f"Python {platform.python_version()}: a layer that sets one response header, on {args.framework}",
        file=sys.stderr,
    )
    results = _bench.measure(
        layer_counts=layer_counts,
        framework=args.framework,
        requests=args.requests,
        rounds=args.rounds,
        on_progress=progress,
    )
    print(file=sys.stderr)
    per_layer = {impl: _bench.per_layer_cost(results, impl) for impl in _bench.IMPLEMENTATIONS}
    print(f"{'implementation':<16}" + "".join(f"{f'{n} layers':>12}" for n in layer_counts) + f"{'per layer':>12}")
    for impl in _bench.IMPLEMENTATIONS:
        row = [m for m in results if m.implementation == impl]
        cells = "".join(f"{m.seconds_per_request * 1e6:>10.2f}us" for m in row)
        print(f"{impl:<16}{cells}{per_layer[impl] * 1e6:>10.2f}us")
    ferro = per_layer["ferroware"]
    print()
    print(f"ferroware per layer: {per_layer['stock'] / ferro:.1f}x cheaper than stock {args.framework}, "
          f"{ferro / per_layer['pure']:.2f}x the cost of hand-written pure ASGI")
    if args.json:
        payload = {
            "framework": args.framework,
            "versions": {
                "ferroware": ferroware.__version__,
                "starlette": starlette.__version__,
                "python": platform.python_version(),
            },
            "seconds_per_request": [m.__dict__ for m in results],
            "seconds_per_layer": per_layer,
            "ratio_stock_to_ferroware": per_layer["stock"] / ferro,
            "ratio_ferroware_to_pure": ferro / per_layer["pure"],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"figures written to {args.json}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferroware", description=ferroware.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="per-layer cost: stock Starlette vs pure ASGI vs ferroware")
    bench.add_argument("--layers", type=int, nargs="+", default=[0, 1, 5, 10], help="layer counts to measure")
    bench.add_argument("--requests", type=int, default=400, help="requests per round (stock uses 1/20)")
    bench.add_argument("--rounds", type=int, default=7, help="rounds per case; the best is kept")
    bench.add_argument("--framework", choices=_bench.FRAMEWORKS, default="fastapi", help="the app the layers wrap")
    bench.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench_command(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
