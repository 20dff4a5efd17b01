"""Asking the running event loop whether a yield would let anything else run."""

from __future__ import annotations

import asyncio

import sniffio


def others_ready() -> bool:
    """True when another task is ready to run now (True when it can't be told).

    Only asyncio's stdlib loop can be asked; trio's statistics leave out the
    tasks of the batch it is running, so there we always yield.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return True
    if library == "asyncio":
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        # Only the stdlib loop exposes its ready queue; elsewhere, always yield.
        return True if ready is None else len(ready) > 0
    return True

