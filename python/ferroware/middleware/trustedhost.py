"""``TrustedHostMiddleware``: Starlette's, with Host parsing and matching in
Rust (``rust/builtins/hosts.rs``)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import URL
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._core import HostPolicy

ENFORCE_DOMAIN_WILDCARD = "Domain wildcard patterns must be like '*.example.com'."


class TrustedHostMiddleware:
    """Rejects requests whose Host is not allowed, as ``starlette.middleware.trustedhost.TrustedHostMiddleware``."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] | None = None, www_redirect: bool = True) -> None:
        if allowed_hosts is None:
            allowed_hosts = ["*"]
        for pattern in allowed_hosts:
            wildcard_ok = "*" not in pattern[1:] and (not pattern.startswith("*") or pattern == "*" or pattern.startswith("*."))
            if not wildcard_ok:
                raise AssertionError(ENFORCE_DOMAIN_WILDCARD)
        self.app = app
        self.allowed_hosts = [pattern.lower() for pattern in allowed_hosts]
        self.allow_any = "*" in allowed_hosts
        self.www_redirect = www_redirect
        self._policy = HostPolicy(self.allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        verdict = self._policy.check(scope)
        if verdict == 0:
            await self.app(scope, receive, send)
            return
        response: Response
        if verdict == 2 and self.www_redirect:
            url = URL(scope=scope)
            response = RedirectResponse(url=str(url.replace(netloc="www." + url.netloc)))
        else:
            response = PlainTextResponse("Invalid host header", status_code=400)
        await response(scope, receive, send)
