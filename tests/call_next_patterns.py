"""The ways ``dispatch`` awaits ``call_next`` that the fidelity tests cover:
in its own task, from another task (timeout and fan-out middleware do), or in
a cancel scope. Shared by the in-process differential tests
(``test_call_next_tasks.py``) and the integration app (``rel_app.py``, whose
servers get this directory on their path)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
from starlette.requests import Request
from starlette.responses import Response

CallNext = Callable[[Request], Awaitable[Response]]
Pattern = Callable[[CallNext, Request], Awaitable[Response]]

# Longer than any test waits for a response: a pattern's own timeout never fires.
TIMEOUT = 10


async def direct(call_next: CallNext, request: Request) -> Response:
    return await call_next(request)


async def wait_for(call_next: CallNext, request: Request) -> Response:
    return await asyncio.wait_for(call_next(request), TIMEOUT)


async def create_task(call_next: CallNext, request: Request) -> Response:
    return await asyncio.get_running_loop().create_task(call_next(request))


async def shield(call_next: CallNext, request: Request) -> Response:
    return await asyncio.shield(call_next(request))


async def gather(call_next: CallNext, request: Request) -> Response:
    response, _ = await asyncio.gather(call_next(request), asyncio.sleep(0))
    return response


async def asyncio_task_group(call_next: CallNext, request: Request) -> Response:
    async with asyncio.TaskGroup() as group:
        task = group.create_task(call_next(request))
    return task.result()


async def start_soon(call_next: CallNext, request: Request) -> Response:
    responses: list[Response] = []

    async def child() -> None:
        responses.append(await call_next(request))

    async with anyio.create_task_group() as group:
        group.start_soon(child)
    return responses[0]


async def fail_after(call_next: CallNext, request: Request) -> Response:
    with anyio.fail_after(TIMEOUT):
        return await call_next(request)


async def move_on_after(call_next: CallNext, request: Request) -> Response:
    with anyio.move_on_after(TIMEOUT):
        return await call_next(request)
    raise AssertionError(f"call_next took {TIMEOUT} s")  # pragma: no cover


ANYIO_PATTERNS: list[Pattern] = [direct, start_soon, fail_after, move_on_after]
ASYNCIO_PATTERNS: list[Pattern] = [wait_for, create_task, shield, gather, asyncio_task_group]
PATTERNS: dict[str, Pattern] = {pattern.__name__: pattern for pattern in ANYIO_PATTERNS + ASYNCIO_PATTERNS}
ASYNCIO_ONLY = tuple(pattern.__name__ for pattern in ASYNCIO_PATTERNS)
