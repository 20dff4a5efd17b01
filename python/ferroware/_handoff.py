"""Sends made by the downstream app from a task of its own.

The compiled dispatcher pauses the downstream app inside ``send`` when that
``send`` runs in the task the dispatcher is stepping. Starlette's own
``StreamingResponse`` and ``FileResponse`` (on servers older than ASGI spec 2.4)
send from a child task instead, while the app's main task waits in ``receive``
for a disconnect. Such a send is parked here, the waiting ``receive`` is woken,
and it relays the message through the channel from inside the stepped task, so
the dispatcher sees it exactly like a direct send. The child task resumes once
the dispatcher has taken the message: backpressure is kept, nothing is buffered.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio

from starlette.types import Message, Receive

if TYPE_CHECKING:
    from ferroware._core import Channel


class _Parked:
    """One message from another task, and the event its sender waits on."""

    __slots__ = ("message", "taken", "error")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.taken = anyio.Event()
        self.error: BaseException | None = None


class Handoff:
    """Per-request meeting point between foreign senders and the waiting receive."""

    __slots__ = ("_parked", "_wake", "closed")

    def __init__(self) -> None:
        self._parked: deque[_Parked] = deque()
        self._wake: anyio.Event | None = None
        self.closed = False

    async def send(self, message: Message) -> None:
        """Called in the foreign task: park the message until the dispatcher took it."""
        parked = _Parked(message)
        self._parked.append(parked)
        self._notify()
        await parked.taken.wait()
        if parked.error is not None:
            raise parked.error

    def close(self) -> None:
        """The response went out (or was dropped): release every parked sender."""
        self.closed = True
        while self._parked:
            self._parked.popleft().taken.set()
        self._notify()

    def has_parked(self) -> bool:
        return bool(self._parked)

    async def relay(self, channel: Channel) -> None:
        """Called inside the stepped task: pass the oldest parked message on."""
        parked = self._parked.popleft()
        try:
            await channel(parked.message)
        except Exception as exc:  # a protocol error belongs to the sender
            parked.error = exc
        finally:
            parked.taken.set()

    async def receive_or_wake(self, receive: Receive) -> Message | None:
        """The next message from ``receive``, or None when a send was parked
        (or the handoff closed) first."""
        if self._parked or self.closed:
            return None
        wake = self._wake
        if wake is None:
            wake = self._wake = anyio.Event()
        message: Message | None = None

        async def pump() -> None:
            nonlocal message
            message = await receive()
            wake.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            await wake.wait()
            tg.cancel_scope.cancel()
        if self._wake is wake:
            self._wake = None
        return message

    @staticmethod
    def of(channel: Channel) -> Handoff:
        """The channel's handoff, made on first use; the channel closes it when
        the response went out."""
        handoff = channel.handoff
        if handoff is None:
            handoff = channel.handoff = Handoff()
        return handoff

    def _notify(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()
