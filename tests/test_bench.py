"""The benchmark runs end to end on a tiny load and prints its tables (issues #9 and #16).

Benchmarks are not timed tests: these check the run's structure and its
correctness checks (no errors, the response cap, queue order), never its speed.
PostgreSQL's targets run when it is reachable, nginx when it is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import postgres_available

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["direct", "proxy-aiohttp", "proxy-client", "gateway", "proxy-aiohttp-2"]
POSTGRES = postgres_available()

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
    for column in ("req/s", "p50 ms", "p99 ms", "÷ reference req/s (rounds)", "p50 − reference ms", "p50 − direct ms"):
        assert column in header
    targets = TARGETS + (["gateway-pg-2"] if POSTGRES else [])
    rows = {(row["target"], row["connections"]): row for row in result["results"]}
    assert set(rows) == {(target, c) for target in targets for c in (1, 32)}
    for (target, connections), row in rows.items():
        assert row["rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["errors"] == 0, row
        assert any(line.split()[:2] == [str(connections), target] for line in stdout.splitlines())
    # Each gateway against the bare aiohttp proxy with as many processes.
    assert rows[("gateway", 32)]["reference"] == "proxy-aiohttp"
    assert rows[("gateway", 32)]["x_reference"]["median"] > 0
    assert rows[("gateway", 1)]["p50_over_reference_ms"]["median"] is not None
    assert rows[("gateway", 1)]["p50_over_direct_ms"] is not None
    if POSTGRES:
        assert rows[("gateway-pg-2", 32)]["reference"] == "proxy-aiohttp-2"
        assert result["rss_kib"]["gateway-pg-2"]["processes"] >= 3  # uvicorn's supervisor and two workers
    assert result["options"]["upstream"] == ("nginx" if shutil.which("nginx") else "python")

    assert result["rss_kib"]["gateway"]["VmHWM"] > 0
    big = result["big_responses"]
    half = big["calls"] // 2
    assert big["answers"] == {
        "declared: 502 upstream_response_too_large": half,
        "chunked: 502 upstream_response_too_large": half,
    }
    assert result["machine"]["nproc"] >= 1
    verdicts = {t["name"].split(":")[0]: t["passed"] for t in result["targets"]}
    assert len(result["targets"]) == 8
    assert verdicts["gateway, 1 process, SQLite"] is not None
    assert (verdicts["gateway-pg-2, 2 processes, PostgreSQL"] is not None) == POSTGRES
    assert verdicts["queue drain on PostgreSQL, submission included"] is None  # not asked for
    assert "| conns | target |" in markdown.read_text()
    assert "| target | measured | met |" in markdown.read_text()


def test_the_python_load_generator_measures_too(tmp_path: Path) -> None:
    stdout, result = bench(
        tmp_path,
        "--load",
        "python",
        "--upstream",
        "python",
        "--targets",
        "direct,proxy-aiohttp,gateway",
        "--connections",
        "4",
        "--rounds",
        "2",
        "--no-memory",
    )
    assert [(r["target"], r["connections"]) for r in result["results"]] == [
        ("direct", 4),
        ("proxy-aiohttp", 4),
        ("gateway", 4),
    ]
    assert all(r["rps"] > 0 and r["errors"] == 0 for r in result["results"])
    assert result["options"]["generator"] == "python"
    assert result["options"]["upstream"] == "python"
    # Two rounds of each; the gateway's ratio is the median of the two rounds' ratios, with their range.
    assert len(result["rounds"]) == 6
    assert sorted(r["round"] for r in result["rounds"]) == [1, 1, 1, 2, 2, 2]
    gateway = next(r for r in result["results"] if r["target"] == "gateway")
    ratio = gateway["x_reference"]
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    line = next(line for line in stdout.splitlines() if line.split()[:2] == ["4", "gateway"])
    assert f"{ratio['median']:.2f}× (" in line


def test_data_scale_mode_adds_the_gateway_on_a_full_database(tmp_path: Path) -> None:
    _, result = bench(tmp_path, "--scale", "--targets", "gateway", "--connections", "8", "--no-memory", timeout=400)
    assert [r["target"] for r in result["results"]] == ["gateway", "gateway-scale"]
    assert result["scale_rows"]["api_keys"] == 10_000 and result["scale_rows"]["runs"] == 100_000


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES, reason="PostgreSQL is not running on 127.0.0.1:5432")
def test_queue_mode_submits_over_http_and_drains_in_order(tmp_path: Path) -> None:
    stdout, result = bench(tmp_path, "--queue", "--targets", "", "--queue-calls", "200", "--rounds", "2", timeout=400)
    queue = result["queue"]
    assert queue["finished"] and queue["order_held"], queue
    assert [r["statuses"] for r in queue["rounds"]] == [{"completed": 200}, {"completed": 200}]
    assert queue["queues"] == 20 and queue["processes"] == 2
    assert queue["calls_per_s_min"] <= queue["calls_per_s"] <= queue["calls_per_s_max"]
    assert "order held: True" in stdout
    verdict = next(t for t in result["targets"] if t["name"].startswith("queue drain"))
    assert verdict["passed"] is not None and "calls/s" in verdict["measured"]


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
