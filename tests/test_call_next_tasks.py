"""``call_next`` awaited from another task, against stock Starlette.

Timeout and fan-out middleware await ``call_next`` in a task of its own:
``asyncio.wait_for`` (on CPython 3.11 it runs the awaitable in a new task),
``create_task``, ``shield``, ``gather``, an ``asyncio.TaskGroup``, anyio's
``start_soon``; or in a cancel scope of ``dispatch``'s (``fail_after``,
``move_on_after``). Each pattern, on each kind of response (plain, streaming,
file, with a background task), returned as it is or re-streamed by
``dispatch`` (``StreamingResponse(response.body_iterator)``), on ASGI 2.3
(Starlette's responses stream from a child task there) and 2.4: the same
messages, events and errors as through stock Starlette, in the same run.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from call_next_patterns import ANYIO_PATTERNS, ASYNCIO_PATTERNS, PATTERNS, Pattern, create_task
from test_differential import STOCK_BODY_STREAM_LEAK, Base, CallNext, Recorder, differential, http_scope

RESPONSES = ["plain", "streaming", "file", "background"]


def endpoint(kind: str, recorder: Recorder, path: Path) -> ASGIApp:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"one ", b"two ", b"three"):
            await anyio.sleep(0)
            recorder.event("app:chunk", chunk)
            yield chunk

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        recorder.event("app:called")
        response: Response
        if kind == "plain":
            response = PlainTextResponse("plain body")
        elif kind == "streaming":
            response = StreamingResponse(chunks(), media_type="text/plain")
        elif kind == "file":
            response = FileResponse(path, stat_result=path.stat())
        else:
            response = PlainTextResponse("body", background=BackgroundTask(recorder.event, "app:background"))
        await response(scope, receive, send)
        recorder.event("app:returned")

    return app


def build(pattern: Pattern, kind: str, restream: bool, path: Path) -> Callable[[Base, Recorder], ASGIApp]:
    def make(base: Base, recorder: Recorder) -> ASGIApp:
        async def dispatch(request: Request, call_next: CallNext) -> Response:
            recorder.event("dispatch:before")
            response = await pattern(call_next, request)
            recorder.event("dispatch:after", response.status_code)
            if restream:
                body = response.body_iterator  # type: ignore[attr-defined]
                return StreamingResponse(body, status_code=response.status_code, headers=dict(response.headers))
            return response

        return base(endpoint(kind, recorder, path), dispatch=dispatch)

    return make


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_bytes(b"file body " * 100)
    return path


async def check(pattern: Pattern, kind: str, restream: bool, spec_version: str, path: Path) -> None:
    await differential(
        build(pattern, kind, restream, path), scope=lambda: http_scope(spec_version=spec_version, extensions={})
    )


# anyio's patterns on both backends, asyncio's on asyncio.
BACKEND_PATTERNS = [(backend, pattern) for backend in ("asyncio", "trio") for pattern in ANYIO_PATTERNS] + [
    ("asyncio", pattern) for pattern in ASYNCIO_PATTERNS
]


@pytest.mark.anyio
@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
@pytest.mark.parametrize("restream", [False, True], ids=["returned", "restreamed"])
@pytest.mark.parametrize("kind", RESPONSES)
@pytest.mark.parametrize(
    ("anyio_backend", "pattern"), BACKEND_PATTERNS, ids=[f"{b}-{p.__name__}" for b, p in BACKEND_PATTERNS]
)
async def test_patterns(pattern: Pattern, kind: str, restream: bool, spec_version: str, body_file: Path) -> None:
    await check(pattern, kind, restream, spec_version, body_file)


@pytest.mark.anyio
@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is new in CPython 3.12")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
@pytest.mark.parametrize("restream", [False, True], ids=["returned", "restreamed"])
@pytest.mark.parametrize("kind", RESPONSES)
async def test_create_task_under_an_eager_task_factory(
    kind: str, restream: bool, spec_version: str, body_file: Path
) -> None:
    """An eager task runs its first step inside ``create_task``, so
    ``call_next`` first runs while the layer steps ``dispatch``, in another
    task: the layer asks which task it is, where the loop has a task factory."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined, unused-ignore]
    try:
        await check(create_task, kind, restream, spec_version, body_file)
    finally:
        loop.set_task_factory(previous)


# --------------------------------------------------------------------------- random stacks


@dataclass(frozen=True)
class TaskPlan:
    """Layers, each awaiting call_next its own way and perhaps re-streaming
    the body, over an app that sends ``chunks``, on a server of ``spec_version``."""

    patterns: list[str]  # per layer, outermost first
    restreams: list[bool]
    chunks: list[bytes]
    background: bool
    spec_version: str


def task_plans(patterns: list[str]) -> st.SearchStrategy[TaskPlan]:
    layers = st.integers(min_value=1, max_value=3)
    return layers.flatmap(
        lambda n: st.builds(
            TaskPlan,
            patterns=st.lists(st.sampled_from(patterns), min_size=n, max_size=n),
            restreams=st.lists(st.booleans(), min_size=n, max_size=n),
            chunks=st.lists(st.binary(min_size=1, max_size=16), max_size=4),
            background=st.booleans(),
            spec_version=st.sampled_from(["2.3", "2.4"]),
        )
    )


def build_task_plan(plan: TaskPlan) -> Callable[[Base, Recorder], ASGIApp]:
    def make(base: Base, recorder: Recorder) -> ASGIApp:
        async def streamed() -> AsyncIterator[bytes]:
            for chunk in plan.chunks:
                await anyio.sleep(0)
                yield chunk

        async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            task = BackgroundTask(recorder.event, "app:background") if plan.background else None
            await StreamingResponse(streamed(), background=task)(scope, receive, send)
            recorder.event("app:returned")

        app: ASGIApp = endpoint
        for i, (name, restream) in reversed(list(enumerate(zip(plan.patterns, plan.restreams, strict=True)))):

            async def dispatch(request: Request, call_next: CallNext, i: int = i, name: str = name,
                               restream: bool = restream) -> Response:  # fmt: skip
                response = await PATTERNS[name](call_next, request)
                recorder.event(f"l{i}:after", response.status_code)
                if restream:
                    body = response.body_iterator  # type: ignore[attr-defined]
                    return StreamingResponse(body, status_code=response.status_code, headers=dict(response.headers))
                return response

            app = base(app, dispatch=dispatch)
        return app

    return make


async def run_task_plan(plan: TaskPlan) -> None:
    await differential(build_task_plan(plan), scope=lambda: http_scope(spec_version=plan.spec_version))


@pytest.mark.filterwarnings(STOCK_BODY_STREAM_LEAK)
@pytest.mark.parametrize(
    ("backend", "patterns"),
    [("asyncio", [p.__name__ for p in ANYIO_PATTERNS + ASYNCIO_PATTERNS]), ("trio", [p.__name__ for p in ANYIO_PATTERNS])],
    ids=["asyncio", "trio"],
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_stacks_of_tasks(backend: str, patterns: list[str], data: st.DataObject) -> None:
    plan = data.draw(task_plans(patterns))
    anyio.run(functools.partial(run_task_plan, plan), backend=backend)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_call_next_awaited_after_dispatch_returned_fails_clearly() -> None:
    """A task of ``call_next`` that dispatch leaves behind, awaited once the
    layer is done: a ``RuntimeError`` saying so (stock's: its task group is
    no longer active), and the app is never started."""
    from ferroware import BaseHTTPMiddleware

    left_behind: list[asyncio.Task[Response]] = []
    started: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.append("app")
        await PlainTextResponse("late")(scope, receive, send)

    async def dispatch(request: Request, call_next: CallNext) -> Response:
        left_behind.append(asyncio.get_running_loop().create_task(call_next(request)))  # type: ignore[arg-type]
        return PlainTextResponse("early")

    recorder = Recorder([{"type": "http.request", "body": b"", "more_body": False}])
    await BaseHTTPMiddleware(app, dispatch=dispatch)(http_scope(), recorder.receive, recorder.send)
    assert [m.get("body") for m in recorder.sends] == [None, b"early"]
    with pytest.raises(RuntimeError, match=r"call_next\(\) was awaited after the middleware's response went out"):
        await left_behind[0]
    assert started == []
