"""What the dispatcher needs from the event loop: whether a yield would let
anything else run (and whether the app's background work calls for one), and
(asyncio) a wakeable stand-in for a future."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import CodeType
from typing import Any

import sniffio
from starlette.responses import FileResponse, Response, StreamingResponse

from ferroware._core import YieldOnce


def others_ready(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True when another task is ready to run now (True when it can't be told).

    ``loop`` is the running asyncio loop when the dispatcher already knows it
    (asking again costs a ``getpid`` syscall on CPython 3.11), else None.
    Only asyncio's stdlib loop can be asked; trio's statistics leave out the
    tasks of the batch it is running, so there we always yield.
    """
    if loop is None:
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return True
        if library != "asyncio":
            return True
        loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    # Only the stdlib loop exposes its ready queue; elsewhere, always yield.
    return True if ready is None else len(ready) > 0


def make_proxy(future: asyncio.Future[Any]) -> asyncio.Future[None]:
    """A future of the same loop that is done when ``future`` is done, or
    earlier when the dispatcher's channel is woken by a send from another task.

    The dispatcher's task waits on it instead of on the app's own future, which
    stays untouched (the app still waits on it).
    """
    proxy: asyncio.Future[None] = future.get_loop().create_future()
    proxy._asyncio_future_blocking = True  # as a future yielded by ``await`` is

    def settle(_: asyncio.Future[Any]) -> None:
        if not proxy.done():
            proxy.set_result(None)

    future.add_done_callback(settle)
    return proxy


def response_calls() -> tuple[CodeType, ...]:
    """The code of every ``__call__`` of Starlette's responses.

    After a response went out, the outermost layer yields to the loop before
    the app goes on only if the app has background work (``RunLayer::sent``).
    A suspended frame running one of these has the response as ``self``, whose
    ``background`` says so. FastAPI's responses inherit these methods.
    """
    classes = (Response, StreamingResponse, FileResponse)
    return tuple(dict.fromkeys(cls.__call__.__code__ for cls in classes))


def checkpoint() -> Awaitable[None]:
    """A yield to the event loop that cancellation can't interrupt: on asyncio a
    bare suspension (``YieldOnce``: the loop runs the others, then us), on trio
    its own cancel-shielded checkpoint."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library == "trio":
        import trio

        return trio.lowlevel.cancel_shielded_checkpoint()
    return YieldOnce()
