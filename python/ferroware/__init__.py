"""ferroware: Starlette and FastAPI middleware on a compiled dispatcher.

``BaseHTTPMiddleware``, ``@app.middleware("http")`` and ``add_middleware`` keep
Starlette's semantics; the dispatcher behind ``call_next`` is written in Rust and
runs the downstream app in the caller's task.
"""

from ferroware._core import __version__
from ferroware.base import BaseHTTPMiddleware

__all__ = ["BaseHTTPMiddleware", "__version__"]
