"""The Starlette 1.10.0 sdist, shared by the conformance tests.

Downloaded from PyPI with pip (pinned by version and sha256) into a cache
directory (``FERROWARE_CACHE_DIR``, default ``<repo>/.cache/conformance``) and
extracted once; ``starlette_sdist`` (a session fixture, registered in this
directory's ``conftest.py``) gives the extracted root. Each conformance test
then runs Starlette's own test files from that root in a subprocess, with one
of the ``ferroware_swap*`` plugins of this directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

STARLETTE_VERSION = "1.10.0"
SDIST_NAME = f"starlette-{STARLETTE_VERSION}.tar.gz"
SDIST_TOP = f"starlette-{STARLETTE_VERSION}"
# The ``#sha256=`` of the sdist's link on https://pypi.org/simple/starlette/.
SDIST_SHA256 = "b8399098d4c1e3522734f7235dc79b1fc967f96cf139c81e0fa30479e0685f9b"

HERE = Path(__file__).resolve().parent  # tests/conformance: holds the pytest plugins
REPO_ROOT = HERE.parents[1]
# Written last into the extracted tree: its presence means the extraction completed.
COMPLETE_MARKER = ".ferroware-extracted"

TAIL_LINES = 120


# --------------------------------------------------------------------------- sdist


def _cache_dir() -> Path:
    configured = os.environ.get("FERROWARE_CACHE_DIR")
    path = Path(configured) if configured else REPO_ROOT / ".cache" / "conformance"
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(cache_dir: Path) -> Path:
    """The verified sdist in ``cache_dir``, downloaded with pip unless already there."""
    tarball = cache_dir / SDIST_NAME
    if tarball.is_file() and _sha256(tarball) == SDIST_SHA256:
        return tarball
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"starlette=={STARLETTE_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        dest = Path(tmp) / "dist"
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--no-binary", ":all:", "--require-hashes",
            "-r", str(requirements), "-d", str(dest),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(
                f"could not download the Starlette {STARLETTE_VERSION} sdist from PyPI "
                f"(pip exit code {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
            )
        got = sorted(p.name for p in dest.iterdir())
        assert got == [SDIST_NAME], f"pip downloaded {got}, expected exactly [{SDIST_NAME!r}]"
        digest = _sha256(dest / SDIST_NAME)
        assert digest == SDIST_SHA256, f"{SDIST_NAME}: sha256 {digest}, expected {SDIST_SHA256}"
        os.replace(dest / SDIST_NAME, tarball)
    return tarball


def _check_version(root: Path) -> None:
    """Fail unless ``root`` is an extracted Starlette sdist of exactly the pinned version."""
    pkg_info = email.parser.Parser().parsestr((root / "PKG-INFO").read_text(encoding="utf-8"), headersonly=True)
    assert (pkg_info["Name"], pkg_info["Version"]) == ("starlette", STARLETTE_VERSION), (
        f"{root}/PKG-INFO says {pkg_info['Name']} {pkg_info['Version']}, expected starlette {STARLETTE_VERSION}"
    )
    init = (root / "starlette" / "__init__.py").read_text(encoding="utf-8")
    assert re.search(rf'^__version__ = "{re.escape(STARLETTE_VERSION)}"$', init, re.M), (
        f"{root}/starlette/__init__.py does not declare version {STARLETTE_VERSION}"
    )


def _is_complete(root: Path) -> bool:
    marker = root / COMPLETE_MARKER
    return (
        marker.is_file()
        and marker.read_text().strip() == SDIST_SHA256
        and (root / "PKG-INFO").is_file()
        and (root / "pyproject.toml").is_file()
        and (root / "tests" / "conftest.py").is_file()
        and (root / "tests" / "middleware").is_dir()
    )


def _extract(tarball: Path, cache_dir: Path, root: Path) -> None:
    """Extract into a scratch directory, then move the tree into place in one rename."""
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".extract-") as tmp:
        with tarfile.open(tarball) as tf:
            for member in tf.getmembers():
                top = member.name.split("/", 1)[0]
                assert top == SDIST_TOP, f"{SDIST_NAME}: unexpected member {member.name!r}"
            tf.extractall(tmp, filter="data")
        extracted = Path(tmp) / SDIST_TOP
        _check_version(extracted)
        (extracted / COMPLETE_MARKER).write_text(SDIST_SHA256 + "\n")
        if root.exists():  # an interrupted or stale extraction
            shutil.rmtree(root)
        os.replace(extracted, root)


@pytest.fixture(scope="session")
def starlette_sdist() -> Path:
    """The root of the extracted Starlette sdist, downloaded and extracted on first use."""
    cache_dir = _cache_dir()
    root = cache_dir / SDIST_TOP
    if not _is_complete(root):
        _extract(_download(cache_dir), cache_dir, root)
        assert _is_complete(root), f"{root}: extraction incomplete"
    _check_version(root)
    return root


def _tail(output: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


def inner_env(**extra: str) -> dict[str, str]:
    """The environment of an inner pytest run: this directory's plugins
    importable, the outer run's pytest options and plugins left out."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "FERROWARE_SWAP_APP")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PY_COLORS"] = "0"
    env.update(extra)
    return env
