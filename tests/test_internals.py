"""anyio's and trio's private state, checked: when what the cancel-scope move
reads is missing, ferroware warns once, naming it, the move is off, and
requests on that backend take the task path (the app in a task of its own).

Each case runs in a fresh interpreter, with the attribute removed before
ferroware is imported, so nothing leaks into the rest of the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ferroware import _scopes


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_supported_anyio_and_trio_give_no_warning() -> None:
    proc = run(
        """
        import anyio, ferroware
        from ferroware import _scopes
        from ferroware.base import BaseHTTPMiddleware
        assert _scopes.asyncio_support() is not None

        async def main():
            assert _scopes.trio_scopes() is not None

        anyio.run(main, backend="trio")
        print("ok")
        """
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


def test_missing_anyio_state_warns_once_and_turns_the_move_off() -> None:
    proc = run(
        """
        import warnings
        from anyio._backends import _asyncio
        del _asyncio.CancelScope._deliver_cancellation
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import ferroware.base
            from ferroware import _scopes
            assert _scopes.asyncio_support() is None  # asked again: off, and says so again
        messages = [(w.category.__name__, str(w.message)) for w in caught]
        assert len(messages) == 2 and messages[0] == messages[1], messages
        category, message = messages[0]
        assert category == "InternalsWarning", category
        assert "anyio lacks CancelScope._deliver_cancellation" in message, message
        print("ok")
        """
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


def test_missing_anyio_state_sends_requests_down_the_task_path() -> None:
    """With the move off, a dispatch that keeps a cancel scope around
    call_next, over an app that streams from its own task group (Starlette's
    StreamingResponse on ASGI 2.3), still gets its whole body: the request
    took the task path, where nothing is moved."""
    proc = run(
        """
        import importlib, warnings
        import ferroware.base
        from ferroware import _scopes

        # An anyio lacking one more attribute than this one (removing a real
        # one breaks anyio's own task groups); the check runs again as the
        # hooks are made again.
        _scopes.ANYIO_SCOPE_ATTRIBUTES += ("_gone_in_a_future_anyio",)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importlib.reload(ferroware.base)
        assert [w.category.__name__ for w in caught] == ["InternalsWarning"], caught
        import anyio
        from ferroware._app_task import AppTask
        from starlette.responses import StreamingResponse

        started = []
        init = AppTask.__init__
        AppTask.__init__ = lambda self, *args: (started.append(1), init(self, *args))[1]

        async def chunks():
            for chunk in (b"a", b"b"):
                await anyio.sleep(0)
                yield chunk

        async def endpoint(scope, receive, send):
            await StreamingResponse(chunks())(scope, receive, send)

        async def timed(request, call_next):
            with anyio.fail_after(5):
                return await call_next(request)

        async def main():
            sent, done = [], anyio.Event()

            async def receive():
                await done.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    done.set()

            scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET", "path": "/", "headers": []}
            await ferroware.base.BaseHTTPMiddleware(endpoint, dispatch=timed)(scope, receive, send)
            return [m.get("body") for m in sent[1:]]

        assert anyio.run(main) == [b"a", b"b", b""]
        assert started == [1], started
        print("ok")
        """
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


def test_missing_trio_state_warns_once_and_requests_still_answer() -> None:
    proc = run(
        """
        import warnings
        import anyio, trio
        from starlette.middleware import Middleware
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient
        import ferroware

        from ferroware import _scopes
        from ferroware._app_task import AppTask

        started = []
        init = AppTask.__init__
        AppTask.__init__ = lambda self, *args: (started.append(1), init(self, *args))[1]

        # A trio whose tasks lack one more attribute than this one's (removing
        # a real one from trio's Task class breaks trio itself).
        _scopes.TRIO_TASK_ATTRIBUTES += ("_gone_in_a_future_trio",)

        async def endpoint(request):
            return PlainTextResponse("hi")

        async def passthrough(request, call_next):
            return await call_next(request)

        app = ferroware.Starlette(
            routes=[Route("/", endpoint)],
            middleware=[Middleware(ferroware.BaseHTTPMiddleware, dispatch=passthrough)],
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with TestClient(app, backend="trio") as client:
                bodies = [client.get("/").text for _ in range(3)]
        assert bodies == ["hi"] * 3, bodies
        assert len(started) == 3, started  # each on the task path
        messages = [str(w.message) for w in caught if w.category is ferroware.InternalsWarning]
        assert len(messages) == 1, messages
        assert "trio lacks Task._gone_in_a_future_trio" in messages[0], messages
        print("ok")
        """
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


@pytest.mark.parametrize("name", _scopes.TRIO_TASK_ATTRIBUTES)
def test_each_trio_attribute_is_checked(name: str) -> None:
    proc = run(
        f"""
        import warnings
        import trio
        from ferroware import _scopes

        async def main():
            class Lacking:
                pass
            fake = Lacking()
            for attr in {_scopes.TRIO_TASK_ATTRIBUTES!r}:
                if attr != {name!r}:
                    setattr(fake, attr, None)
            trio.lowlevel.current_task = lambda: fake
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert _scopes.trio_scopes() is None
                assert _scopes.trio_scopes() is None
            assert [str(w.message).split(",")[0] for w in caught] == ["ferroware: trio lacks Task.{name}"], caught

        trio.run(main)
        print("ok")
        """
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr
