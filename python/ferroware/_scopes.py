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
module is the one place that touches it, checks that it looks as expected
(anyio's at import, trio's at the first trio request), and otherwise turns the
feature off with one warning naming what is missing: on that backend every
request then takes the task path (``ferroware._app_task``), which needs none
of it.
"""

from __future__ import annotations

import asyncio
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import sniffio

Move = Callable[[Any, Any, Any, Any], None]

ANYIO_SCOPE_ATTRIBUTES = ("_tasks", "_deliver_cancellation", "_cancel_called", "_parent_scope", "_shield")
TRIO_TASK_ATTRIBUTES = ("_activate_cancel_status", "_cancel_status", "_child_nurseries")


class InternalsWarning(RuntimeWarning):
    """anyio's or trio's private state is not as ferroware expects: the cancel
    scope move is off for that backend, whose requests take the task path."""


def _warn_missing(library: str, missing: list[str]) -> None:
    warnings.warn(
        f"ferroware: {library} lacks {', '.join(missing)}, which the dispatcher reads to keep "
        f"{library}'s cancel scopes right when the app is suspended; on {library} every request "
        "now runs its app in a task of its own, as Starlette does, at Starlette's cost "
        "(see docs/design.md, 'CPython details the dispatcher relies on')",
        InternalsWarning,
        stacklevel=3,
    )


def _anyio_missing() -> list[str]:
    """What of anyio's asyncio-backend state the move needs is not there."""
    try:
        from anyio._backends import _asyncio as anyio_asyncio
    except ImportError:  # pragma: no cover - anyio without its asyncio backend
        return ["anyio._backends._asyncio"]
    states = getattr(anyio_asyncio, "_task_states", None)
    missing = [] if isinstance(getattr(states, "data", None), dict) else ["_task_states.data"]
    if "cancel_scope" not in getattr(getattr(anyio_asyncio, "TaskState", None), "__slots__", ()):
        missing.append("TaskState.cancel_scope")
    # Looked for on an instance, never entered: anyio before 4.14 sets these in
    # __init__, later ones declare them on the class.
    probe = anyio_asyncio.CancelScope()
    missing += [f"CancelScope.{name}" for name in ANYIO_SCOPE_ATTRIBUTES if not hasattr(probe, name)]
    return missing


def asyncio_support() -> tuple[Any, Any, dict[Any, Any], Move] | None:
    """What the compiled dispatcher needs to find an asyncio task's anyio state
    by itself, fast: ``(get_running_loop, current_task, states, move)``, where
    ``states`` maps ``weakref.ref(task)`` to anyio's record of the task (its
    ``cancel_scope`` is the innermost scope). None, with a warning, if anyio's
    internals are not as expected. Called once, at import of ``ferroware.base``."""
    if missing := _anyio_missing():
        _warn_missing("anyio", missing)
        return None
    from anyio._backends._asyncio import _task_states

    states: Any = _task_states  # its .data: a WeakKeyDictionary's dict, by weakref
    return asyncio._get_running_loop, asyncio.current_task, states.data, _move_asyncio


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
    global _trio_ok
    if _trio_ok is None:
        missing = [f"Task.{name}" for name in TRIO_TASK_ATTRIBUTES if not hasattr(task, name)]
        _trio_ok = not missing
        if missing:
            _warn_missing("trio", missing)
    if not _trio_ok:
        return None
    return task, task, "_cancel_status", _move_trio


# Whether trio's tasks have what _move_trio uses: checked on the first trio
# request (importing trio at ferroware's import would cost every asyncio app).
_trio_ok: bool | None = None


# The nurseries the app has open, taken off its task's nursery stack while
# the layer runs (trio pops that stack at each nursery's exit and checks that
# it popped its own), by the cancel status the app is suspended in.
_stashed_nurseries: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _move_trio(task: Any, holder: Any, from_status: Any, to_status: Any) -> None:
    nurseries: list[Any] = task._child_nurseries
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
    if to_status is not None:
        nurseries.extend(reversed(_stashed_nurseries.pop(to_status, [])))


def _with_parents(status: Any) -> set[Any]:
    """A trio cancel status and every status enclosing it."""
    chain = set()
    while status is not None:
        chain.add(status)
        status = status._parent
    return chain
