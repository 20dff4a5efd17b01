"""The response ``call_next`` returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ferroware._core import response_headers
from ferroware.datastructures import MutableHeaders

if TYPE_CHECKING:
    from starlette.background import BackgroundTask


class CallNextResponse(Response):
    """The downstream app's response, streamed from its suspended ``send``.

    Status and headers come from its ``http.response.start`` (the header list is
    the app's own, so edits go straight into the message that is sent). Sending
    it relays the body chunk by chunk, exactly as Starlette's ``call_next``
    response does: each non-empty chunk with ``more_body`` set, then one empty
    final chunk.
    """

    # Set on each instance by the compiled layer, which doesn't run __init__:
    status_code: int
    raw_headers: list[tuple[bytes, bytes]]
    body_iterator: AsyncIterator[bytes | Message]  # the channel

    # Shared defaults until an instance assigns its own (fewer attributes to
    # set per response, on the hot path).
    info: Mapping[str, Any] | None = None
    media_type: str | None = None
    background: BackgroundTask | None = None

    # The compiled MutableHeaders over raw_headers, made on first use and
    # cached in ``_headers`` (where Starlette's Response caches its own).
    _headers: MutableHeaders | None = None  # type: ignore[assignment]
    headers = property(response_headers, doc="The response headers; edits go into the list that is sent.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.info is not None:
            await send({"type": "http.response.debug", "info": self.info})
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        final_body = True
        async for chunk in self.body_iterator:
            if isinstance(chunk, Mapping):  # pathsend: it is the end of the response
                final_body = False
                await send(chunk)
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if final_body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()
