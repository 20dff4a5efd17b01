"""A bounded soak: wrk against ten ``@app.middleware("http")`` layers on uvicorn (httptools).

Two wrk runs (64 connections, 2 threads): a warm-up, then the measured run,
during which a Python client also checks responses. wrk's Lua ``response``
hook checks every response byte for byte (status, the ten layers' headers, the
body). Between and after the runs, ``/debug`` gives the worker's RSS, live
asyncio tasks and gc objects, after a collection, with the server idle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from rel_harness import SUMMARY, Server, ServerPool, attach_output
from rel_app import MB, SOAK_BODY, SOAK_LAYERS

pytestmark = pytest.mark.integration

WARMUP_S = int(os.environ.get("FERROWARE_SOAK_WARMUP", "8"))
SOAK_S = int(os.environ.get("FERROWARE_SOAK_SECONDS", "30"))
CONNECTIONS = 64
THREADS = 2
# Bounds between the idle point after warm-up and the idle point after the soak:
RSS_GROWTH_BOUND = 20 * MB
GC_OBJECTS_GROWTH_BOUND = 5_000  # a leak of one object per request would be tens of thousands
SPOT_CHECKS = 300

LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) checked = 0; bad = 0; first_bad = "" end
local expected = string.rep("soak-ok ", 64)
function response(status, headers, body)
  checked = checked + 1
  local ok = status == 200 and body == expected
  for i = 0, %d do ok = ok and headers["x-l" .. i] == "1" end
  if not ok then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body, 1, 80) end
  end
end
function done(summary, latency, requests)
  local c, b, f = 0, 0, ""
  for _, t in ipairs(threads) do
    c = c + t:get("checked"); b = b + t:get("bad")
    if f == "" then f = t:get("first_bad") end
  end
  io.write(string.format("REL-CHECKED %%d REL-BAD %%d REL-FIRST-BAD [%%s]\\n", c, b, f))
end
""" % (SOAK_LAYERS - 1)


def run_wrk(server: Server, seconds: int, script: Path) -> dict[str, int | float | str]:
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is not installed (scripts/test.sh installs it: apt-get install -y wrk)"
    cmd = [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
           f"http://127.0.0.1:{server.port}/l10/soak"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    figures: dict[str, int | float | str] = {"output": text}
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    assert match, text
    figures["requests"] = int(match.group(1))
    figures["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    figures["socket_errors"] = sum(int(n) for n in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    figures["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    checked = re.search(r"REL-CHECKED (\d+) REL-BAD (\d+)", text)
    assert checked, text
    figures["checked"], figures["bad"] = int(checked.group(1)), int(checked.group(2))
    return figures


def spot_check(server: Server, count: int, failures: list[str]) -> None:
    for _ in range(count):
        reply = server.get("/l10/soak", timeout=30)
        layers = [reply.header(f"x-l{i}") for i in range(SOAK_LAYERS)]
        if reply.outcome() != (200, SOAK_BODY, True) or layers != ["1"] * SOAK_LAYERS:
            failures.append(f"{reply.status} {reply.body[:80]!r} {reply.error} {layers}")


def test_soak_ten_decorator_layers(request: pytest.FixtureRequest, server_pool: ServerPool, tmp_path: Path) -> None:
    server = server_pool.get("uvicorn-httptools")
    attach_output(request.node, server, server.output_size())
    script = tmp_path / "check.lua"
    script.write_text(LUA)
    start = server.debug()

    warm = run_wrk(server, WARMUP_S, script)
    time.sleep(0.5)
    before = server.debug()

    failures: list[str] = []
    checker = threading.Thread(target=spot_check, args=(server, SPOT_CHECKS, failures))
    checker.start()
    soak = run_wrk(server, SOAK_S, script)
    checker.join(timeout=60)
    time.sleep(0.5)
    after = server.debug()
    spot_check(server, 20, failures)  # and after, with the server idle

    figures = {
        "server": server.name,
        "layers": SOAK_LAYERS,
        "connections": CONNECTIONS,
        "threads": THREADS,
        "warmup_s": WARMUP_S,
        "soak_s": SOAK_S,
        "warmup_requests": warm["requests"],
        "requests": soak["requests"],
        "rps": soak["rps"],
        "checked_by_wrk": int(warm["checked"]) + int(soak["checked"]),
        "bad_by_wrk": int(warm["bad"]) + int(soak["bad"]),
        "socket_errors": int(warm["socket_errors"]) + int(soak["socket_errors"]),
        "non_2xx": int(warm["non_2xx"]) + int(soak["non_2xx"]),
        "spot_checked": SPOT_CHECKS + 20,
        "spot_failures": len(failures),
        "rss_start": start["VmRSS"],
        "rss_after_warmup": before["VmRSS"],
        "rss_after_soak": after["VmRSS"],
        "tasks_after_warmup": before["tasks"],
        "tasks_after_soak": after["tasks"],
        "gc_objects_after_warmup": before["gc_objects"],
        "gc_objects_after_soak": after["gc_objects"],
        "rss_growth_bound": RSS_GROWTH_BOUND,
        "gc_objects_growth_bound": GC_OBJECTS_GROWTH_BOUND,
    }
    SUMMARY["soak"] = figures
    assert figures["socket_errors"] == 0 and figures["non_2xx"] == 0, soak["output"]
    assert figures["bad_by_wrk"] == 0 and figures["checked_by_wrk"] == figures["warmup_requests"] + figures["requests"], (
        warm["output"], soak["output"]  # fmt: skip
    )
    assert not failures, failures[:5]
    assert after["pid"] == before["pid"] == start["pid"]
    assert after["VmRSS"] - before["VmRSS"] < RSS_GROWTH_BOUND, figures
    assert after["tasks"] <= before["tasks"], figures
    assert after["gc_objects"] - before["gc_objects"] < GC_OBJECTS_GROWTH_BOUND, figures
