"""The request ``dispatch`` sees, and the ``receive`` the downstream app gets.

Whatever ``dispatch`` did with the body is replayed downstream, as Starlette
does: the whole body if ``body()`` was awaited, an empty final chunk if
``stream()`` was drained, otherwise the two share the one stream chunk by chunk.
Once the body is delivered, the downstream ``receive`` waits for the client's
disconnect (reported at once after the response went out).
"""

from __future__ import annotations

from types import MethodType
from typing import TYPE_CHECKING, Any

from anyio.lowlevel import checkpoint
from starlette.requests import Request
from starlette.types import Message, Scope

from ferroware._core import Headers, request_headers
from ferroware._handoff import Handoff, ServerReceive

if TYPE_CHECKING:
    from ferroware._core import Channel

_MISSING = object()


class DispatchRequest(Request):
    """A Starlette ``Request`` that knows the channel of its ``call_next``.

    Its own state has class-level defaults so that building one costs no more
    than building a plain ``Request``; the compiled layer sets ``channel``.
    """

    channel: Channel
    _delivered = False  # the downstream app got its whole body
    _told_disconnect = False  # the downstream app was told of a disconnect

    # Request.__init__'s constants, as shared defaults: the compiled layer then
    # sets only the three per-request attributes (see ``request_template``).
    _stream_consumed = False
    _is_disconnected = False
    _form = None

    # The compiled, read-only Headers of the scope, made on first use and
    # cached in ``_headers`` (where Starlette's HTTPConnection caches its own).
    _headers: Headers | None = None  # type: ignore[assignment]
    headers = property(request_headers, doc="The request headers (compiled, read-only).")

    async def body(self) -> bytes:
        # Below another ferroware layer whose dispatch read the whole body, the
        # body is that layer's, replayed as one message: take it directly, with
        # the same end state as reading that message (no await in between
        # either way), instead of through stream() and a message dict.
        if not hasattr(self, "_body") and not self._stream_consumed:
            receive = self._receive
            if isinstance(receive, MethodType) and receive.__func__ is _DOWNSTREAM_RECEIVE:
                # Bound from downstream_receive: its self is a DispatchRequest.
                # (Not typing.cast: a function call per layer on this path.)
                body: bytes | None = receive.__self__._replay_whole()  # type: ignore[attr-defined]
                if body is not None:
                    self._stream_consumed = True
                    self._body = body
                    return body  # what Starlette's body() returns once _body is set
        return await super().body()

    def _replay_whole(self) -> bytes | None:
        """The body to replay downstream as one message, if that is what
        ``downstream_receive`` would give now (it is then delivered)."""
        if self._delivered or self._told_disconnect or self.channel.response_sent or not hasattr(self, "_body"):
            return None
        self._delivered = True
        body: bytes = self._body
        return body

    async def downstream_receive(self) -> Message:
        if self._told_disconnect or self.channel.response_sent:
            return {"type": "http.disconnect"}
        if not self._delivered:
            body = self._replay_whole()
            if body is not None:  # dispatch awaited body(): replay it whole
                return {"type": "http.request", "body": body, "more_body": False}
            if self._stream_consumed:  # dispatch drained stream(): nothing is left
                self._delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
        if not isinstance(self._receive, ServerReceive):
            # From now on the app may be waiting in the server's receive while
            # its own child task sends: make that wait interruptible (see
            # ferroware._handoff). Made here, when the server's receive is
            # first needed, so a request whose body is replayed or never read
            # pays nothing for it.
            self._receive = ServerReceive(self.channel, self._receive)
        if self._delivered:
            if self._is_disconnected:  # dispatch already saw the client go
                return self._disconnect()
            return self._seen(await self._receive())
        # Share the stream, so dispatch sees what the app consumed: one step of
        # Starlette's Request.stream() (the next non-empty chunk, or b"" at its
        # end), written out. Awaited through that generator, a close of the
        # app's coroutine while it waits here (the layer unwinding the app after
        # a failed send) would leave the generator marked running for good:
        # CPython 3.11 closes the awaited `asend`, not the generator, so its
        # `aclose()` fails then and again when it is collected.
        chunk = b""
        while not self._stream_consumed:
            message = await self._receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if not message.get("more_body", False):
                    self._stream_consumed = True
                if chunk:
                    break
            elif message["type"] == "http.disconnect":
                return self._disconnect()
        self._delivered = self._stream_consumed
        return {"type": "http.request", "body": chunk, "more_body": not self._stream_consumed}

    def _disconnect(self) -> Message:
        """What the app is told once the client is gone; the request and the
        channel learn it too."""
        self._is_disconnected = True
        self._told_disconnect = True
        self.channel.client_gone()
        return {"type": "http.disconnect"}

    def _seen(self, message: Message) -> Message:
        if message["type"] == "http.disconnect":
            return self._disconnect()
        if message["type"] != "http.request":  # pragma: no cover - a server bug
            raise RuntimeError(f"Unexpected message received: {message['type']}")
        return message


_DOWNSTREAM_RECEIVE = DispatchRequest.downstream_receive


def request_template() -> dict[str, Any] | None:
    """The ``__dict__`` a new ``DispatchRequest`` has, minus its three arguments,
    so the compiled layer can build requests without running ``__init__``.

    Checked against a real construction at import: if Starlette's ``Request``
    ever stores more than its arguments and plain constants, this returns None
    and the layer calls the class as usual.
    """
    scope: Scope = {"type": "http"}
    receive, send = object(), object()
    fields = dict(DispatchRequest(scope, receive, send).__dict__)  # type: ignore[arg-type]
    given = {"scope": scope, "_receive": receive, "_send": send}
    if any(fields.pop(name, None) is not value for name, value in given.items()):
        return None
    if not all(value is None or isinstance(value, (bool, int, str)) for value in fields.values()):
        return None
    # What the class already provides as a default needn't be set per instance.
    return {name: value for name, value in fields.items() if getattr(DispatchRequest, name, _MISSING) != value}


async def foreign_send(channel: Channel, message: Message) -> None:
    """The compiled dispatcher's hook for a send it can't take directly: one
    from another task (that the compiled side can't forward, see
    ``rust/forward.rs``), or one after the middleware's response went out."""
    if channel.response_sent:
        # Discarded, as Starlette discards it; the checkpoint keeps an app that
        # sends in a loop cancellable (it may be waiting for the disconnect).
        await checkpoint()
        return
    await Handoff.of(channel).send(channel, message)
