"""``HTTPSRedirectMiddleware``: Starlette's, with the Host header parsed in
Rust (``rust/builtins/hosts.rs``)."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from starlette.responses import Response, PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._core import host_authority

_SECURE = {"http": "https", "ws": "wss"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _redirect_url(scope: Scope) -> str | None:
    """Where Starlette's middleware redirects, or None where it answers 400
    (or would fail: a port out of range, a query string that is not UTF-8)."""
    scheme = scope.get("scheme", "http")
    netloc = host_authority(scope["headers"])
    if netloc is None:
        server = scope.get("server")
        if server is None:
            return None
        host, port = server
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        netloc = host if port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if not netloc:
        return None
    path = scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    try:
        query = scope.get("query_string", b"").decode()
        parts = urlsplit(SplitResult(scheme=scheme, netloc=netloc, path=path, query=query, fragment="").geturl())
        if not parts.netloc:
            return None
        host = parts.hostname if parts.port in (80, 443) else parts.netloc
        return parts._replace(scheme=_SECURE[parts.scheme], netloc=host or "").geturl()
    except (ValueError, UnicodeDecodeError, KeyError):
        return None


class HTTPSRedirectMiddleware:
    """Redirects ``http``/``ws`` requests to ``https``/``wss``, as Starlette's class does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["scheme"] in ("http", "ws"):
            location = _redirect_url(scope)
            response: Response
            if location is None:
                response = PlainTextResponse("Invalid host header", status_code=400)
            else:
                response = RedirectResponse(location, status_code=307)
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)
