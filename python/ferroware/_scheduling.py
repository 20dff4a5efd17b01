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


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None under another library (trio)."""
    try:
        if sniffio.current_async_library() != "asyncio":
            return None
    except sniffio.AsyncLibraryNotFoundError:
        return None
    return asyncio.get_running_loop()


def others_ready(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True when another task is ready to run now (True when it can't be told).

    ``loop`` is the running asyncio loop when the dispatcher already knows it
    (asking again costs a ``getpid`` syscall on CPython 3.11), else None.
    Only asyncio's stdlib loop can be asked; trio's statistics leave out the
    tasks of the batch it is running, so there we always yield.
    """
    if loop is None:
        loop = running_asyncio_loop()
        if loop is None:
            return True
    ready = getattr(loop, "_ready", None)
    # Only the stdlib loop exposes its ready queue; elsewhere, always yield.
    return True if ready is None else len(ready) > 0


class ProxyLink:
    """Stand-ins for one asyncio future the app waits on.

    The dispatcher's task doesn't wait on the app's future itself but on a
    proxy: a future of the same loop, done when the app's future is done, or
    earlier when the dispatcher's channel is woken by a send from another task.
    Woken early, it waits again on a new proxy while the app keeps waiting on
    its own future, untouched. One done-callback on that future settles
    whichever proxy is current: a callback per proxy would pile up on it for
    as long as the app waits (one per chunk of a long stream).

    In a run of layers each layer's proxy stands in for the one of the layer
    below it, which is that layer's "app future". Those are settled at once,
    not by a done-callback (``Proxy``): each callback costs a pass of the event
    loop, and a wake-up would take one per layer to reach the task.
    """

    __slots__ = ("_loop", "_current")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self._loop = future.get_loop()
        self._current: Proxy | None = None
        if type(future) is Proxy and not future.done():
            future.follow(self)
        else:
            future.add_done_callback(self._settle)

    def proxy(self) -> Proxy:
        """A new proxy, replacing the current one (which a wake-up used)."""
        proxy = Proxy(loop=self._loop)
        proxy._asyncio_future_blocking = True  # as a future yielded by ``await`` is
        self._current = proxy
        return proxy

    def _settle(self, _: asyncio.Future[Any]) -> None:
        proxy, self._current = self._current, None
        if proxy is not None and not proxy.done():
            proxy.set_result(None)


class Proxy(asyncio.Future[None]):
    """A proxy future: the links made over it (by the layer above, waiting on it
    as its app's future) are settled when it is, in the same call."""

    __slots__ = ("_followers",)
    _followers: list[ProxyLink]

    def follow(self, link: ProxyLink) -> None:
        """Settle ``link`` when this is done (it isn't yet)."""
        try:
            self._followers.append(link)
        except AttributeError:  # the first one: the slot is still empty
            self._followers = [link]

    def set_result(self, result: None) -> None:
        super().set_result(result)
        self._settle_followers()

    def cancel(self, msg: Any | None = None) -> bool:
        cancelled = super().cancel(msg)
        if cancelled:
            self._settle_followers()
        return cancelled

    def _settle_followers(self) -> None:
        for link in getattr(self, "_followers", []):
            link._settle(self)


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
