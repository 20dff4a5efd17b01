"""The mixed stack on real servers: streaming, disconnects, large bodies, faults, shutdown.

Every test runs on every server in ``SERVER_KINDS`` (uvicorn h11 and httptools,
hypercorn on asyncio and trio, granian in ASGI mode, gunicorn with uvicorn
workers). Fault tests send the same request to ``/ferro`` (ferroware) and
``/stock`` (stock Starlette) of the same server and compare what the client got.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import uuid
from typing import Any

import pytest
from rel_harness import HOST, SERVER_KINDS, SUMMARY, Reply, Server, attach_output, start_server
from call_next_patterns import ASYNCIO_ONLY, PATTERNS
from rel_app import MB, payload

pytestmark = pytest.mark.integration

BODY_SIZE = 50 * MB
# Peak RSS growth allowed while 50 MB pass through layers that don't read them:
# a few chunks in flight plus allocator slack, well under the body's size.
STREAMED_BODY_PEAK_BOUND = 16 * MB
SUMMARY["body_bound"] = STREAMED_BODY_PEAK_BOUND


def tag() -> str:
    return uuid.uuid4().hex[:12]


# --- streaming ---------------------------------------------------------------------------


def read_events(server: Server, path: str, stop_after: int | None = None, timeout: float = 10.0) -> list[tuple[float, bytes]]:
    """GET ``path`` over a raw socket; each server-sent event with its arrival time.

    With ``stop_after`` the client closes the connection once that many events
    arrived, without reading further.
    """
    sock = socket.create_connection((HOST, server.port), timeout=timeout)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode())
        buffer = b""
        events: list[tuple[float, bytes]] = []
        while True:
            data = sock.recv(65536)
            now = time.monotonic()
            if not data:
                return events
            buffer += data
            # Chunked framing aside, each event is "data: ...\n\n".
            while b"data: " in buffer and b"\n\n" in buffer[buffer.index(b"data: ") :]:
                start = buffer.index(b"data: ")
                end = buffer.index(b"\n\n", start) + 2
                events.append((now, buffer[start:end]))
                buffer = buffer[end:]
                if stop_after is not None and len(events) >= stop_after:
                    return events
            if buffer.endswith(b"0\r\n\r\n"):  # the last chunk (of a chunked response)
                return events
    finally:
        sock.close()


@pytest.mark.parametrize("prefix", ["/ferro", "/stock"])
def test_event_stream_chunks_arrive_as_produced(server: Server, prefix: str) -> None:
    """Five events produced 100 ms apart reach the client one by one, > 50 ms apart."""
    events = read_events(server, f"{prefix}/stream?n=5&interval=0.1")
    assert [body.split()[1] for _, body in events] == [str(i).encode() for i in range(5)], events
    gaps = [later - earlier for (earlier, _), (later, _) in zip(events, events[1:])]
    assert all(gap > 0.05 for gap in gaps), f"events bunched up on {server.name}: gaps {gaps}"


# granian 2.8.7 cuts an event stream whose generator polls the server's receive
# (``request.is_disconnected()``) even with no middleware at all (``/bare``), at
# random: these two tests can't tell ferroware's behaviour from granian's there.
# Reproducer and details in docs/reliability.md; every other server runs them.
SERVERS_WITH_RELIABLE_POLLS = [kind for kind in SERVER_KINDS if kind != "granian"]


@pytest.mark.parametrize("server", SERVERS_WITH_RELIABLE_POLLS, indirect=True)
@pytest.mark.parametrize("prefix", ["/ferro", "/stock", "/bare"])
def test_event_stream_polling_is_disconnected_runs_to_the_end(server: Server, prefix: str) -> None:
    """A generator that polls ``await request.is_disconnected()`` before each event,
    with the client staying: all events arrive (ten, 50 ms apart), as with no middleware."""
    t = tag()
    events = read_events(server, f"{prefix}/sse-forever?tag={t}&limit=10")
    assert [body for _, body in events] == [f"data: {i}\n\n".encode() for i in range(1, 11)], (
        f"{prefix} on {server.name}: the stream ended early; the endpoint saw {server.events(tag=t)}"
    )


# --- disconnects -------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS_WITH_RELIABLE_POLLS, indirect=True)
def test_client_gone_mid_stream_stops_the_stream(server: Server) -> None:
    """A client that leaves after two events: the generator's ``finally`` runs and
    it produces nothing more, on ferroware as on stock Starlette."""
    tags = {"ferro": tag(), "stock": tag()}
    for kind, t in tags.items():
        events = read_events(server, f"/{kind}/sse-forever?tag={t}", stop_after=2)
        assert len(events) == 2, events
    for kind, t in tags.items():
        cleanup = server.wait_for_event(timeout=5, ev="cleanup", tag=t)
        assert cleanup is not None, f"{kind}: the stream's cleanup never ran on {server.name}: {server.events(tag=t)}"
    time.sleep(0.3)  # three more production periods: nothing may come
    for kind, t in tags.items():
        seen = server.events(tag=t)
        cleanup_at = next(e["t"] for e in seen if e["ev"] == "cleanup")
        late = [e for e in seen if e["t"] > cleanup_at]
        assert not late, f"{kind}: the stream kept running after its cleanup on {server.name}: {late}"
        assert not any(e["ev"] == "ran-out" for e in seen), seen


def test_endpoint_polling_is_disconnected_sees_the_client_leave(server: Server) -> None:
    """ferroware's documented improvement: ``await request.is_disconnected()`` in an
    endpoint behind the middleware turns True once the client is gone, wherever it
    does with no middleware at all (``/bare``). Stock Starlette's poll never does;
    its outcome, and the bare one, are recorded in docs/reliability.md."""
    tags = {"ferro": tag(), "stock": tag(), "bare": tag()}
    socks = []
    for kind, t in tags.items():
        sock = socket.create_connection((HOST, server.port), timeout=5)
        sock.sendall(f"GET /{kind}/wait-disconnect?tag={t}&polls=40 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        socks.append(sock)
    for kind, t in tags.items():
        assert server.wait_for_event(timeout=5, ev="wait-start", tag=t), f"{kind}: endpoint never started"
    for sock in socks:
        sock.close()
    for kind, t in tags.items():  # each endpoint polls for 2 s at most
        assert server.wait_for_event(timeout=5, ev="cleanup", tag=t), f"{kind}: the endpoint never ended"
    saw = {kind: bool(server.events(ev="saw-disconnect", tag=t)) for kind, t in tags.items()}
    SUMMARY.setdefault("sees_disconnect", {})[server.name] = saw
    assert saw["ferro"] or not saw["bare"], (
        f"on {server.name} an endpoint with no middleware sees the disconnect, behind ferroware it doesn't: {saw}"
    )


# --- bodies ------------------------------------------------------------------------------


def upload(server: Server, path: str) -> tuple[Reply, str]:
    digest = hashlib.sha256()
    blocks = []
    for block in payload(BODY_SIZE):
        digest.update(block)
        blocks.append(block)
    reply = server.request("POST", path, body=iter(blocks), headers={"Content-Length": str(BODY_SIZE)}, timeout=60)
    return reply, digest.hexdigest()


def test_large_upload_streams_through_with_bounded_memory(server: Server) -> None:
    """50 MB through layers that don't read them: byte-exact, and the server's peak
    RSS (VmHWM, reset before) grows by less than STREAMED_BODY_PEAK_BOUND."""
    before = server.debug(reset_peak=True)
    reply, expected = upload(server, "/ferro/upload")
    after = server.debug()
    assert reply.status == 200 and reply.complete, reply
    assert reply.body == f'{{"size":{BODY_SIZE},"sha256":"{expected}"}}'.encode(), reply.body
    growth = after["VmHWM"] - before["VmRSS"]
    SUMMARY["bodies"].setdefault(server.name, {})["upload_peak_growth"] = growth
    assert growth < STREAMED_BODY_PEAK_BOUND, (
        f"{server.name}: peak RSS grew {growth / MB:.1f} MB for a streamed 50 MB upload"
    )


def test_large_upload_read_in_dispatch_is_replayed_byte_exact(server: Server) -> None:
    """A layer that awaits ``request.body()`` replays the same 50 MB downstream."""
    reply, expected = upload(server, "/ferro/upload-read")
    assert reply.status == 200 and reply.complete, reply
    assert reply.header("x-dispatch-sha256") == expected
    assert reply.body == f'{{"size":{BODY_SIZE},"sha256":"{expected}"}}'.encode(), reply.body


def test_large_download_arrives_byte_exact(server: Server) -> None:
    expected = hashlib.sha256()
    for block in payload(BODY_SIZE):
        expected.update(block)
    before = server.debug(reset_peak=True)
    reply = server.get(f"/ferro/download?size={BODY_SIZE}", timeout=60)
    after = server.debug()
    assert reply.status == 200 and reply.complete, reply.error
    assert len(reply.body) == BODY_SIZE
    assert hashlib.sha256(reply.body).hexdigest() == expected.hexdigest()
    growth = after["VmHWM"] - before["VmRSS"]
    SUMMARY["bodies"].setdefault(server.name, {})["download_peak_growth"] = growth
    assert growth < STREAMED_BODY_PEAK_BOUND, f"{server.name}: peak RSS grew {growth / MB:.1f} MB for a 50 MB download"


# --- faults ------------------------------------------------------------------------------

FAULTS: dict[str, tuple[str, dict[str, str]]] = {
    "dispatch-before": ("/hello", {"x-fault": "dispatch-before"}),
    "dispatch-after": ("/hello", {"x-fault": "dispatch-after"}),
    "endpoint-before": ("/fault/endpoint-before", {}),
    "endpoint-after": ("/fault/endpoint-after", {}),
    "background": ("/fault/background?tag={tag}", {}),
    "timeout-anyio": ("/slow?secs=3&tag={tag}", {"x-fault": "timeout-anyio"}),
    "timeout-asyncio": ("/slow?secs=3&tag={tag}", {"x-fault": "timeout-asyncio"}),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_behaves_as_stock_starlette(server: Server, fault: str) -> None:
    path, headers = FAULTS[fault]
    tags = {"ferro": tag(), "stock": tag()}
    replies = {
        kind: server.get(f"/{kind}{path.format(tag=t)}", headers={**headers, "x-request-id": t}, timeout=20)
        for kind, t in tags.items()
    }
    ferro, stock = replies["ferro"], replies["stock"]
    assert ferro.outcome() == stock.outcome(), f"{fault} on {server.name}: ferroware {ferro} vs stock {stock}"
    assert ferro.status is not None, f"{fault} on {server.name}: no response at all: {ferro.error}"
    # Every observation the endpoints made, as (event, detail), is the same too.
    on_asyncio = SERVER_KINDS[server.name].async_library == "asyncio"
    awaited = {"background": "background-ran", "timeout-anyio": "timeout"}
    if on_asyncio:
        awaited["timeout-asyncio"] = "timeout"
    if fault in awaited:  # recorded after the response went out, or after the cleanup
        for t in tags.values():
            server.wait_for_event(timeout=5, ev=awaited[fault], tag=t)
    # On trio a cancel scope of dispatch's around call_next sends the request
    # down the task path (docs/design.md, "Which path a request takes").
    task_path = fault == "timeout-anyio" and not on_asyncio
    if task_path:
        # The endpoint runs on in its own task, to the end of its 3 s sleep
        # after the 504 went out, as stock Starlette's does.
        for t in tags.values():
            server.wait_for_event(timeout=5, ev="cleanup", tag=t)
        seen = {kind: [(e["ev"], e.get("exc")) for e in server.events(tag=t)] for kind, t in tags.items()}
        assert ferro.status == 504 and ferro.body == b"call_next timed out"
        assert seen["ferro"] == seen["stock"], f"{fault} on {server.name}: endpoint observations differ: {seen}"
        assert [ev for ev, _ in seen["ferro"]] == ["slow-start", "timeout", "cleanup", "slow-done"], seen
        SUMMARY.setdefault("timeouts", {})[f"{server.name} {fault}"] = {k: [ev for ev, _ in v] for k, v in seen.items()}
    elif fault in awaited and fault != "background":
        # The client gets the same 504 from both. What happens to the endpoint
        # differs (README, deliberate differences): ferroware cancels it with
        # call_next (it runs in dispatch's task, inside the timeout's scope),
        # while stock Starlette's endpoint runs in the layer's task group,
        # outside that scope, and goes on to the end of its 3 s sleep after
        # the 504 went out. Asserted for ferroware; stock's is recorded in
        # docs/reliability.md.
        server.wait_for_event(timeout=5, ev="cleanup", tag=tags["stock"])
        seen = {kind: [(e["ev"], e.get("exc")) for e in server.events(tag=t)] for kind, t in tags.items()}
        assert ferro.status == 504 and ferro.body == b"call_next timed out"
        cancelled = "CancelledError" if on_asyncio else "Cancelled"  # asyncio's or trio's
        assert seen["ferro"] == [("slow-start", None), ("slow-interrupted", cancelled), ("cleanup", None),
                                 ("timeout", None)], seen  # fmt: skip
        SUMMARY.setdefault("timeouts", {})[f"{server.name} {fault}"] = {k: [ev for ev, _ in v] for k, v in seen.items()}
    else:
        seen = {kind: [(e["ev"], e.get("exc")) for e in server.events(tag=t)] for kind, t in tags.items()}
        assert seen["ferro"] == seen["stock"], f"{fault} on {server.name}: endpoint observations differ: {seen}"
    if fault == "background":
        assert ferro.status == 200 and ferro.body == b"background scheduled"
        assert [ev for ev, _ in seen["ferro"]] == ["background-ran"], seen
    # The server is still serving normally.
    assert server.get("/ferro/hello").outcome() == (200, b"hello", True)


# --- the body re-streamed by a layer ------------------------------------------------------

RESTREAMED = {
    "download": "/download?size=2621440&tag={tag}",  # three chunks
    "endpoint-after": "/fault/endpoint-after?tag={tag}",
    "hello": "/hello?tag={tag}",
}


# On ASGI 2.3 the re-streaming response polls the server's receive for the
# disconnect; granian's spurious one (above) can stop stock's stream before the
# endpoint's error reaches it, at random: granian is left out here too.
# How the layer re-streams (``rel_app.restream``): ``StreamingResponse`` over
# the body, or a response that pulls it from a child task while its own task
# only waits for its children (sse-starlette's ``EventSourceResponse`` does).
# The second is unsupported on trio (README, "Known limitations": the request
# hangs there), so it is not run on trio.
RESTREAMS = [
    (kind, how)
    for kind in SERVERS_WITH_RELIABLE_POLLS
    for how in ["1", "children"]
    if how == "1" or SERVER_KINDS[kind].async_library != "trio"
]


@pytest.mark.parametrize(("server", "restream"), RESTREAMS, indirect=["server"])
@pytest.mark.parametrize("case", list(RESTREAMED))
def test_restreamed_body_behaves_as_stock_starlette(server: Server, case: str, restream: str) -> None:
    """A layer answering ``StreamingResponse`` over ``call_next``'s body (on
    ASGI 2.3 servers pulled from that response's own task) with layers above
    it, over an endpoint that streams (or fails mid-stream): the client gets
    what it gets through stock Starlette, and the same exception (if any)
    leaves the app, not one about cancel scopes or task groups."""
    tags = {"ferro": tag(), "stock": tag()}
    replies = {
        kind: server.get(f"/{kind}{RESTREAMED[case].format(tag=t)}", headers={"x-restream": restream}, timeout=20)
        for kind, t in tags.items()
    }
    assert replies["ferro"].outcome() == replies["stock"].outcome(), f"{case} on {server.name}: {replies}"
    for kind, t in tags.items():  # the app may end after the client got what it gets
        assert server.wait_for_event(timeout=5, ev="ended", tag=t), f"{kind}: the app never ended on {server.name}"
    escaped = {kind: [(e["exc"], e["message"]) for e in server.events(ev="escaped", tag=t)] for kind, t in tags.items()}
    assert escaped["ferro"] == escaped["stock"], f"{case} on {server.name}: {escaped}"


@pytest.mark.parametrize(("server", "restream"), RESTREAMS, indirect=["server"])
def test_client_gone_mid_restream_stops_the_stream(server: Server, restream: str) -> None:
    """The client leaves a re-streamed event stream after two events: the
    endpoint's generator is cleaned up and stops, and nothing escapes the app
    that doesn't through stock Starlette."""
    tags = {"ferro": tag(), "stock": tag()}
    for kind, t in tags.items():
        sock = socket.create_connection((HOST, server.port), timeout=10)
        try:
            head = f"GET /{kind}/sse-forever?tag={t} HTTP/1.1\r\nHost: {HOST}\r\nx-restream: {restream}\r\n\r\n"
            sock.sendall(head.encode())
            received = b""
            while received.count(b"data: ") < 2:
                data = sock.recv(65536)
                assert data, f"{kind}: the stream ended early on {server.name}"
                received += data
        finally:
            sock.close()
    for kind, t in tags.items():
        assert server.wait_for_event(timeout=5, ev="cleanup", tag=t), f"{kind}: no cleanup on {server.name}"
        assert server.wait_for_event(timeout=5, ev="ended", tag=t), f"{kind}: the app never ended on {server.name}"
    time.sleep(0.3)  # three more production periods: nothing may come
    escaped = {kind: [(e["exc"], e["message"]) for e in server.events(ev="escaped", tag=t)] for kind, t in tags.items()}
    assert escaped["ferro"] == escaped["stock"], f"on {server.name}: {escaped}"
    for kind, t in tags.items():
        seen = server.events(tag=t)
        cleanup_at = next(e["t"] for e in seen if e["ev"] == "cleanup")
        assert not [e for e in seen if e["t"] > cleanup_at and e["ev"] == "produced"], f"{kind}: {seen}"


# --- shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVER_KINDS))
def test_sigterm_with_requests_in_flight(request: pytest.FixtureRequest, tmp_path: Any, name: str) -> None:
    """SIGTERM while a request is in flight on each stack: the server stops within
    bounded time, and the in-flight requests end the same way on ferroware as on
    stock Starlette (what the client got, what the endpoint saw)."""
    srv = start_server(SERVER_KINDS[name], tmp_path)
    attach_output(request.node, srv, 0)
    try:
        tags = {"ferro": tag(), "stock": tag()}
        replies: dict[str, Reply] = {}

        def call(kind: str) -> None:
            replies[kind] = srv.get(f"/{kind}/slow?secs=6&tag={tags[kind]}", timeout=20)

        threads = [threading.Thread(target=call, args=(kind,)) for kind in tags]
        for thread in threads:
            thread.start()
        for kind, t in tags.items():
            assert srv.wait_for_event(timeout=10, ev="slow-start", tag=t), f"{kind}: the request never started"
        started = time.monotonic()
        srv.proc.send_signal(15)  # the server's own process, as a supervisor would
        try:
            code = srv.proc.wait(timeout=15)
        except Exception:
            pytest.fail(f"{name} still running 15 s after SIGTERM")
        stopped_in = time.monotonic() - started
        for thread in threads:
            thread.join(timeout=20)
        seen = {kind: [(e["ev"], e.get("exc")) for e in srv.events(tag=t)] for kind, t in tags.items()}
        assert seen["ferro"] == seen["stock"], f"{name}: endpoint observations differ: {seen}"
        # What the client gets depends on how far the app unwound before the
        # server process ended: uvicorn cancels the request tasks, runs the
        # lifespan shutdown and exits; ferroware's stack unwinds in one step
        # (uvicorn then answers its own 500), stock Starlette's task group
        # takes several, and the process can be gone first (connection closed,
        # no response). Neither may look like a success.
        for kind, reply in replies.items():
            assert reply.outcome() == replies["stock"].outcome() or reply.status in (None, 500), (kind, reply)
            assert reply.status != 200 or reply.body == b"slow done", (kind, reply)
        SUMMARY.setdefault("sigterm", {})[name] = {
            "exit_code": code,
            "stopped_in_s": round(stopped_in, 2),
            "endpoint_saw": [ev for ev, _ in seen["ferro"]],
            "client_got": {kind: reply.status for kind, reply in replies.items()},
        }
    finally:
        srv.stop(timeout=2)


@pytest.mark.parametrize("restream", ["none", "1"])
def test_stream_cut_by_an_outer_timeout_never_looks_complete(server: Server, restream: str) -> None:
    """An outer pure-ASGI layer cancels the app 1 s into a 10 s stream
    (``x-cut-after``, an ``anyio.move_on_after`` in ``rel_app.root``). The body
    was cut, so the client gets what it gets from stock Starlette and from the
    same endpoint with no middleware: on uvicorn, an incomplete chunked body,
    never a terminated one (issue 16, item 3: ferroware used to send a final
    empty chunk while the cancellation unwound, which made a cut body look
    whole). With ``x-restream: 1`` a layer of the stack re-streams call_next's
    body, so the cancellation crosses a second body iterator."""
    headers = {"x-cut-after": "1.0", **({"x-restream": restream} if restream != "none" else {})}
    replies: dict[str, Reply] = {}

    def call(kind: str) -> None:
        replies[kind] = server.get(f"/{kind}/stream?n=100&interval=0.1", headers=headers, timeout=20)

    threads = [threading.Thread(target=call, args=(kind,)) for kind in ("ferro", "stock", "bare")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    SUMMARY.setdefault("cut_streams", {})[f"{server.name} restream={restream}"] = {
        kind: (reply.body.count(b"data: "), reply.complete) for kind, reply in replies.items()
    }
    if server.name == "granian" and restream != "none":
        # On granian a cut re-streamed body arrives, from stock Starlette and
        # ferroware alike, in one of two ways from run to run: cut after some
        # events, or empty and terminated. Recorded (docs/reliability.md), not
        # asserted: the server decides, not the middleware.
        return
    for kind in ("ferro", "stock", "bare"):
        reply = replies[kind]
        assert reply.status == 200, (kind, reply)
        assert 0 < reply.body.count(b"data: ") < 100, (kind, reply)
        assert reply.complete == replies["bare"].complete, (
            f"{server.name}: {kind} complete={reply.complete}, the bare endpoint's {replies['bare'].complete}"
        )
    if server.name.startswith("uvicorn"):
        assert not replies["ferro"].complete, f"{server.name}: a cut stream looked complete"


# --- call_next from another task ------------------------------------------------------

CALL_NEXT_KINDS = {  # the tag names the request's events (``rel_app.root``)
    "plain": "/hello?tag={tag}",
    "streaming": "/download?size=2621440&tag={tag}",  # three chunks
    "file": "/file?tag={tag}",
    "background": "/background?tag={tag}",
}
LOG_PROBLEMS = ("Traceback", "Exception in ASGI application", "cancel scope", "Task exception was never retrieved")


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_call_next_from_another_task_behaves_as_stock_starlette(server: Server, pattern: str) -> None:
    """A layer awaiting call_next from another task (``wait_for``,
    ``create_task``, ``shield``, ``gather``, an ``asyncio.TaskGroup``, anyio's
    ``start_soon``) or in a cancel scope (``fail_after``, ``move_on_after``),
    in front of each kind of response, returned as it is or re-streamed by a
    layer above: the client gets what it gets from stock Starlette, a
    background task runs for both, and nothing is logged (issue 16, item 2:
    on ASGI 2.3 servers, every such request used to log "Attempted to exit
    cancel scope in a different task")."""
    if pattern in ASYNCIO_ONLY and SERVER_KINDS[server.name].async_library != "asyncio":
        pattern = "start_soon"  # trio has no asyncio tasks: its own kind of child instead
    since = server.output_size()
    for kind, path in CALL_NEXT_KINDS.items():
        # Not a file re-streamed: on granian (pathsend) the body iterator gives
        # the pathsend message, which StreamingResponse can't send (stock too).
        for restream in ("none",) if kind == "file" else ("none", "1"):
            tags = {"ferro": tag(), "stock": tag()}
            headers = {"x-call-next": pattern, **({"x-restream": restream} if restream != "none" else {})}
            replies = {
                name: server.get(f"/{name}{path.format(tag=t)}", headers=headers, timeout=20)
                for name, t in tags.items()
            }
            ferro, stock = replies["ferro"], replies["stock"]
            case = f"{pattern} {kind} restream={restream} on {server.name}"
            assert ferro.outcome() == stock.outcome(), f"{case}: ferroware {ferro} vs stock {stock}"
            assert ferro.status == 200 and ferro.complete, f"{case}: {ferro}"
            assert ferro.header("x-call-next") == pattern, f"{case}: {ferro.headers}"
            if kind == "background":
                for t in tags.values():
                    assert server.wait_for_event(timeout=5, ev="background-ran", tag=t), f"{case}: no background"
            if restream != "none":
                for t in tags.values():
                    assert server.wait_for_event(timeout=5, ev="ended", tag=t), f"{case}: the app never ended"
                    assert not server.events(ev="escaped", tag=t), f"{case}: {server.events(ev='escaped', tag=t)}"
    logged = server.output(since)
    problems = [line for line in logged.splitlines() if any(p in line for p in LOG_PROBLEMS)]
    assert not problems, f"{pattern} on {server.name} logged:\n" + "\n".join(problems)
