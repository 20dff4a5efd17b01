"""The task path: the downstream app in a task of its own, as Starlette runs it.

The dispatcher steps the app in the middleware's own task (docs/design.md).
That is only right while ``call_next`` is awaited in that task. A ``dispatch``
that awaits it from another one (``asyncio.wait_for`` on CPython 3.11,
``create_task``, ``shield``, ``gather``, a task group's child) would have the
app started in that task and resumed in the middleware's: an app that keeps a
cancel scope or task group open across the two (Starlette's
``StreamingResponse`` on ASGI 2.3 servers) then fails with "Attempted to exit
cancel scope in a different task".

For such a request, and the few others where the fast path can't keep
Starlette's semantics (the compiled layer decides when ``call_next`` first
runs: docs/design.md, "Which path a request takes"), ``AppTask`` does what
Starlette's ``call_next`` does: it starts the app in a new task (in the copy
of the context ``call_next`` was called in) whose ``send`` hands each message
over through a zero-buffer stream. ``relay()`` is the coroutine the layer
steps in the app's place: task-agnostic, it takes each message from the
stream and sends it through the channel, so every layer above sees what it
would see of an app stepped in place. A cancelled ``call_next`` or body
iteration ends only that relay; the app runs on, as Starlette's app task
does. After the response, ``finish()`` lets the app's held sends go
(discarded, as Starlette's are), and waits for the app's end, its background
work included; ``abort()`` cancels the app and waits for it (Starlette's task
group does both). Nothing is left running: the layer awaits one or the other.
"""

from __future__ import annotations

import asyncio
from contextvars import Context
from typing import TYPE_CHECKING

import anyio
import sniffio
from starlette.types import ASGIApp, Message, Receive, Scope

if TYPE_CHECKING:
    from ferroware._core import Channel

__all__ = ["AppTask"]


def _ends_response(message: Message) -> bool:
    """The app's last message of the response: it then waits in ``send`` until
    the response went out, so its background work runs after it."""
    kind = message["type"]
    return kind == "http.response.pathsend" or (kind == "http.response.body" and not message.get("more_body", False))


class AppTask:
    """One request's downstream app, running in a task of its own."""

    __slots__ = ("_app", "_scope", "_receive", "_to_relay", "_from_app", "_sent", "_ended", "_cancel", "_error", "_task")

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, context: Context) -> None:
        self._app, self._scope, self._receive = app, scope, receive
        self._to_relay, self._from_app = anyio.create_memory_object_stream[Message](0)
        self._sent = anyio.Event()  # the middleware's response went out
        self._ended = anyio.Event()  # the app's task is over
        self._cancel = anyio.CancelScope()
        # What the app raised: the layer raises it once (the relay, or finish()).
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None  # asyncio keeps only a weak reference
        if sniffio.current_async_library() == "trio":
            import trio

            # A system task: not a child of a nursery the middleware would have
            # had to open before dispatch ran. Nothing escapes it (_run).
            trio.lowlevel.spawn_system_task(self._run, context=context, name=f"ferroware app task for {app!r}")
        else:
            self._task = asyncio.get_running_loop().create_task(self._run(), context=context)

    async def _run(self) -> None:
        try:
            with self._cancel, self._to_relay:
                try:
                    await self._app(self._scope, self._receive, self._send)
                except BaseException as exc:
                    if self._cancel.cancel_called and isinstance(exc, anyio.get_cancelled_exc_class()):
                        raise  # our own cancellation (abort): the scope takes it
                    self._error = exc
        finally:
            self._ended.set()

    async def _send(self, message: Message) -> None:
        """The ``send`` the app gets."""
        try:
            await self._to_relay.send(message)
        except anyio.BrokenResourceError:
            return  # the response went out: discarded, as Starlette's are
        if _ends_response(message):
            await self._sent.wait()

    async def relay(self, channel: Channel) -> None:
        """Stepped by the layer as the app: each message, sent through the
        channel; at the end, the app's error, raised."""
        async for message in self._from_app:
            await channel(message)
        self._raise_error()

    def _raise_error(self) -> None:
        """The app's error, raised once: by the relay, or else by ``finish()``."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _response_went_out(self) -> None:
        self._sent.set()
        # The app's waiting send and any later one return at once, discarded.
        self._from_app.close()

    async def finish(self) -> None:
        """After the response went out: the app's end (its background work
        runs now), and its error if not raised yet."""
        self._response_went_out()
        try:
            await self._ended.wait()
        except BaseException:
            await self.abort()  # cancelled meanwhile: as Starlette's task group
            raise
        self._raise_error()

    async def abort(self) -> None:
        """``dispatch`` or the response failed: cancel the app and wait for
        it to unwind. Its own error, if any, is dropped: the first one goes on."""
        self._response_went_out()
        self._cancel.cancel()
        with anyio.CancelScope(shield=True):
            await self._ended.wait()
        self._error = None
