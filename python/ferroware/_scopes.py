"""Moving the task between the downstream app's cancel scopes and dispatch's.

The downstream app and ``dispatch`` share one task. When the app is suspended
inside a cancel scope of its own (a task group, a timeout) and control returns
to ``dispatch``, anyio and trio would still see the app's scope as the task's
current one: ``dispatch`` leaving a scope it entered before ``call_next`` then
fails ("isn't the current task's current cancel scope"), and a cancellation of
the app's scope would land in ``dispatch``. So the dispatcher moves the task
back to the scope ``dispatch`` was in when it returns control there, and into
the app's scope again when it resumes the app.

Both libraries keep that state where their public API doesn't reach; this
module is the one place that touches it, checks at import that it looks as
expected, and otherwise turns the feature off (the dispatcher then behaves as
before, with the limitation documented in docs/design.md).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import sniffio

Move = Callable[[Any, Any, Any, Any], None]

try:
    from anyio._backends import _asyncio as _anyio_asyncio

    _task_states: Any = _anyio_asyncio._task_states
    _ASYNCIO_OK = all(
        hasattr(_anyio_asyncio.CancelScope, name)
        for name in ("_tasks", "_deliver_cancellation", "_cancel_called", "_parent_scope", "_shield")
    ) and "cancel_scope" in getattr(_anyio_asyncio.TaskState, "__slots__", ())
except (ImportError, AttributeError):  # pragma: no cover - a future anyio
    _ASYNCIO_OK = False


def asyncio_support() -> tuple[Any, Any, dict[Any, Any], Move] | None:
    """What the compiled dispatcher needs to find an asyncio task's anyio state
    by itself, fast: ``(get_running_loop, current_task, states, move)``, where
    ``states`` maps ``weakref.ref(task)`` to anyio's record of the task (its
    ``cancel_scope`` is the innermost scope). None if anyio's internals are not
    as expected."""
    if not _ASYNCIO_OK or not isinstance(getattr(_task_states, "data", None), dict):
        return None
    return asyncio._get_running_loop, asyncio.current_task, _task_states.data, _move_asyncio


def _move_asyncio(task: Any, state: Any, from_scope: Any, to_scope: Any) -> None:
    state.cancel_scope = to_scope
    if from_scope is not None:
        from_scope._tasks.discard(task)
    if to_scope is not None:
        to_scope._tasks.add(task)
        # A cancellation that waited for us, of this scope or of one it is in
        # (anyio stops delivering once no task is left in the cancelled
        # scope): deliver it now.
        scope = to_scope
        while scope is not None:
            if scope._cancel_called:
                scope._deliver_cancellation(scope)
                break
            if scope._shield:
                break
            scope = scope._parent_scope


def trio_scopes() -> tuple[Any, Any, str, Move] | None:
    """For the current trio task: ``(task, holder, attribute, move)``, where
    ``getattr(holder, attribute)`` is its cancel status; None outside trio."""
    try:
        if sniffio.current_async_library() != "trio":
            return None
    except sniffio.AsyncLibraryNotFoundError:
        return None
    import trio

    task = trio.lowlevel.current_task()
    if not hasattr(task, "_activate_cancel_status") or not hasattr(task, "_cancel_status"):  # pragma: no cover
        return None
    return task, task, "_cancel_status", _move_trio


# The nurseries the app has open, taken off its task's nursery stack while
# the layer runs (trio pops that stack at each nursery's exit and checks that
# it popped its own), by the cancel status the app is suspended in.
_stashed_nurseries: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _move_trio(task: Any, holder: Any, from_status: Any, to_status: Any) -> None:
    nurseries: list[Any] | None = getattr(task, "_child_nurseries", None)
    if nurseries and from_status is not None:
        # The innermost nurseries opened under the status left, not under the
        # one entered: the app's, while control goes back to the layer.
        leaving = _with_parents(from_status) - _with_parents(to_status)
        stash = []
        while nurseries and getattr(nurseries[-1], "_cancel_status", None) in leaving:
            stash.append(nurseries.pop())
        if stash:
            _stashed_nurseries[from_status] = stash
    task._activate_cancel_status(to_status)
    if nurseries is not None and to_status is not None:
        nurseries.extend(reversed(_stashed_nurseries.pop(to_status, [])))


def _with_parents(status: Any) -> set[Any]:
    """A trio cancel status and every status enclosing it."""
    chain = set()
    while status is not None:
        chain.add(status)
        status = status._parent
    return chain
