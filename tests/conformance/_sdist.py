"""The Starlette sdist whose test files the conformance tests run.

Which version: ``FERROWARE_CONFORMANCE_STARLETTE`` (default ``1.10.0``), any
version in the range ferroware's metadata declares; 0.46.0 and 1.10.0, the
ends of that range that CI runs, are pinned by sha256 below, and any other
version is checked against the sha256 PyPI serves (pip checks that) and its
digest reported. Downloaded with pip into a cache directory
(``FERROWARE_CACHE_DIR``, default ``<repo>/.cache/conformance``) and extracted
once; ``starlette_sdist`` (a session fixture, registered in this directory's
``conftest.py``) gives the extracted root. Each conformance test then runs
Starlette's own test files from that root in a subprocess, with one of the
``ferroware_swap*`` plugins of this directory on ``PYTHONPATH``. The inner run
imports ``starlette`` from that root, so the sdist's version is the one
tested, whatever the venv has installed.
"""

from __future__ import annotations

import email.parser
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

# The ``#sha256=`` of each sdist's link on https://pypi.org/simple/starlette/.
PINNED_SHA256 = {
    "0.46.0": "b359e4567456b28d473d0193f34c0de0ed49710d75ef183a74a5ce0499324f50",
    "1.10.0": "b8399098d4c1e3522734f7235dc79b1fc967f96cf139c81e0fa30479e0685f9b",
}
STARLETTE_VERSION = os.environ.get("FERROWARE_CONFORMANCE_STARLETTE", "1.10.0")
SDIST_NAME = f"starlette-{STARLETTE_VERSION}.tar.gz"
SDIST_TOP = f"starlette-{STARLETTE_VERSION}"
SDIST_SHA256 = PINNED_SHA256.get(STARLETTE_VERSION)

HERE = Path(__file__).resolve().parent  # tests/conformance: holds the pytest plugins
REPO_ROOT = HERE.parents[1]
# Written last into the extracted tree: its presence means the extraction completed.
COMPLETE_MARKER = ".ferroware-extracted"

TAIL_LINES = 120


class Deselected(NamedTuple):
    """Tests of an older Starlette that expect what ferroware deliberately does
    differently: it behaves as 1.10.0 does on every Starlette it supports
    (README, "Deliberate differences"). Each is left out below ``changed_in``,
    the first release whose copy of the test expects what ferroware does."""

    prefix: str  # node id prefix, as pytest's --deselect takes it
    count: int  # tests the prefix matches
    changed_in: str
    why: str


OLDER_RELEASE_DESELECTED = [
    *(
        Deselected(f"tests/middleware/test_cors.py::{name}[", 2, "1.0.0rc1", "CORS: an explicit origin, not '*', "
                   "when credentials are allowed (Starlette #3137)")
        for name in (
            "test_cors_credentialed_requests_return_specific_origin",
            "test_cors_allowed_origin_does_not_leak_between_credentialed_requests",
        )
    ),
    *(
        Deselected(f"tests/middleware/test_cors.py::{name}[", 2, "1.7.0", "CORS: 'Vary: Origin' on every normal "
                   "response, and no Origin reflected for a wildcard without credentials (Starlette #3516, #3517)")
        for name in (
            "test_cors_allow_all",
            "test_cors_allow_all_except_credentials",
            "test_cors_vary_header_is_not_set_for_non_credentialed_request",
            "test_preflight_allows_request_origin_if_origins_wildcard_and_credentials_allowed",
        )
    ),
    *(
        Deselected(f"tests/middleware/test_base.py::{name}[trio", count, "1.8.0", "the test drops its receive "
                   "generator unclosed: stock holds it in a reference cycle until after the run, ferroware frees "
                   "it at once and trio warns about the unexhausted generator; 1.8.0's copy closes it (aclosing)")
        for name, count in (
            ("test_poll_for_disconnect_repeated", 2),
            ("test_multiple_middlewares_stacked_client_disconnected", 1),
        )
    ),
]


def deselected_in(file: str) -> list[Deselected]:
    """The entries of OLDER_RELEASE_DESELECTED that apply to ``file`` at STARLETTE_VERSION."""
    version = Version(STARLETTE_VERSION)
    return [d for d in OLDER_RELEASE_DESELECTED if d.prefix.startswith(f"{file}::") and version < Version(d.changed_in)]


def deselect_args(entries: list[Deselected]) -> list[str]:
    return [arg for d in entries for arg in ("--deselect", d.prefix)]


def backend_neutral(test_id: str) -> str:
    """``test_id`` with its anyio backend taken out of the parameters."""
    return test_id.replace("[asyncio", "[", 1).replace("[trio", "[", 1)


def names_used(root: Path, file: str, names: list[str]) -> list[str]:
    """Those of ``names`` that the test file ``file`` of the sdist at ``root``
    mentions: an older release's file may not use every class a newer one does."""
    source = (root / file).read_text(encoding="utf-8")
    return [name for name in names if re.search(rf"\b{name}\b", source)]


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


def _in_declared_range() -> None:
    """Fail unless STARLETTE_VERSION is one ferroware's metadata accepts."""
    declared = [
        req
        for req in map(Requirement, importlib.metadata.requires("ferroware") or [])
        if req.name == "starlette" and req.marker is None
    ]
    assert declared, "ferroware's metadata declares no starlette requirement"
    if not declared[0].specifier.contains(STARLETTE_VERSION, prereleases=True):
        pytest.fail(
            f"FERROWARE_CONFORMANCE_STARLETTE={STARLETTE_VERSION} is outside the range ferroware "
            f"supports (starlette{declared[0].specifier})",
            pytrace=False,
        )


def _download(cache_dir: Path) -> Path:
    """The verified sdist in ``cache_dir``, downloaded with pip unless already there."""
    tarball = cache_dir / SDIST_NAME
    if tarball.is_file() and (SDIST_SHA256 is None or _sha256(tarball) == SDIST_SHA256):
        return tarball
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        pin = f" --hash=sha256:{SDIST_SHA256}" if SDIST_SHA256 else ""
        requirements.write_text(f"starlette=={STARLETTE_VERSION}{pin}\n")
        dest = Path(tmp) / "dist"
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--no-binary", ":all:", *(["--require-hashes"] if pin else []),
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
        if SDIST_SHA256 is not None:
            assert digest == SDIST_SHA256, f"{SDIST_NAME}: sha256 {digest}, expected {SDIST_SHA256}"
        else:
            print(f"{SDIST_NAME}: not pinned in {Path(__file__).name}; sha256 {digest} (checked by pip against PyPI)")
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
        and (SDIST_SHA256 is None or marker.read_text().strip() == SDIST_SHA256)
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
        (extracted / COMPLETE_MARKER).write_text(_sha256(tarball) + "\n")
        if root.exists():  # an interrupted or stale extraction
            shutil.rmtree(root)
        os.replace(extracted, root)


@pytest.fixture(scope="session")
def starlette_sdist() -> Path:
    """The root of the extracted Starlette sdist, downloaded and extracted on first use."""
    _in_declared_range()
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
