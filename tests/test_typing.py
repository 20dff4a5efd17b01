"""The package, as installed, type-checks under ``mypy --strict``: the public
API, the internal modules and the hand-written stub of the compiled module
(``_core.pyi``) agree with each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mypy  # noqa: F401  (the test extra installs it; a missing mypy is a failure)


def test_package_type_checks_strictly(tmp_path: Path) -> None:
    # Run outside the repository, so the installed package (with its stub) is checked.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "-p", "ferroware"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
