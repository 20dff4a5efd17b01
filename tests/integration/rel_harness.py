"""The integration suite's harness: real servers as subprocesses on 127.0.0.1,
serving ``rel_app:root``, an HTTP client for them, and the figures the suite
records (``SUMMARY``, written to docs/reliability.md by conftest.py).

``server`` is parametrized over every server the suite covers. Each server is
started once per session (on a free port, in its own process group), waited
for until it answers ``/debug``, and its process group is killed at the end.
Around every test that uses it the fixture checks that the server process and
its worker survived (same worker pid) and that nothing in the server process
emitted a warning or an unraisable exception; a failed test gets the server's
output from its duration attached to the report.

A server that is not installed, or does not come up, fails the test with the
reason: the suite never skips a server.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
STARTUP_TIMEOUT = 30.0
HOST = "127.0.0.1"


def _cmd_uvicorn(http: str) -> Callable[[int], list[str]]:
    def cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "rel_app:root", "--host", HOST, "--port", str(port),
                "--http", http, "--no-access-log", "--timeout-graceful-shutdown", "2"]  # fmt: skip

    return cmd


def _cmd_hypercorn(worker: str) -> Callable[[int], list[str]]:
    def cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "hypercorn", "rel_app:root", "--bind", f"{HOST}:{port}",
                "--worker-class", worker, "--graceful-timeout", "2"]  # fmt: skip

    return cmd


def _cmd_granian(port: int) -> list[str]:
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--no-access-log", "rel_app:root"]  # fmt: skip


def _cmd_gunicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "rel_app:root", "--bind", f"{HOST}:{port}", "--workers", "1",
            "--worker-class", "uvicorn_worker.UvicornWorker", "--graceful-timeout", "2"]  # fmt: skip


@dataclass(frozen=True)
class ServerKind:
    name: str
    modules: tuple[str, ...]  # what must be importable (installed by .[integration])
    cmd: Callable[[int], list[str]]
    async_library: str = "asyncio"


SERVER_KINDS: dict[str, ServerKind] = {
    kind.name: kind
    for kind in [
        ServerKind("uvicorn-h11", ("uvicorn", "h11"), _cmd_uvicorn("h11")),
        ServerKind("uvicorn-httptools", ("uvicorn", "httptools"), _cmd_uvicorn("httptools")),
        ServerKind("hypercorn", ("hypercorn",), _cmd_hypercorn("asyncio")),
        ServerKind("hypercorn-trio", ("hypercorn", "trio"), _cmd_hypercorn("trio"), "trio"),
        ServerKind("granian", ("granian",), _cmd_granian),
        ServerKind("gunicorn-uvicorn", ("gunicorn", "uvicorn_worker"), _cmd_gunicorn),
    ]
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the whole body arrived (no truncated chunked stream, no reset)
    error: str = ""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def outcome(self) -> tuple[Any, ...]:
        """What a client can compare between two servers of the same response."""
        return (self.status, self.body, self.complete)


@dataclass
class Server:
    kind: ServerKind
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    events_path: Path
    extra: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.kind.name

    # --- HTTP -------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> Reply:  # fmt: skip
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                return Reply(None, [], b"", False, repr(exc))
            try:
                data = resp.read()
                complete = True
                error = ""
            except http.client.IncompleteRead as exc:
                data, complete, error = exc.partial, False, repr(exc)
            except (http.client.HTTPException, OSError) as exc:
                data, complete, error = b"", False, repr(exc)
            return Reply(resp.status, resp.getheaders(), data, complete, error)
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def debug(self, reset_peak: bool = False) -> dict[str, Any]:
        reply = self.request("POST" if reset_peak else "GET", "/debug", timeout=30)
        assert reply.status == 200, f"/debug on {self.name}: {reply}"
        figures: dict[str, Any] = json.loads(reply.body)
        return figures

    # --- the process ------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self, since: int = 0) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def output_size(self) -> int:
        return self.log_path.stat().st_size

    def events_size(self) -> int:
        return self.events_path.stat().st_size if self.events_path.exists() else 0

    def events(self, since: int = 0, **match: Any) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        with open(self.events_path, "rb") as file:
            file.seek(since)
            lines = file.read().decode().splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [e for e in found if all(e.get(k) == v for k, v in match.items())]

    def wait_for_event(self, timeout: float = 5.0, **match: Any) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(**match)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the process group, wait up to ``timeout``, then kill what is left."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return self.proc.returncode


def start_server(kind: ServerKind, workdir: Path, extra_env: dict[str, str] | None = None) -> Server:
    missing = [module for module in kind.modules if importlib.util.find_spec(module) is None]
    if missing:
        pytest.fail(
            f"server {kind.name} can't run: {', '.join(missing)} not installed "
            "(scripts/test.sh installs them with pip install '.[test,integration]')",
            pytrace=False,
        )
    port = free_port()
    log_path = workdir / f"{kind.name}-{port}.log"
    events_path = workdir / f"{kind.name}-{port}.events.jsonl"
    env = {
        **os.environ,
        # This directory (rel_app) and the one above (call_next_patterns).
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "PYTHONUNBUFFERED": "1",
        "REL_EVENTS": str(events_path),
        **(extra_env or {}),
    }
    log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    cmd = kind.cmd(port)
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    log.close()
    server = Server(kind, port, proc, log_path, events_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if not server.alive():
            pytest.fail(f"server {kind.name} exited with {proc.returncode} on start-up: {' '.join(cmd)}\n"
                        f"{server.output()}", pytrace=False)  # fmt: skip
        reply = server.request("GET", "/debug", timeout=2)
        if reply.status == 200:
            return server
        if time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            pytest.fail(f"server {kind.name} did not answer on {HOST}:{port} within {STARTUP_TIMEOUT:.0f} s: "
                        f"{' '.join(cmd)}\n{server.output()}", pytrace=False)  # fmt: skip
        time.sleep(0.1)


class ServerPool:
    """One running server per kind, started on first use, stopped at session end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, Server] = {}
        self.covered: dict[str, int] = {}  # server name -> tests passed on it

    def get(self, name: str) -> Server:
        server = self.running.get(name)
        if server is not None and not server.alive():
            # Reported by the test that killed it; later tests get a fresh one.
            del self.running[name]
            server = None
        if server is None:
            server = self.running[name] = start_server(SERVER_KINDS[name], self.workdir)
        return server

    def stop_all(self) -> None:
        for server in self.running.values():
            server.stop()
        self.running.clear()



def attach_output(node: pytest.Item, server: Server, since: int) -> None:
    """Have the server's output from ``since`` on shown if ``node`` fails."""
    node.stash.setdefault(_OUTPUTS, []).append((server, since))


_OUTPUTS = pytest.StashKey[list[tuple[Server, int]]]()

# Server output lines that are the faults' expected, logged consequences (the
# tests assert what the client and the endpoint saw); anything else a server
# prints is only shown on failure.
SUMMARY: dict[str, Any] = {
    "tests": {}, "test_server": {}, "soak": None, "bodies": {}, "fuzz": None, "fuzz_streaming": None,
}  # fmt: skip
