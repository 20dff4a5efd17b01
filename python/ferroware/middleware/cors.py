"""``CORSMiddleware``: Starlette's, with origin/method/header matching, the
preflight response and the response-header edit done in Rust
(``rust/builtins/cors.rs``)."""

from __future__ import annotations

import re
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._core import CorsPolicy

ALL_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY")
SAFELISTED_HEADERS = {"Accept", "Accept-Language", "Content-Language", "Content-Type"}
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, Access-Control-Request-Private-Network"  # noqa: E501


def _latin1(text: str, what: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"CORSMiddleware: {what} {text!r} can't be sent in a header (not latin-1)") from None


class CORSMiddleware:
    """Cross-Origin Resource Sharing, as ``starlette.middleware.cors.CORSMiddleware``."""

    def __init__(
        self,
        app: ASGIApp,
        allow_origins: Collection[str] = (),
        allow_methods: Collection[str] = ("GET",),
        allow_headers: Collection[str] = (),
        allow_credentials: bool = False,
        allow_origin_regex: str | None = None,
        allow_private_network: bool = False,
        expose_headers: Collection[str] = (),
        max_age: int = 600,
    ) -> None:
        methods = ALL_METHODS if "*" in allow_methods else allow_methods
        all_origins = "*" in allow_origins
        all_headers = "*" in allow_headers
        explicit_origin = allow_credentials or not all_origins
        headers_allowed = sorted(SAFELISTED_HEADERS | set(allow_headers))

        simple: dict[str, str] = {}
        if all_origins:
            simple["Access-Control-Allow-Origin"] = "*"
        if allow_credentials:
            simple["Access-Control-Allow-Credentials"] = "true"
        if expose_headers:
            simple["Access-Control-Expose-Headers"] = ", ".join(expose_headers)

        preflight: dict[str, str] = {"Vary": _PREFLIGHT_VARY}
        if not explicit_origin:
            preflight["Access-Control-Allow-Origin"] = "*"
        preflight["Access-Control-Allow-Methods"] = ", ".join(methods)
        preflight["Access-Control-Max-Age"] = str(max_age)
        if headers_allowed and not all_headers:
            preflight["Access-Control-Allow-Headers"] = ", ".join(headers_allowed)
        if allow_credentials:
            preflight["Access-Control-Allow-Credentials"] = "true"

        regex = re.compile(allow_origin_regex) if allow_origin_regex is not None else None

        # The attributes Starlette's instance has, for code that reads them.
        self.app = app
        self.allow_origins = allow_origins
        self.allow_methods = methods
        self.allow_headers = [h.lower() for h in headers_allowed]
        self.allow_all_origins = all_origins
        self.allow_all_headers = all_headers
        self.allow_credentials = allow_credentials
        self.preflight_explicit_allow_origin = explicit_origin
        self.allow_origin_regex = regex
        self.allow_private_network = allow_private_network
        self.simple_headers = simple
        self.preflight_headers = preflight

        def encodable(items: Collection[str]) -> list[bytes]:
            out = []
            for item in items:
                try:
                    out.append(item.encode("latin-1"))
                except (UnicodeEncodeError, AttributeError):
                    pass  # can never equal a header's text
            return out

        self._policy = CorsPolicy(
            allow_all_origins=all_origins,
            allow_all_headers=all_headers,
            allow_credentials=bool(allow_credentials),
            explicit_origin=bool(explicit_origin),
            allow_private_network=bool(allow_private_network),
            origins=encodable(allow_origins),
            regex_fullmatch=regex.fullmatch if regex is not None else None,
            methods=encodable(methods),
            allow_headers=self.allow_headers,
            simple=[(k.lower().encode("latin-1"), _latin1(v, k)) for k, v in simple.items()],
            preflight=[(k.lower().encode("latin-1"), _latin1(v, k)) for k, v in preflight.items()],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = self._policy.request(scope, send)
        if isinstance(answer, tuple):  # a preflight request: answered here
            await send(answer[0])
            await send(answer[1])
            return
        await self.app(scope, receive, answer)

    def is_allowed_origin(self, origin: str) -> bool:
        return self._policy.is_allowed_origin_str(origin)
