"""``ferroware bench`` and the helpers behind it, on tiny settings: what it prints
and writes, not how fast anything is (no test here asserts a timing)."""

from __future__ import annotations

import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ferroware import _bench, _server_bench
from ferroware.__main__ import _Progress, main

SVG = "{http://www.w3.org/2000/svg}"
TINY = ["bench", "--rounds", "1", "--requests", "5", "--layers", "0", "1"]


def test_tiny_run_prints_every_case_and_writes_svg_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart, figures = tmp_path / "out" / "chart.svg", tmp_path / "figures.json"
    assert main([*TINY, "--chart", str(chart), "--json", str(figures)]) == 0
    out, err = capsys.readouterr()

    rows = [line.split() for line in out.splitlines()]
    for case in _bench.CASES:
        for impl in _bench.IMPLEMENTATIONS:
            assert any(row[:2] == [case, impl] for row in rows), (case, impl, out)
    assert "per layer" in out and "stock/this" in out and "this/pure" in out
    # capsys's stderr is not a terminal: plain progress lines, no bar redrawn with \r.
    assert "\r" not in err and "measuring: " in err

    root = ET.parse(chart).getroot()
    assert root.tag == f"{SVG}svg"
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == len(_bench.CASES) * len(_bench.IMPLEMENTATIONS)
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert set(_bench.CASES) <= texts and set(_bench.IMPLEMENTATIONS) <= texts

    payload = json.loads(figures.read_text())
    assert {"framework", "versions", "machine", "settings", "cases", "server"} <= payload.keys()
    assert payload["server"] is None
    assert {"ferroware", "starlette", "python", "fastapi"} <= payload["versions"].keys()
    assert payload["settings"] == {"layers": [0, 1], "requests": 5, "rounds": 1, "concurrency": 1}
    assert payload["cases"].keys() == _bench.CASES.keys()
    for case in payload["cases"].values():
        assert {"title", "seconds_per_request", "seconds_per_layer", "ratio_to_stock", "ratio_to_pure"} <= case.keys()
        assert case["seconds_per_layer"].keys() == set(_bench.IMPLEMENTATIONS)
        assert case["ratio_to_stock"]["stock"] == pytest.approx(1.0)
        assert case["ratio_to_pure"]["pure"] == pytest.approx(1.0)
        points = {(p["implementation"], p["layers"]) for p in case["seconds_per_request"]}
        assert points == {(i, n) for i in _bench.IMPLEMENTATIONS for n in (0, 1)}
        assert all(p["seconds"] > 0 and p["requests_per_round"] >= 1 for p in case["seconds_per_request"])


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as sys.stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_a_few_plain_lines() -> None:
    log = io.StringIO()
    progress = _Progress(750, "measuring", stream=log)  # the default run's step count
    for _ in range(750):
        progress.step()
    progress.finish()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == _Progress.PLAIN_LINES
    assert lines[0].startswith("  measuring: 75/750 (10%), ")
    assert lines[-1].startswith("  measuring: 750/750 (100%), ")


def test_progress_with_fewer_steps_than_lines_prints_each_step() -> None:
    log = io.StringIO()
    progress = _Progress(3, "serving", stream=log)
    for _ in range(3):
        progress.step()
    progress.finish()
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == [
        "  serving: 1/3 (33%)", "  serving: 2/3 (66%)", "  serving: 3/3 (100%)",
    ]  # fmt: skip


def test_progress_on_a_terminal_redraws_one_line() -> None:
    terminal = _Terminal()
    progress = _Progress(750, "measuring", stream=terminal)
    for _ in range(750):
        progress.step()
    progress.finish()
    drawn = terminal.getvalue()
    assert drawn.count("\r") == 750 and drawn.count("\n") == 1 and drawn.endswith("\n")
    assert drawn.split("\r")[-1].startswith("  measuring [" + "#" * 30 + "] 750/750 ")


def test_bench_draws_the_bar_when_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([*TINY, "--cases", "header", "--chart", str(tmp_path / "c.svg")]) == 0
    assert "\r  measuring [" in terminal.getvalue() and "measuring: " not in terminal.getvalue()


@pytest.mark.parametrize("command", [["--help"], ["bench", "--help"]])
def test_help_is_plain_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: ferroware")
    # No reStructuredText: no ``literals``, no :func:`roles`, no backquote at all.
    assert "`" not in help_text and not re.search(r":[a-z]+:", help_text), help_text
    if command == ["--help"]:
        assert "compiled dispatcher" in help_text and 'BaseHTTPMiddleware, @app.middleware("http")' in help_text


def test_chart_goes_to_the_current_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--cases", "header"]) == 0
    assert ET.parse(tmp_path / "ferroware-bench.svg").getroot().tag == f"{SVG}svg"
    assert "header" in capsys.readouterr().out


def test_concurrent_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = [*TINY, "--cases", "header", "stream", "--concurrency", "4", "--chart", str(tmp_path / "c.svg")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 concurrent tasks" in out and "stream" in out


def test_layers_must_include_zero_and_another_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--layers", "1", "5"]) == 2
    assert "--layers needs 0" in capsys.readouterr().err


def test_server_without_wrk_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no wrk
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--server"]) == 2
    out, err = capsys.readouterr()
    assert "needs wrk" in err and "apt-get install -y wrk" in err and "scripts/bench.sh" in err
    assert out == ""  # it failed before measuring anything
    assert not (tmp_path / "ferroware-bench.svg").exists()


def test_slope_of_synthetic_data() -> None:
    assert _bench.slope([(0, 3.0), (1, 5.0), (5, 13.0), (10, 23.0), (20, 43.0)]) == pytest.approx(2.0)
    # Symmetric noise around y = 1 + 0.5x leaves the least-squares slope unchanged.
    assert _bench.slope([(0, 1.1), (0, 0.9), (10, 6.2), (10, 5.8)]) == pytest.approx(0.5)
    # The least-squares line, not the end points: (0,0) (1,1) (2,0) gives 0.
    assert _bench.slope([(0, 0.0), (1, 1.0), (2, 0.0)]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        _bench.slope([(5, 1.0), (5, 2.0)])


def test_per_layer_cost_and_ratios_per_case() -> None:
    cost = {("a", "stock"): 100e-6, ("a", "pure"): 2e-6, ("a", "ferroware"): 3e-6, ("b", "stock"): 50e-6,
            ("b", "pure"): 1e-6, ("b", "ferroware"): 4e-6}  # fmt: skip
    measurements = [
        _bench.Measurement(impl, n, 30e-6 + n * c, case)
        for (case, impl), c in cost.items()
        for n in _bench.LAYER_COUNTS
    ]
    for (case, impl), c in cost.items():
        assert _bench.per_layer_cost(measurements, impl, case) == pytest.approx(c)
    by_case = {f.case: f for f in _bench.figures(measurements)}
    assert by_case["a"].vs_stock["ferroware"] == pytest.approx(100 / 3)
    assert by_case["a"].vs_pure["ferroware"] == pytest.approx(1.5)
    assert by_case["b"].vs_stock["ferroware"] == pytest.approx(12.5)
    assert by_case["b"].vs_pure["stock"] == pytest.approx(50)
    table = _bench.format_table(measurements)
    assert "33.3x" in table and "1.50x" in table and "12.5x" in table


@pytest.mark.parametrize("case", _bench.CASES)
def test_every_implementation_answers_alike(case: str) -> None:
    """The builders give the three implementations the same behaviour to time."""
    for impl in _bench.IMPLEMENTATIONS:
        for layers in (0, 1, 5):
            _bench.check(_bench.build_app(case, impl, layers), case, layers)


def test_batch_size_scales_down_expensive_stacks() -> None:
    assert _bench.batch_size(1000, 30e-6, 30e-6) == 1000
    assert _bench.batch_size(1000, 30e-6, 3e-3) == 10
    assert _bench.batch_size(1000, 30e-6, 1.0) == 3  # never below the minimum
    assert _bench.batch_size(1000, 30e-6, 1e-6) == 1000  # never above the request count


WRK_OUTPUT = """\
Running 8s test @ http://127.0.0.1:40123/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.12ms    1.02ms  20.31ms   90.12%
    Req/Sec     3.14k   210.55     3.50k    80.00%
  Latency Distribution
     50%  498.00us
     75%    5.40ms
     90%    6.01ms
     99%    1.20s
  50021 requests in 8.00s, 7.01MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   6251.40
Transfer/sec:    897.21KB
"""


def test_wrk_output_is_parsed() -> None:
    rps, p50, p99, total, errors = _server_bench.parse_wrk(WRK_OUTPUT)
    assert rps == pytest.approx(6251.40)
    assert p50 == pytest.approx(0.498)
    assert p99 == pytest.approx(1200.0)
    assert total == 50021
    assert errors == 7
    with pytest.raises(ValueError):
        _server_bench.parse_wrk("wrk: connection refused")


def test_throughput_kept() -> None:
    runs = [
        _server_bench.ServerRun("stock", 0, 6000.0, 5.0, 9.0, 48000, 0),
        _server_bench.ServerRun("stock", 10, 480.0, 60.0, 90.0, 3840, 0),
    ]
    assert _server_bench.kept(runs, "stock", 10) == pytest.approx(0.08)
    assert "stock 8%" in _server_bench.format_server_table(runs, 10)
