"""``RequestIDMiddleware``: a request id per HTTP request and websocket
connection, with the options and behaviour of asgi-correlation-id's
``CorrelationIdMiddleware``. Reading the incoming id, the default uuid4 check
and generator, and the request and response header edits run in Rust
(``rust/builtins/request_id.rs``); a user's generator, validator and
transformer are called as they are.

The id is readable anywhere in the request through :data:`request_id` (or
:func:`get_request_id`): in endpoints, dependencies, background tasks, exception
handlers, and the 500 handler. Like asgi-correlation-id, the variable is not
reset when the request ends: the 500 handler runs in
``ServerErrorMiddleware``, outside every user middleware, after the app has
returned, and a reset would hide the id from it. Servers run each request in a
task with its own copy of the context, so the value does not reach the next
request.

Deliberate differences from asgi-correlation-id 5:

* the response gets exactly one id field: an id field the app set itself is
  replaced, not followed by a second one;
* the response carries the id the middleware decided, not whatever the
  contextvar holds when the response starts;
* an incoming id containing CR, LF or NUL is never echoed: it counts as
  failing validation (even with ``validator=None``);
* a generator or transformer returning a non-``str``, a value outside latin-1,
  or one containing CR, LF or NUL raises ``TypeError``/``ValueError`` naming it;
* no Sentry extension; the warning is logged to ``ferroware.middleware.requestid``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._core import RequestIdPolicy, generate_request_id, is_valid_uuid4

__all__ = ["RequestIDMiddleware", "generate_request_id", "get_request_id", "is_valid_uuid4", "request_id"]

logger = logging.getLogger(__name__)

#: The current request's id (None outside a request).
request_id: ContextVar[str | None] = ContextVar("ferroware_request_id", default=None)

FAILED_VALIDATION_MESSAGE = "Generated new request ID (%s), since request header value failed validation"


def get_request_id() -> str | None:
    """The current request's id, or None outside a request."""
    return request_id.get()


class RequestIDMiddleware:
    """Gives every HTTP request and websocket connection an id: the incoming
    ``header_name`` field if present and valid, else a new one; stored in
    :data:`request_id`, written back into the request's headers and added to
    the response."""

    def __init__(
        self,
        app: ASGIApp,
        header_name: str = "X-Request-ID",
        update_request_header: bool = True,
        generator: Callable[[], str] = generate_request_id,
        validator: Callable[[str], bool] | None = is_valid_uuid4,
        transformer: Callable[[str], str] | None = None,
    ) -> None:
        for option, value in (("generator", generator), ("validator", validator), ("transformer", transformer)):
            if value is not None and not callable(value):
                raise TypeError(f"RequestIDMiddleware: {option} must be callable, got {type(value).__name__}")
        if generator is None:
            raise TypeError("RequestIDMiddleware: generator must be callable, got NoneType")
        if not isinstance(header_name, str):
            raise TypeError(f"RequestIDMiddleware: header_name must be a str, got {type(header_name).__name__}")
        self.app = app
        self.header_name = header_name
        self.update_request_header = update_request_header
        self.generator = generator
        self.validator = validator
        self.transformer = transformer
        # The defaults are the compiled functions themselves: recognised here and
        # run natively instead of being called back.
        self._policy = RequestIdPolicy(
            header_name=header_name,
            update_request_header=bool(update_request_header),
            generator=None if generator is generate_request_id else generator,
            validator=validator,
            native_validator=validator is is_valid_uuid4,
            transformer=transformer,
            var=request_id,
            warn=logger.warning,
            warning_message=FAILED_VALIDATION_MESSAGE,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._policy.start(scope, send, kind == "http"))
