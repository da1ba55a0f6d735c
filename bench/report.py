"""The benchmark's table: each target's figures and, on gateway rows, the ratios to the references."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from .load import Measurement

# The practical ceiling of forwarding in Python, with one process and with two: every other
# target's ratio is to the one with as many processes.
REFERENCE = "proxy-aiohttp"
REFERENCE_2 = "proxy-aiohttp-2"
DIRECT = "direct"


def reference(target: str) -> str | None:
    if target in (DIRECT, REFERENCE):
        return None
    return REFERENCE_2 if target.endswith("-2") and target != REFERENCE_2 else REFERENCE


@dataclasses.dataclass
class Spread:
    """A figure measured once per round: its median and its range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        return cls(statistics.median(values), min(values), max(values)) if values else None


def compare(
    rounds: list[Measurement], target: str, other: str, connections: int
) -> tuple[Spread | None, Spread | None]:
    """`target` against `other`, round by round (each pair measured side by side): req/s ratio, p50 difference."""
    ours = {m.round: m for m in rounds if m.target == target and m.connections == connections}
    theirs = {m.round: m for m in rounds if m.target == other and m.connections == connections}
    common = sorted(set(ours) & set(theirs))
    ratios = [ours[r].rps / theirs[r].rps for r in common if theirs[r].rps]
    deltas = [ours[r].p50_ms - theirs[r].p50_ms for r in common]
    return Spread.of(ratios), Spread.of(deltas)


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


def _rounded(spread: Spread | None, digits: int) -> dict[str, float | None]:
    if spread is None:
        return {"median": None, "min": None, "max": None}
    return {"median": round(spread.median, digits), "min": round(spread.low, digits), "max": round(spread.high, digits)}


def rows(results: list[Measurement], rounds: list[Measurement] | None = None) -> list[dict[str, Any]]:
    """One row per measurement; with `rounds`, each target's req/s ratio and p50 difference to its
    reference, median and range over the rounds (`x_reference`, `p50_over_reference_ms`)."""
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
            "db_cpu_us": None if m.db_cpu_us is None else round(m.db_cpu_us),
            "others_cpu": None if m.others_cpu is None else round(m.others_cpu, 3),
            "reference": None,
            "x_reference": None,
            "p50_over_reference_ms": None,
            "p50_over_direct_ms": None,
        }
        other = reference(m.target)
        if other is not None and rounds is not None and _find(results, other, m.connections) is not None:
            ratio, delta = compare(rounds, m.target, other, m.connections)
            row.update(reference=other, x_reference=_rounded(ratio, 3), p50_over_reference_ms=_rounded(delta, 3))
        direct = _find(results, DIRECT, m.connections)
        if m.target != DIRECT and direct is not None:
            row["p50_over_direct_ms"] = round(m.p50_ms - direct.p50_ms, 3)
        if m.round:
            row["round"] = m.round
        out.append(row)
    return out


def ratio_text(spread: dict[str, float | None] | None) -> str:
    if not spread or spread["median"] is None:
        return ""
    if spread["min"] == spread["max"]:
        return f"{spread['median']:.2f}×"
    return f"{spread['median']:.2f}× ({spread['min']:.2f}–{spread['max']:.2f})"


def delta_text(spread: dict[str, float | None] | None) -> str:
    if not spread or spread["median"] is None:
        return ""
    if spread["min"] == spread["max"]:
        return f"{spread['median']:+.3f}"
    return f"{spread['median']:+.3f} ({spread['min']:+.3f}…{spread['max']:+.3f})"


def _optional(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def grid(header: list[str], lines: list[list[str]], markdown: bool, left: tuple[int, ...] = (1,)) -> str:
    """A table as Markdown or as aligned text; columns in `left` are text, the rest numbers."""
    if markdown:
        out = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" if i in left else "---:" for i in range(len(header))) + "|",
        ]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(cells) for cells in lines)])


def table(results: list[Measurement], rounds: list[Measurement] | None = None, markdown: bool = False) -> str:
    header = [
        "conns",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU µs/req",
        "DB CPU µs/req",
        "reference",
        "÷ reference req/s (rounds)",
        "p50 − reference ms (rounds)",
        "p50 − direct ms",
    ]
    lines = []
    for row in rows(sorted(results, key=lambda m: m.connections), rounds):
        lines.append(
            [
                str(row["connections"]),
                row["target"],
                f"{row['rps']:,.0f}",
                f"{row['p50_ms']:.3f}",
                f"{row['p99_ms']:.3f}",
                str(row["errors"]),
                _optional(row["cpu_us"], ",.0f"),
                _optional(row["db_cpu_us"], ",.0f"),
                row["reference"] or "",
                ratio_text(row["x_reference"]),
                delta_text(row["p50_over_reference_ms"]),
                _optional(row["p50_over_direct_ms"], "+.3f"),
            ]
        )
    return grid(header, lines, markdown, left=(1, 8))


def memory_lines(rss: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for name, kib in rss.items():
        several = kib.get("processes", 1) > 1
        which = f" (the largest of its {kib['processes']} processes)" if several else ""
        out.append(
            f"{name}: peak RSS (VmHWM) {kib.get('VmHWM', 0) / 1024:.1f} MiB, "
            f"RSS at the end {kib.get('VmRSS', 0) / 1024:.1f} MiB{which}"
        )
    return out


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


def _each_round(details: list[str]) -> str:
    return f"each round: {details[0]}" if len(set(details)) == 1 and len(details) > 1 else "; ".join(details)


def queue_lines(queue: dict[str, Any]) -> list[str]:
    rounds = queue["rounds"]
    spread = f" (rounds {queue['calls_per_s_min']:,.0f}–{queue['calls_per_s_max']:,.0f})" if len(rounds) > 1 else ""
    submitted = ", ".join(f"{r['submitted_s']:.1f}" for r in rounds)
    statuses: dict[str, int] = {}
    for r in rounds:
        for status, count in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return [
        f"queue drain on PostgreSQL, submission included: {queue['calls']:,} calls a round over {queue['queues']} "
        f"queues, POSTed to `gateway serve --workers {queue['processes']}` ({queue['concurrency']} worker slots "
        f"a process), {len(rounds)} round{'s' if len(rounds) > 1 else ''}",
        f"{queue['calls_per_s']:,.0f} calls/s from the first submission to the last run's end{spread}; "
        f"submissions took {submitted} s; gateway CPU {queue['cpu_ms_per_call']:.2f} ms per call, "
        f"PostgreSQL's {queue['db_cpu_ms_per_call']:.2f}; "
        f"statuses {statuses}",
        f"order held: {queue['order_held']} ({_each_round([r['order_detail'] for r in rounds])}); "
        f"run ids out of submission order: {queue['id_inversions']}",
    ]
