"""Starlette's built-in middleware with their request and header logic compiled.

Each class takes the same constructor arguments, with the same defaults, and
behaves as Starlette 1.10.0's class of the same name; changing the import is
the whole migration::

    from ferroware.middleware import CORSMiddleware  # was: from starlette.middleware.cors import ...

Three have no Starlette counterpart: ``CompressionMiddleware`` (zstd, brotli
and gzip, negotiated by q-value), ``RequestIDMiddleware`` (the options of
asgi-correlation-id, the id in the ``request_id`` contextvar) and
``SecurityHeadersMiddleware`` (HSTS, CSP and friends from a preset).
"""

from __future__ import annotations

from ferroware.middleware.compression import CompressionMiddleware
from ferroware.middleware.cors import CORSMiddleware
from ferroware.middleware.gzip import GZipMiddleware, GZipResponder
from ferroware.middleware.httpsredirect import HTTPSRedirectMiddleware
from ferroware.middleware.requestid import RequestIDMiddleware, get_request_id, request_id
from ferroware.middleware.securityheaders import SecurityHeadersMiddleware
from ferroware.middleware.trustedhost import TrustedHostMiddleware

__all__ = [
    "CompressionMiddleware",
    "CORSMiddleware",
    "GZipMiddleware",
    "GZipResponder",
    "HTTPSRedirectMiddleware",
    "RequestIDMiddleware",
    "SecurityHeadersMiddleware",
    "TrustedHostMiddleware",
    "get_request_id",
    "request_id",
]
