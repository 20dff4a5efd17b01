"""The header case behind uvicorn's own HTTP/1.1 protocol, in-process.

``ferroware bench --server`` measures end to end with uvicorn and wrk, where
two processes share two cores and a run varies by several percent. This drives
the same server code (uvicorn's ``H11Protocol``: h11 parsing, a new task per
request, uvicorn's ``send`` and ``receive``) with no socket: each connection's
transport is a stand-in that keeps what is written, and the next request is
fed in as soon as uvicorn reports the response complete. It reproduces what
the server run shows, and what the in-process benches don't: the outermost
layer costs several times more per request there than it does with a bare
``send`` (BENCHMARKS.md, "Where the server-bar difference sits"). The summary
(``conftest.py``) prints each layer count's cost and the throughput kept.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from ferroware import _bench

IMPLEMENTATIONS = ("pure", "ferroware")
LAYER_COUNTS = (0, 1, 10)
CONNECTIONS = 8
REQUESTS = 600  # per round
ROUNDS = 10
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: ferroware-bench\r\n\r\n"
RESPONSE_BODY = b"Hello, world!"


class Transport(asyncio.Transport):
    """What uvicorn writes to, instead of a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Connection(H11Protocol):
    """A keep-alive connection that sends its next request when a response completes."""

    def __init__(self, config: Config, state: ServerState, batch: Batch) -> None:
        super().__init__(config=config, server_state=state, app_state={})
        self.batch = batch
        self.transport_ = Transport()
        self.connection_made(self.transport_)

    def next_request(self) -> None:
        if self.batch.unsent:
            self.batch.unsent -= 1
            self.data_received(REQUEST)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.batch.answered()
        self.batch.loop.call_soon(self.next_request)


class Batch:
    """``requests`` requests over ``CONNECTIONS`` connections; done when all are answered."""

    def __init__(self, loop: asyncio.AbstractEventLoop, requests: int) -> None:
        self.loop = loop
        self.unsent = requests
        self.unanswered = requests
        self.done: asyncio.Future[None] = loop.create_future()

    def answered(self) -> None:
        self.unanswered -= 1
        if self.unanswered == 0:
            self.done.set_result(None)


def server_config(implementation: str, layers: int) -> Config:
    app = _bench.build_app("header", implementation, layers)
    config = Config(app=app, interface="asgi3", http="h11", lifespan="off", access_log=False, log_level="warning")
    config.load()
    return config


async def serve(config: Config, requests: int) -> list[Connection]:
    loop = asyncio.get_running_loop()
    batch = Batch(loop, requests)
    state = ServerState()
    connections = [Connection(config, state, batch) for _ in range(CONNECTIONS)]
    for connection in connections:
        loop.call_soon(connection.next_request)
    await batch.done
    for connection in connections:
        connection.connection_lost(None)
    return connections


def answered(connections: list[Connection]) -> int:
    """How many complete ``200`` responses with the app's body were written."""
    text = b"".join(b"".join(c.transport_.written) for c in connections)
    return text.count(b"HTTP/1.1 200 OK\r\n") if text.count(RESPONSE_BODY) == text.count(b"HTTP/1.1 ") else -1


@pytest.mark.parametrize("layers", LAYER_COUNTS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_server_path(benchmark, loop: asyncio.AbstractEventLoop, implementation: str, layers: int) -> None:  # type: ignore[no-untyped-def]
    config = server_config(implementation, layers)
    # Every request is answered in full, as the app answers, before any timing.
    assert answered(loop.run_until_complete(serve(config, 40))) == 40
    benchmark.group = "header case behind uvicorn's H11Protocol (in-process)"
    benchmark.extra_info.update(server_impl=implementation, layers=layers, requests=REQUESTS)
    benchmark.pedantic(loop.run_until_complete, setup=lambda: ((serve(config, REQUESTS),), {}), rounds=ROUNDS)
