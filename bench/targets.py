"""Issue #16's targets, each read from a run's figures: what was measured, and whether it passes.

Ratios and p50 differences are medians over the rounds of figures measured side by
side in each round, so a slow minute on a shared machine falls on both. A target whose
figures the run did not measure reads "not measured" and neither passes nor fails.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .load import Measurement
from .report import REFERENCE, REFERENCE_2, Spread, compare, grid

MB = 1_000_000
# The limit is on the gateway's processes; the others are the benchmark's.
GATEWAYS = ("gateway", "gateway-scale", "gateway-pg-2", "queue-gateway")
# "Flat with data": the data-scale gateway within what rounds of the same server differ by.
FLAT_RATIO = 0.9
FLAT_P50_MS = 0.1


@dataclasses.dataclass
class Target:
    name: str
    measured: str
    passed: bool | None  # None: not measured


def _ratio(spread: Spread) -> str:
    span = f" (rounds {spread.low:.2f}–{spread.high:.2f})" if spread.low != spread.high else ""
    return f"{spread.median:.2f}×{span}"


def _delta(spread: Spread) -> str:
    span = f" (rounds {spread.low:+.3f}…{spread.high:+.3f})" if spread.low != spread.high else ""
    return f"{spread.median:+.3f} ms{span}"


def _throughput(rounds: list[Measurement], name: str, target: str, reference: str, floor: float) -> Target:
    ratio, _ = compare(rounds, target, reference, 32)
    if ratio is None:
        return Target(name, "not measured", None)
    return Target(name, _ratio(ratio), ratio.median >= floor)


def _latency(rounds: list[Measurement], name: str, target: str, reference: str, ceiling: float) -> Target:
    _, delta = compare(rounds, target, reference, 1)
    if delta is None:
        return Target(name, "not measured", None)
    _, over_direct = compare(rounds, target, "direct", 1)
    extra = f"; {over_direct.median:+.3f} ms over direct" if over_direct is not None else ""
    return Target(name, _delta(delta) + extra, delta.median <= ceiling)


def evaluate(rounds: list[Measurement], rss: dict[str, dict[str, int]], extra: dict[str, Any]) -> list[Target]:
    out = [
        _throughput(
            rounds, f"gateway, 1 process, SQLite: ≥ 0.9× {REFERENCE} at 32 connections", "gateway", REFERENCE, 0.9
        ),
        _latency(rounds, f"gateway: ≤ +0.3 ms p50 over {REFERENCE} at 1 connection", "gateway", REFERENCE, 0.3),
        _throughput(
            rounds,
            f"gateway-pg-2, 2 processes, PostgreSQL: ≥ 0.7× {REFERENCE_2} at 32 connections",
            "gateway-pg-2",
            REFERENCE_2,
            0.7,
        ),
        _latency(
            rounds, f"gateway-pg-2: ≤ +0.6 ms p50 over {REFERENCE_2} at 1 connection", "gateway-pg-2", REFERENCE_2, 0.6
        ),
    ]

    queue = extra.get("queue")
    name = "queue drain on PostgreSQL, submission included: ≥ 1,500 calls/s, order held"
    if queue is None:
        out.append(Target(name, "not measured", None))
    else:
        span = f" (rounds {queue['calls_per_s_min']:,.0f}–{queue['calls_per_s_max']:,.0f})"
        held = "order held" if queue["order_held"] else "ORDER NOT HELD"
        measured = f"{queue['calls_per_s']:,.0f} calls/s{span}, {held}"
        out.append(Target(name, measured, queue["calls_per_s"] >= 1500 and queue["order_held"] and queue["finished"]))

    name = f"flat with data: gateway-scale ≥ {FLAT_RATIO}× gateway at 32, ≤ +{FLAT_P50_MS} ms p50 at 1"
    ratio, _ = compare(rounds, "gateway-scale", "gateway", 32)
    _, delta = compare(rounds, "gateway-scale", "gateway", 1)
    if ratio is None and delta is None:
        out.append(Target(name, "not measured", None))
    else:
        parts = [f"{_ratio(ratio)} at 32" if ratio else "32 not measured"]
        parts.append(f"{_delta(delta)} at 1" if delta else "1 not measured")
        passed = (ratio is None or ratio.median >= FLAT_RATIO) and (delta is None or delta.median <= FLAT_P50_MS)
        out.append(Target(name, "; ".join(parts), passed))

    name = "peak RSS < 200 MB (each gateway process)"
    peaks = {target: kib["VmHWM"] for target, kib in rss.items() if target in GATEWAYS and kib.get("VmHWM")}
    queue_memory = (queue or {}).get("memory_kib", {})
    if queue_memory.get("VmHWM"):
        peaks["queue-gateway"] = queue_memory["VmHWM"]
    if not peaks:
        out.append(Target(name, "not measured", None))
    else:
        largest = max(peaks.values())
        measured = ", ".join(f"{target} {kib * 1024 / MB:.0f} MB" for target, kib in peaks.items())
        out.append(Target(name, measured, largest * 1024 < 200 * MB))

    big = extra.get("big_responses")
    name = "a 50 MB answer grows the gateway by no more than the cap"
    if big is None:
        out.append(Target(name, "not measured", None))
    else:
        grew = big["peak_grew_kib"] * 1024
        measured = f"peak {grew / MB:+.1f} MB over {big['calls']} answers, cap {big['cap_bytes'] / MB:.1f} MB"
        out.append(Target(name, measured, big["capped"] and grew <= big["cap_bytes"]))
    return out


def render(results: list[Target], markdown: bool) -> str:
    def verdict(target: Target) -> str:
        return "—" if target.passed is None else ("pass" if target.passed else "FAIL")

    return grid(
        ["target", "measured", "met"], [[t.name, t.measured, verdict(t)] for t in results], markdown, left=(0, 1, 2)
    )
