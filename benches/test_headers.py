"""``ferroware.MutableHeaders`` against Starlette's on a response with 10 headers.

For each operation (get, set an existing name, append, delete, contains), both
implementations run in the same session and the same group. ``append`` adds a
literal field (the same two ``str`` objects each time, as code that appends
a constant does: ferroware reuses the field it built for them);
``append-new-value`` adds a value that is a new ``str`` object on every call
(a computed cookie, say), which no cache can help. A round applies the
operation once to each of ``OPS`` header objects, each over its own fresh
10-field list made in the round's setup (so appends and deletes always see the
same 10 headers), and the figure is the round's time divided by ``OPS``. The
loop that walks the objects is the same on both sides and counted in both.

The ratios are printed at the end of the run (see ``conftest.py``); the target
is ferroware at least 3x faster on each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import starlette.datastructures

import ferroware

OPS = 2000
ROUNDS = 40

RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"1234"),
    (b"date", b"Tue, 15 Nov 1994 08:12:31 GMT"),
    (b"server", b"uvicorn"),
    (b"cache-control", b"max-age=60"),
    (b"etag", b'"33a64df551425fcc55e4d42a148795d9f25f89d4"'),
    (b"vary", b"Accept-Encoding"),
    (b"x-request-id", b"4f6c1a2e-2b1d-4c2a-9d8e-0c7b5a3f9e11"),
    (b"set-cookie", b"session=abc; HttpOnly; Path=/"),
    (b"strict-transport-security", b"max-age=63072000"),
]
assert len(RESPONSE_HEADERS) == 10

IMPLEMENTATIONS: dict[str, Any] = {
    "starlette": starlette.datastructures.MutableHeaders,
    "ferroware": ferroware.MutableHeaders,
}


def run_get(hs: list[Any], values: list[str]) -> None:
    for h in hs:
        h.get("X-Request-Id")


def run_set(hs: list[Any], values: list[str]) -> None:
    for h in hs:
        h["Cache-Control"] = "no-store"


def run_append(hs: list[Any], values: list[str]) -> None:
    for h in hs:
        h.append("Set-Cookie", "theme=dark; Path=/")


def run_append_new_value(hs: list[Any], values: list[str]) -> None:
    for h, value in zip(hs, values):
        h.append("Set-Cookie", value)


def run_delete(hs: list[Any], values: list[str]) -> None:
    for h in hs:
        del h["ETag"]


def run_contains(hs: list[Any], values: list[str]) -> None:
    for h in hs:
        "Strict-Transport-Security" in h  # noqa: B015


OPERATIONS: dict[str, Callable[[list[Any], list[str]], None]] = {
    "get": run_get,
    "set": run_set,
    "append": run_append,
    "append-new-value": run_append_new_value,
    "delete": run_delete,
    "contains": run_contains,
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_header_operation(benchmark, operation: str, implementation: str) -> None:  # type: ignore[no-untyped-def]
    cls = IMPLEMENTATIONS[implementation]
    run = OPERATIONS[operation]

    def fresh() -> tuple[tuple[list[Any], list[str]], dict[str, Any]]:
        # New value strings every round (built here, outside the timing).
        values = [f"theme=dark; n={i}; Path=/" for i in range(OPS)]
        return ([cls(raw=list(RESPONSE_HEADERS)) for _ in range(OPS)], values), {}

    # Both implementations end with the same fields.
    (ours, values), _ = fresh()
    (theirs, _), _ = fresh()
    run(ours[:1], values)
    run(theirs[:1], values)
    assert list(ours[0].raw) == list(theirs[0].raw)

    benchmark.group = f"headers: {operation}"
    benchmark.extra_info.update(headers_impl=implementation, headers_op=operation, ops=OPS)
    benchmark.pedantic(run, setup=fresh, rounds=ROUNDS)
