"""``ferroware bench --server``: the same app behind uvicorn, driven by wrk.

Each implementation's app (``_bench.build_app``, the ``header`` case) is served
by its own uvicorn process (``--interface asgi3``, one worker, no access log,
h11 on asyncio's own loop even where httptools or uvloop are installed, so
that runs compare alike) on a free loopback port, loaded by ``wrk --latency``
for a bounded time, then stopped. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from starlette.types import ASGIApp

from ferroware import _bench

WRK_MISSING = (
    "--server needs wrk (an HTTP load generator), which is not on PATH. "
    "Install it with `apt-get install -y wrk` (Debian/Ubuntu; `brew install wrk` on macOS), "
    "or run `bash scripts/bench.sh --server`, which installs it when missing."
)
UVICORN_MISSING = "--server needs uvicorn: pip install 'ferroware[bench]'"

ENV_IMPL = "FERROWARE_BENCH_IMPLEMENTATION"
ENV_LAYERS = "FERROWARE_BENCH_LAYERS"


def app_factory() -> ASGIApp:
    """What uvicorn serves (``--factory``): the app named by the environment."""
    return _bench.build_app("header", os.environ[ENV_IMPL], int(os.environ[ENV_LAYERS]))


class ServerBenchError(RuntimeError):
    pass


def preflight() -> str:
    """The path of wrk, or ``ServerBenchError`` saying what is missing and how to get it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise ServerBenchError(WRK_MISSING)
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise ServerBenchError(UVICORN_MISSING) from None
    return wrk


@dataclass(frozen=True)
class ServerRun:
    implementation: str
    layers: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors plus non-2xx/3xx responses


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """Requests/s, p50 and p99 in ms, request count and error count from ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", output)
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"unreadable wrk output:\n{output}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)), errors


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerBenchError(f"uvicorn exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ServerBenchError(f"uvicorn did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def run_one(
    wrk: str, implementation: str, layers: int, *, duration: int, threads: int, connections: int
) -> ServerRun:
    port = _free_port()
    env = dict(os.environ, **{ENV_IMPL: implementation, ENV_LAYERS: str(layers)})
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "ferroware._server_bench:app_factory",
        "--interface", "asgi3", "--http", "h11", "--loop", "asyncio",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        _wait_until_listening(proc, port)
        url = f"http://127.0.0.1:{port}/"
        # A short warm-up (builds the stack), then the measured run.
        subprocess.run(
            [wrk, "-t1", "-c4", "-d1s", url], check=True, capture_output=True, timeout=30
        )
        result = subprocess.run(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
            check=True,
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
    finally:
        _stop(proc)
    rps, p50, p99, total, errors = parse_wrk(result.stdout)
    return ServerRun(implementation, layers, rps, p50, p99, total, errors)


def kept(runs: list[ServerRun], implementation: str, layers: int) -> float:
    """The fraction of 0-layer throughput kept at ``layers`` layers."""
    by = {(r.implementation, r.layers): r.requests_per_second for r in runs}
    return by[(implementation, layers)] / by[(implementation, 0)]


def format_server_table(runs: list[ServerRun], layers: int) -> str:
    lines = [f"{'implementation':<16}{'layers':>7}{'req/s':>10}{'p50':>10}{'p99':>10}{'errors':>8}"]
    for r in runs:
        lines.append(
            f"{r.implementation:<16}{r.layers:>7}{r.requests_per_second:>10.0f}"
            f"{r.p50_ms:>8.2f}ms{r.p99_ms:>8.2f}ms{r.errors:>8}"
        )
    lines.append("")
    impls = list(dict.fromkeys(r.implementation for r in runs))
    lines.append(
        f"throughput kept at {layers} layers (of 0 layers): "
        + ", ".join(f"{impl} {kept(runs, impl, layers):.0%}" for impl in impls)
    )
    return "\n".join(lines)
