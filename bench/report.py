"""The benchmark's table: each target's figures and, on gateway rows, the ratios to the references."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .load import Measurement

REFERENCE = "proxy-httpx"
DIRECT = "direct"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total_kib = next((int(ln.split()[1]) for ln in meminfo.splitlines() if ln.startswith("MemTotal:")), 0)
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": model,
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    if shutil.which("wrk"):
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        info["wrk"] = (version.stdout or version.stderr).split("\n")[0].strip()
    return info


def _find(results: list[Measurement], target: str, connections: int) -> Measurement | None:
    return next((m for m in results if m.target == target and m.connections == connections), None)


def rows(results: list[Measurement]) -> list[dict[str, Any]]:
    """One row per measurement, with `x_proxy` (req/s over the bare proxy's) and `p50_over_direct_ms`."""
    out = []
    for m in results:
        row: dict[str, Any] = {
            "connections": m.connections,
            "target": m.target,
            "rps": round(m.rps, 1),
            "p50_ms": round(m.p50_ms, 3),
            "p99_ms": round(m.p99_ms, 3),
            "errors": m.errors,
            "cpu_us": None if m.cpu_us is None else round(m.cpu_us),
            "others_cpu": None if m.others_cpu is None else round(m.others_cpu, 3),
            "x_proxy": None,
            "p50_over_direct_ms": None,
        }
        reference, direct = _find(results, REFERENCE, m.connections), _find(results, DIRECT, m.connections)
        if m.target not in (REFERENCE, DIRECT) and reference is not None and reference.rps:
            row["x_proxy"] = round(m.rps / reference.rps, 2)
        if m.target != DIRECT and direct is not None:
            row["p50_over_direct_ms"] = round(m.p50_ms - direct.p50_ms, 3)
        out.append(row)
    return out


def ratio_spread(rounds: list[Measurement]) -> list[str]:
    """Per-round ratios to the bare proxy (measured minutes apart), so their spread is visible."""
    lines = []
    targets = sorted({m.target for m in rounds} - {REFERENCE, DIRECT})
    for connections in sorted({m.connections for m in rounds}):
        references = [m for m in rounds if m.target == REFERENCE and m.connections == connections]
        for target in targets:
            ours = [m for m in rounds if m.target == target and m.connections == connections]
            if len(ours) < 2 or len(references) != len(ours):
                continue
            ratios = [m.rps / r.rps for m, r in zip(ours, references, strict=True) if r.rps]
            if ratios:
                lines.append(
                    f"{target} ÷ {REFERENCE} at {connections} connections, round by round: "
                    + ", ".join(f"{x:.2f}×" for x in ratios)
                )
    return lines


def _optional(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table(results: list[Measurement], markdown: bool = False) -> str:
    header = [
        "conns",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU µs/req",
        "÷ proxy-httpx req/s",
        "p50 − direct ms",
    ]
    lines = []
    for row in rows(sorted(results, key=lambda m: m.connections)):
        lines.append(
            [
                str(row["connections"]),
                row["target"],
                f"{row['rps']:,.0f}",
                f"{row['p50_ms']:.3f}",
                f"{row['p99_ms']:.3f}",
                str(row["errors"]),
                _optional(row["cpu_us"], ",.0f"),
                _optional(row["x_proxy"], ".2f") + ("×" if row["x_proxy"] is not None else ""),
                _optional(row["p50_over_direct_ms"], "+.3f"),
            ]
        )
    if markdown:
        out = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" if i != 1 else "---" for i in range(len(header))) + "|",
        ]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), *(line(cells) for cells in lines)])


def memory_lines(rss: dict[str, dict[str, int]]) -> list[str]:
    return [
        f"{name}: peak RSS (VmHWM) {kib.get('VmHWM', 0) / 1024:.1f} MiB, RSS at the end {kib.get('VmRSS', 0) / 1024:.1f} MiB"
        for name, kib in rss.items()
    ]


def big_response_lines(big: dict[str, Any]) -> list[str]:
    mib = 1024 * 1024
    return [
        f"{big['calls']} calls for {big['bytes'] // mib} MiB with a {big['cap_bytes'] // mib} MiB cap: "
        f"answers {big['answers']}",
        f"gateway RSS {big['before']['VmRSS'] / 1024:.1f} → {big['after']['VmRSS'] / 1024:.1f} MiB "
        f"({(big['after']['VmRSS'] - big['before']['VmRSS']) / 1024:+.1f}), "
        f"peak {big['before']['VmHWM'] / 1024:.1f} → {big['after']['VmHWM'] / 1024:.1f} MiB "
        f"({(big['after']['VmHWM'] - big['before']['VmHWM']) / 1024:+.1f})",
    ]


def queue_lines(queue: dict[str, Any]) -> list[str]:
    return [
        f"{queue['calls']} calls over {queue['queues']} queues, {queue['workers']} `gateway worker` processes "
        f"× {queue['concurrency']} slots, PostgreSQL",
        f"enqueued in {queue['enqueue_s']:.1f} s ({queue['calls'] / queue['enqueue_s']:,.0f}/s, runs.create_pending)",
        f"drained in {queue['drain_s']:.1f} s: {queue['calls_per_s']:,.0f} calls/s "
        f"(first start to last end), statuses {queue['statuses']}; "
        f"worker CPU {queue['worker_cpu_ms_per_call']:.2f} ms per call",
        f"order held: {queue['order_held']} ({queue['order_detail']})",
    ]
