"""The conformance tests' shared fixture: the extracted Starlette sdist (see ``_sdist.py``)."""

from _sdist import starlette_sdist

__all__ = ["starlette_sdist"]
