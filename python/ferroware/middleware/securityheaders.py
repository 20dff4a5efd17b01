"""``SecurityHeadersMiddleware``: security-related response headers (HSTS,
CSP, X-Content-Type-Options, Referrer-Policy, frame options, cross-origin
policies, Permissions-Policy) from a preset, each overridable or disabled.
The fields are validated and encoded once, here; the per-response edit runs in
Rust (``rust/builtins/security.rs``) in one pass over the response's headers.

Choices, and why:

* ``Strict-Transport-Security`` goes only on https responses (``scope["scheme"]``):
  RFC 6797 §7.2 forbids it over plain http, where browsers ignore it anyway.
  Behind a TLS-terminating proxy, make the scheme right (uvicorn's
  ``--proxy-headers`` / ``--forwarded-allow-ips``), or pass ``hsts_on_http=True``.
* The default preset has no Content-Security-Policy: a useful policy depends on
  where the app loads scripts, styles and images from, and a wrong one breaks
  pages (FastAPI's ``/docs`` loads Swagger UI from a CDN). The strict preset
  has a same-origin one; override it for such pages.
* Neither preset asks for HSTS ``preload``: once a domain is on the browsers'
  preload lists, leaving them takes months, so that is a decision to make on
  purpose (``hsts="max-age=63072000; includeSubDomains; preload"``). The default
  preset leaves out ``includeSubDomains`` too, as the app can't know whether
  every subdomain serves https.
* ``X-XSS-Protection`` is not sent: browsers dropped the filter, and OWASP
  advises against enabling it. ``Cross-Origin-Embedder-Policy`` is off in both
  presets (it breaks any cross-origin resource not sent with CORP/CORS);
  enable it with ``cross_origin_embedder_policy="require-corp"``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from ferroware._core import SecurityHeadersPolicy

__all__ = ["PRESETS", "SecurityHeadersMiddleware"]


class _Preset(enum.Enum):
    VALUE = "the preset's value"


#: A header argument left at this takes the preset's value.
PRESET: Final = _Preset.VALUE

HeaderValue = str | None | Literal[_Preset.VALUE]

# Argument name -> header name, in the order the fields are added to responses.
_HEADERS: Final[dict[str, str]] = {
    "hsts": "Strict-Transport-Security",
    "content_security_policy": "Content-Security-Policy",
    "x_content_type_options": "X-Content-Type-Options",
    "x_frame_options": "X-Frame-Options",
    "referrer_policy": "Referrer-Policy",
    "cross_origin_opener_policy": "Cross-Origin-Opener-Policy",
    "cross_origin_resource_policy": "Cross-Origin-Resource-Policy",
    "cross_origin_embedder_policy": "Cross-Origin-Embedder-Policy",
    "permissions_policy": "Permissions-Policy",
    "x_permitted_cross_domain_policies": "X-Permitted-Cross-Domain-Policies",
}

#: The presets' header values, by argument name; None: not sent.
PRESETS: Final[dict[str, dict[str, str | None]]] = {
    # Safe for any app: no header here can break a page or an API client.
    "default": {
        "hsts": "max-age=31536000",
        "content_security_policy": None,
        "x_content_type_options": "nosniff",
        "x_frame_options": "SAMEORIGIN",
        "referrer_policy": "strict-origin-when-cross-origin",
        "cross_origin_opener_policy": None,
        "cross_origin_resource_policy": None,
        "cross_origin_embedder_policy": None,
        "permissions_policy": None,
        "x_permitted_cross_domain_policies": None,
    },
    # Same-origin everything, no framing, no referrer, powerful features off:
    # for apps that serve only their own assets (see the module doc).
    "strict": {
        "hsts": "max-age=63072000; includeSubDomains",
        "content_security_policy": (
            "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
        ),
        "x_content_type_options": "nosniff",
        "x_frame_options": "DENY",
        "referrer_policy": "no-referrer",
        "cross_origin_opener_policy": "same-origin",
        "cross_origin_resource_policy": "same-origin",
        "cross_origin_embedder_policy": None,
        "permissions_policy": (
            "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()"
        ),
        "x_permitted_cross_domain_policies": "none",
    },
}


class SecurityHeadersMiddleware:
    """Adds security headers to every HTTP response. Each header argument
    overrides the preset's value; ``None`` turns the header off.
    ``extra_headers`` adds any other fields. A header the app already set
    (any case) is left alone, unless ``overwrite=True``: then it is replaced,
    with no duplicate left."""

    def __init__(
        self,
        app: ASGIApp,
        preset: Literal["default", "strict"] = "default",
        *,
        hsts: HeaderValue = PRESET,
        content_security_policy: HeaderValue = PRESET,
        x_content_type_options: HeaderValue = PRESET,
        x_frame_options: HeaderValue = PRESET,
        referrer_policy: HeaderValue = PRESET,
        cross_origin_opener_policy: HeaderValue = PRESET,
        cross_origin_resource_policy: HeaderValue = PRESET,
        cross_origin_embedder_policy: HeaderValue = PRESET,
        permissions_policy: HeaderValue = PRESET,
        x_permitted_cross_domain_policies: HeaderValue = PRESET,
        extra_headers: Mapping[str, str] | None = None,
        hsts_on_http: bool = False,
        overwrite: bool = False,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"SecurityHeadersMiddleware: unknown preset {preset!r} (expected one of {sorted(PRESETS)})")
        given = {
            "hsts": hsts,
            "content_security_policy": content_security_policy,
            "x_content_type_options": x_content_type_options,
            "x_frame_options": x_frame_options,
            "referrer_policy": referrer_policy,
            "cross_origin_opener_policy": cross_origin_opener_policy,
            "cross_origin_resource_policy": cross_origin_resource_policy,
            "cross_origin_embedder_policy": cross_origin_embedder_policy,
            "permissions_policy": permissions_policy,
            "x_permitted_cross_domain_policies": x_permitted_cross_domain_policies,
        }
        headers: dict[str, str] = {}
        for argument, header in _HEADERS.items():
            value = given[argument]
            if value is PRESET:
                value = PRESETS[preset][argument]
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"SecurityHeadersMiddleware: {argument} must be a str or None, got {type(value).__name__}")
            headers[header] = value
        for name, value in (extra_headers or {}).items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"SecurityHeadersMiddleware: extra_headers must map str to str, got {name!r}: {value!r}")
            if name.lower() in {known.lower() for known in headers}:
                raise ValueError(f"SecurityHeadersMiddleware: header {name!r} is given twice (extra_headers and an argument)")
            headers[name] = value
        self.app = app
        self.preset = preset
        #: The fields added to responses (Strict-Transport-Security on https only, unless hsts_on_http).
        self.headers = headers
        self.hsts_on_http = hsts_on_http
        self.overwrite = overwrite
        hsts_name = _HEADERS["hsts"].lower()
        try:
            self._policy = SecurityHeadersPolicy(
                [(name, value, name.lower() == hsts_name and not hsts_on_http) for name, value in headers.items()],
                overwrite=bool(overwrite),
            )
        except ValueError as exc:
            raise ValueError(f"SecurityHeadersMiddleware: {exc}") from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._policy.wrap(scope, send))
