"""Sends made by the downstream app from a task of its own.

The compiled dispatcher pauses the downstream app inside ``send`` when that
``send`` runs in the task the dispatcher is stepping. Starlette's own
``StreamingResponse`` and ``FileResponse`` (on servers older than ASGI spec 2.4)
send from a child task instead, while the app's main task waits in ``receive``.

Such a send is parked here, and the task running the dispatcher is woken:

- on asyncio, that task waits on a proxy of whatever future the app waits on
  (see ``ProxyLink`` and ``rust/drive.rs``); the parked send completes the
  proxy, and the dispatcher takes the message itself while the app keeps
  waiting. This works wherever the app's main task waits (its own task group,
  a lock, the server's ``receive``);
- on trio (no proxies), every server ``receive`` made for the downstream app
  runs inside a cancel scope registered here (see ``ServerReceive``), which a
  parked send cancels; the main task then relays the message through the
  channel from inside the stepped task, exactly like a direct send.

Either way the sending task stays parked until the dispatcher resumes the app
(as a direct sender stays in ``send``): backpressure is kept, nothing is
buffered, and no helper task is ever started.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import anyio
from anyio.lowlevel import checkpoint

from starlette.types import Message, Receive

from ferroware._core import PullTurn
from ferroware._scheduling import running_asyncio_loop

if TYPE_CHECKING:
    from ferroware._core import Channel

_DISCONNECT: Message = {"type": "http.disconnect"}


class _Flag:
    """What a parked sender waits on until its message is taken: set once,
    awaited by that one task. On asyncio a bare future of the loop, which costs
    a fraction of an ``anyio.Event`` (that looks up its backend each time);
    elsewhere an ``anyio.Event``."""

    __slots__ = ("_future", "_event")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._future = loop.create_future() if loop is not None else None
        self._event = anyio.Event() if loop is None else None

    def set(self) -> None:
        if self._future is not None:
            if not self._future.done():  # a cancelled waiter leaves it cancelled
                self._future.set_result(None)
        elif self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._future is not None:
            await self._future
        elif self._event is not None:
            await self._event.wait()


class _Parked:
    """One message from another task, and the flag its sender waits on."""

    __slots__ = ("message", "taken", "error")

    def __init__(self, message: Message, taken: _Flag) -> None:
        self.message = message
        self.taken = taken
        self.error: BaseException | None = None


class _Pull:
    """A pull of the body from another task, served by the middleware's task:
    the flag the puller waits on, and the outcome (a chunk, or the error to
    raise: ``StopAsyncIteration`` at the end)."""

    __slots__ = ("done", "chunk", "error")

    def __init__(self, done: _Flag) -> None:
        self.done = done
        self.chunk: object = None
        self.error: BaseException | None = None

    def outcome(self) -> object:
        if self.error is not None:
            raise self.error
        return self.chunk


class Handoff:
    """Per-request meeting point between foreign senders, pullers of the body,
    and waiting receives."""

    __slots__ = (
        "_parked", "_held", "_relaying_wait", "_other_waits", "_home_wait", "_pull", "_serving", "closed", "_loop"
    )  # fmt: skip

    def __init__(self) -> None:
        # Asked once per request: every send and receive of it runs on this loop.
        self._loop = running_asyncio_loop()
        self._parked: deque[_Parked] = deque()
        self._held: _Parked | None = None  # taken by the dispatcher, sender not yet released
        # The server receive the stepped task waits in (it can relay), and the
        # ones other tasks wait in (woken only when the response is done).
        self._relaying_wait: anyio.CancelScope | None = None
        self._other_waits: set[anyio.CancelScope] = set()
        # Where the layer's task waits while its response does: a pull of the
        # body from another task wakes it there, and the layer steps the app
        # for that pull (``rust/pull.rs``). On asyncio a proxy of the future the
        # response waits on (the layer registers it, ``wait_home``), wherever
        # the response waits; on trio the cancel scope of the response's own
        # ``receive`` (``ServerReceive``), the one wait we can interrupt.
        self._home_wait: anyio.CancelScope | asyncio.Future[None] | None = None
        self._pull: _Pull | None = None  # waiting for the layer's task
        self._serving: _Pull | None = None  # being served by it (None once its puller left)
        self.closed = False

    @staticmethod
    def of(channel: Channel) -> Handoff:
        """The channel's handoff, made on first use; the channel closes it when
        the response went out."""
        handoff: Handoff | None = channel.handoff
        if handoff is None:
            handoff = channel.handoff = Handoff()
        return handoff

    async def send(self, channel: Channel, message: Message) -> None:
        """Called in the foreign task: park the message until the dispatcher took it."""
        parked = _Parked(message, _Flag(self._loop))
        self._parked.append(parked)
        if not channel.wake() and self._relaying_wait is not None:
            self._relaying_wait.cancel()
        await parked.taken.wait()
        if parked.error is not None:
            raise parked.error

    def take(self) -> Message | None:
        """For the dispatcher (asyncio): the oldest parked message, its sender
        held until ``release``. A previously held sender is released first."""
        self.release(None)
        if not self._parked:
            return None
        self._held = self._parked.popleft()
        return self._held.message

    def release(self, error: BaseException | None) -> None:
        """Lets the held sender go on, raising ``error`` in it if given."""
        held, self._held = self._held, None
        if held is not None:
            held.error = error
            held.taken.set()

    def pull(self, channel: Channel, drive: Awaitable[object]) -> Awaitable[object]:
        """For the body iterator's ``__anext__`` once the layer steps a response
        of its own, given the ``drive`` that steps the app for the next chunk
        in the calling task: what to await instead.

        The layer's task calls this only from its response (``responding``):
        it steps the app itself. Another task's pull is served by the layer's
        task (``_pull_through_home``). On asyncio that task takes it wherever
        its response next waits, as it waits on a proxy of that wait. On trio
        only the home wait (the response's ``receive``) can be interrupted: a
        pull while the layer's task is elsewhere checkpoints first (that task
        may be on its way there, or its response may have cancelled the
        caller already: a ``StreamingResponse`` whose client left), and only
        then, still with no home wait, steps the app itself: the last resort.
        """
        if self.closed:
            return drive  # the response went out: the body is over
        if self._at_home():
            return self._pull_through_home(channel, drive)
        if channel.responding:
            return drive
        if self._loop is not None:
            return self._pull_through_home(channel, drive)
        return self._after_checkpoint(channel, drive)

    def _at_home(self) -> bool:
        """Whether a pull must go through the layer's task: it waits at home,
        or is serving a pull (or about to)."""
        return self._home_wait is not None or self._pull is not None or self._serving is not None

    async def _after_checkpoint(self, channel: Channel, drive: Awaitable[object]) -> object:
        await checkpoint()
        if self._at_home():
            return await self._pull_through_home(channel, drive)
        return await drive

    async def _pull_through_home(self, channel: Channel, drive: Awaitable[object]) -> object:
        if self._pull is not None or self._serving is not None:
            raise RuntimeError("the response body is already being read by another task")
        if self.closed:
            return await drive
        home = self._home_wait
        if home is None and self._loop is None:  # trio: the layer's task left that wait meanwhile
            return await self._after_checkpoint(channel, drive)
        pull = self._pull = _Pull(_Flag(self._loop))
        # Wake the layer's task; with no home wait (asyncio), it takes the
        # pull at its response's next wait.
        if isinstance(home, asyncio.Future):
            if not home.done():
                home.set_result(None)
        elif home is not None:
            home.cancel()
        try:
            await pull.done.wait()
        except BaseException:
            # The puller gave up (cancelled): the body ends here for good, as
            # Starlette's body generator ends when its pull is cancelled. The
            # layer's task, if serving it, is woken to stop (rust/pull.rs).
            if self._pull is pull:
                self._pull = None
            if self._serving is pull:
                self._serving = None
                channel.wake()
            await channel.aclose()
            raise
        return pull.outcome()

    def wait_home(self, proxy: asyncio.Future[None]) -> None:
        """For the layer (asyncio): its task waits on ``proxy`` while its
        response waits; a pull from another task completes it."""
        self._home_wait = proxy

    def left_home(self) -> None:
        """For the layer (asyncio): its task was resumed from that wait."""
        self._home_wait = None

    def take_pull(self) -> bool:
        """For the layer (its task was woken for a pull, or is about to wait):
        the waiting pull is now being served; False if none waits any more."""
        self._serving, self._pull = self._pull, None
        return self._serving is not None

    def pull_wanted(self) -> bool:
        """For the layer: whether the pull it serves still has its puller."""
        return self._serving is not None

    def deliver(self, chunk: object, error: BaseException | None) -> None:
        """For the layer: the served pull's outcome (dropped if its puller left)."""
        pull, self._serving = self._serving, None
        if pull is not None:
            pull.chunk, pull.error = chunk, error
            pull.done.set()

    def close(self) -> None:
        """The response went out (or failed): release parked senders and
        pullers, wake waiters."""
        self.closed = True
        self.release(None)
        while self._parked:
            self._parked.popleft().taken.set()
        for pull in (self._pull, self._serving):
            if pull is not None:
                pull.error = StopAsyncIteration()
                pull.done.set()
        self._pull = self._serving = None
        for scope in [self._relaying_wait, *self._other_waits]:
            if scope is not None:
                scope.cancel()

    async def relay_parked(self, channel: Channel) -> None:
        """In the stepped task: pass every parked message on, oldest first."""
        while self._parked and channel.stepping:
            parked = self._parked.popleft()
            try:
                await channel(parked.message)
            except Exception as exc:  # a protocol error belongs to its sender
                parked.error = exc
            finally:
                parked.taken.set()


class ServerReceive:
    """The server's ``receive`` as the downstream side uses it: interruptible by
    a parked send (to relay it) and by the end of the response (after which
    the app only ever sees a disconnect, as with Starlette)."""

    __slots__ = ("channel", "receive", "no_proxies")

    def __init__(self, channel: Channel, receive: Receive) -> None:
        self.channel = channel
        self.receive = receive
        # On asyncio the dispatcher's task is woken through a proxy future
        # wherever the app, or the layer's response, waits (see ``ProxyLink``):
        # the waits of the stepped task need no cancel scope there, which
        # keeps body reads cheap, and neither does the response's own wait.
        # On trio, with no proxies, those waits are interrupted by their scopes.
        self.no_proxies = running_asyncio_loop() is None

    async def __call__(self) -> Message:
        channel = self.channel
        handoff = Handoff.of(channel)
        while True:
            if channel.stepping:
                await handoff.relay_parked(channel)
            if channel.response_sent:
                return dict(_DISCONNECT)
            if channel.stepping and not self.no_proxies:
                return await self.receive()
            # The layer's own response waiting here, in the layer's task.
            home = self.no_proxies and not channel.stepping and channel.responding
            if home and handoff._pull is not None:
                await PullTurn()  # the layer steps the app for that pull
                continue
            with anyio.CancelScope() as scope:
                relaying = channel.stepping
                if relaying:
                    handoff._relaying_wait = scope
                else:
                    handoff._other_waits.add(scope)
                    if home:
                        handoff._home_wait = scope
                try:
                    return await self.receive()
                finally:
                    if relaying:
                        handoff._relaying_wait = None
                    else:
                        handoff._other_waits.discard(scope)
                        if home:
                            handoff._home_wait = None
            # Interrupted by a parked send, a pull, or the response's end: go round.
