"""Fixtures and hooks of the integration suite: the ``server`` fixture, whose
lifecycle and checks are described in rel_harness.py, where the harness is.

With ``FERROWARE_WRITE_RELIABILITY=1`` the session's figures are written to
docs/reliability.md at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_harness import _OUTPUTS, HERE, SERVER_KINDS, SUMMARY, Server, ServerPool, attach_output
from reliability_doc import write_reliability

@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(params=list(SERVER_KINDS))
def server(request: pytest.FixtureRequest, server_pool: ServerPool) -> Iterator[Server]:
    """A running server of each kind; checks it (and its worker) survived the test."""
    srv = server_pool.get(request.param)
    attach_output(request.node, srv, srv.output_size())
    events_from = srv.events_size()
    pid = srv.debug()["pid"]
    yield srv
    assert srv.alive(), f"server {srv.name} died (exit code {srv.proc.returncode})"
    after = srv.debug()["pid"]
    assert after == pid, f"server {srv.name}: its worker {pid} was replaced by {after} during the test"
    emitted = [e for e in srv.events(since=events_from) if e["ev"] in ("warning", "unraisable")]
    # Stock Starlette's own (its call_next's body_stream left unexhausted when
    # dispatch raises after call_next, on trio): recorded, not ferroware's.
    stock = [e for e in emitted if "starlette.middleware.base.BaseHTTPMiddleware" in e.get("message", "")]
    SUMMARY.setdefault("stock_warnings", []).extend(f"{srv.name}: {e['category']}: {e['message'][:160]}" for e in stock)
    emitted = [e for e in emitted if e not in stock]
    assert not emitted, f"server {srv.name} emitted warnings or unraisable exceptions: {emitted}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "call" or report.failed:
        if SUMMARY["tests"].get(item.nodeid) != "failed":
            SUMMARY["tests"][item.nodeid] = "failed" if report.failed else report.outcome
        for srv, _ in item.stash.get(_OUTPUTS, [])[:1]:
            SUMMARY["test_server"][item.nodeid] = srv.name
    if report.failed:
        for srv, since in item.stash.get(_OUTPUTS, []):
            text = srv.output(since)
            if len(text) > 20000:
                text = "[...]\n" + text[-20000:]
            report.sections.append((f"server {srv.name} (port {srv.port}) output", text or "(none)"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("FERROWARE_WRITE_RELIABILITY") != "1" or not SUMMARY["tests"]:
        return
    outcomes = list(SUMMARY["tests"].values())
    wrk = shutil.which("wrk")
    wrk_version = "wrk not installed"
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        wrk_version = (out.stdout + out.stderr).split("[")[0].strip() or "wrk"
    path = write_reliability(SUMMARY, outcomes.count("passed"), outcomes.count("failed"), wrk_version)
    print(f"\nwrote {path}")
