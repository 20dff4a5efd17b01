"""Typed surface of ferroware's compiled core (``rust/``). Private: use the
public API in ``ferroware`` instead."""

from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, final

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__version__: str

@final
class Hooks:
    """The Python pieces the compiled layer calls, fixed once at import."""

    def __init__(
        self,
        *,
        request_cls: type,
        request_template: dict[str, Any] | None,
        response_cls: type,
        foreign_send: Callable[[Channel, Message], Awaitable[None]],
        others_ready: Callable[[], bool],
        checkpoint: Callable[[], Awaitable[None]],
    ) -> None: ...

@final
class Dispatcher:
    """One per middleware instance; ``await dispatcher(scope, receive, send)``
    runs one HTTP request through the layer."""

    def __init__(
        self, app: ASGIApp, dispatch_func: Callable[..., Awaitable[Any]], hooks: Hooks, inner: Dispatcher | None = None
    ) -> None: ...
    @property
    def app(self) -> ASGIApp: ...
    @property
    def dispatch_func(self) -> Callable[..., Awaitable[Any]]: ...
    @property
    def inner(self) -> Dispatcher | None: ...
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> RunLayer: ...

@final
class RunLayer:
    """One request through one layer (an awaitable, awaited once)."""

    def __await__(self) -> Generator[Any, None, None]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...

@final
class Channel:
    """One request's link to the downstream app: its ``send``, the body iterator
    of the ``call_next`` response, and where the response stands."""

    def call_next(self, request: Any = None) -> Drive: ...
    def __call__(self, message: Message) -> Awaitable[None]: ...
    def __aiter__(self) -> Channel: ...
    def __anext__(self) -> Drive: ...
    def aclose(self) -> Awaitable[None]: ...
    @property
    def response_sent(self) -> bool: ...
    @property
    def stepping(self) -> bool: ...
    handoff: Any

@final
class Drive:
    """The awaitable behind ``call_next`` and the body iterator's ``__anext__``."""

    def __await__(self) -> Generator[Any, None, Any]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...

@final
class Pause:
    def __await__(self) -> Generator[Any, None, None]: ...

@final
class Ready:
    def __await__(self) -> Generator[Any, None, Any]: ...

def build_stack(
    app: ASGIApp, middleware: Iterable[Middleware], accelerate: Callable[[ASGIApp], ASGIApp]
) -> ASGIApp: ...
