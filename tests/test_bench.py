"""The benchmark runs end to end on a tiny load and prints its table (issue #9).

Benchmarks are not timed tests: these check the run's structure and its
correctness checks (no errors, the response cap, queue order), never its speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import postgres_available

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["direct", "proxy-httpx", "proxy-client", "gateway"]

pytestmark = pytest.mark.slow


def bench(tmp_path: Path, *args: str, timeout: float = 240) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_quick_run_prints_the_table_for_every_target(tmp_path: Path) -> None:
    markdown = tmp_path / "bench.md"
    stdout, result = bench(tmp_path, "--markdown", str(markdown))

    header = next(line for line in stdout.splitlines() if line.startswith("conns"))
    for column in ("req/s", "p50 ms", "p99 ms", "÷ proxy-httpx req/s", "p50 − direct ms"):
        assert column in header
    rows = {(row["target"], row["connections"]): row for row in result["results"]}
    assert set(rows) == {(target, c) for target in TARGETS for c in (1, 32, 64)}
    for (target, connections), row in rows.items():
        assert row["rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["errors"] == 0, row
        assert any(line.split()[:2] == [str(connections), target] for line in stdout.splitlines())
        if target == "gateway":
            assert row["x_proxy"] is not None and row["p50_over_direct_ms"] is not None

    assert result["rss_kib"]["gateway"]["VmHWM"] > 0
    big = result["big_responses"]
    half = big["calls"] // 2
    assert big["answers"] == {
        "declared: 502 upstream_response_too_large": half,
        "chunked: 502 upstream_response_too_large": half,
    }
    assert result["machine"]["nproc"] >= 1
    assert "| conns | target |" in markdown.read_text()


def test_the_python_load_generator_measures_too(tmp_path: Path) -> None:
    stdout, result = bench(
        tmp_path,
        "--load",
        "python",
        "--targets",
        "direct,proxy-httpx,gateway",
        "--connections",
        "4",
        "--rounds",
        "2",
        "--no-memory",
    )
    assert [(r["target"], r["connections"]) for r in result["results"]] == [
        ("direct", 4),
        ("proxy-httpx", 4),
        ("gateway", 4),
    ]
    assert all(r["rps"] > 0 and r["errors"] == 0 for r in result["results"])
    assert result["options"]["generator"] == "python"
    # Two rounds of each, the table showing their medians and the gateway's ratio round by round.
    assert len(result["rounds"]) == 6
    assert "gateway ÷ proxy-httpx at 4 connections, round by round: " in stdout


def test_data_scale_mode_adds_the_gateway_on_a_full_database(tmp_path: Path) -> None:
    _, result = bench(tmp_path, "--scale", "--targets", "gateway", "--connections", "8", "--no-memory", timeout=400)
    assert [r["target"] for r in result["results"]] == ["gateway", "gateway-scale"]
    assert result["scale_rows"]["api_keys"] == 10_000 and result["scale_rows"]["runs"] == 100_000


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not running on 127.0.0.1:5432")
def test_queue_mode_drains_in_order(tmp_path: Path) -> None:
    stdout, result = bench(tmp_path, "--queue", "--targets", "", timeout=400)
    queue = result["queue"]
    assert queue["finished"] and queue["order_held"], queue
    assert queue["statuses"] == {"completed": queue["calls"]}
    assert queue["calls_per_s"] > 0
    assert "order held: True" in stdout


def test_memory_line_signs_a_shrink_once() -> None:
    from bench.report import big_response_lines

    mib = 1024 * 1024
    big = {
        "calls": 10,
        "bytes": 50 * mib,
        "cap_bytes": 10 * mib,
        "answers": {},
        "before": {"VmRSS": 130_300, "VmHWM": 133_400},
        "after": {"VmRSS": 130_200, "VmHWM": 137_700},
    }
    line = big_response_lines(big)[1]
    assert "(-0.1)" in line and "(+4.2)" in line, line
