"""Compiled versions of Starlette's header classes.

``Headers`` and ``MutableHeaders`` behave like ``starlette.datastructures``'
classes of the same names (Starlette 1.10.0) and keep their fields in one Python
list of ``(bytes, bytes)`` tuples, shared with whoever handed it in: edits made
through ``MutableHeaders(raw=lst)`` or ``MutableHeaders(scope=message)`` are
edits of ``lst`` or ``message["headers"]``.

One deliberate difference: whatever turns text into a header field
(``__setitem__``, ``append``, ``setdefault``, ``update``, ``|``, ``|=``,
``add_vary_header`` and the ``headers=`` mapping of the constructors) raises
``ValueError`` for a name that is not an RFC 9110 token or a value containing
CR, LF or NUL, so no response splitting can be produced through them.
"""

from __future__ import annotations

from collections.abc import Mapping

from ferroware._core import Headers, MutableHeaders

__all__ = ["Headers", "MutableHeaders"]

# Compiled classes can't inherit from the ABCs; register them so that
# ``isinstance(h, Mapping)`` holds, as it does for Starlette's (and, through
# the subclass, for MutableHeaders, which like Starlette's is a Mapping but
# not a full MutableMapping: it has no pop, popitem or clear).
Mapping.register(Headers)
