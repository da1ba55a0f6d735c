"""Prometheus metrics: calls, upstream latency, token refreshes and queue depth.

Each app has its own registry (tests run several apps in one process). With
`gateway serve --workers N`, every process reports its own counters; scrape
each process, or run one process per port behind the load balancer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _QueueDepth(Collector):
    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "gateway_queue_depth", "Queued calls by status (pending, running).", labels=["status"]
        )
        try:
            depth = self.read()
        except Exception:
            depth = {}
        for status in ("pending", "running"):
            gauge.add_metric([status], depth.get(status, 0))
        yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[object, Any] = {}
        self.calls = Counter(
            "gateway_calls_total",
            "Calls by integration, endpoint and outcome (ok, or the error code).",
            ["integration", "endpoint", "outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_latency_seconds",
            "Time from sending an upstream request to having its whole answer.",
            ["integration"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refreshes = Counter(
            "gateway_token_refreshes_total",
            "Token refreshes by integration and result (ok, invalid_grant, unavailable; lost: obtained, not stored).",
            ["integration", "result"],
            registry=self.registry,
        )
        self.run_rows_lost = Counter(
            "gateway_run_rows_lost_total",
            "Run rows of calls the upstream answered that could not be written (the database failed): "
            "direct calls' history rows, and results of queued or idempotent calls given up after retries.",
            registry=self.registry,
        )

    def count_call(self, integration: str, endpoint: str, outcome: str) -> None:
        # labels() takes a lock and builds its key on every call: the children are kept here.
        child = self._children.get((integration, endpoint, outcome))
        if child is None:
            child = self._children[(integration, endpoint, outcome)] = self.calls.labels(integration, endpoint, outcome)
        child.inc()

    def observe_upstream(self, integration: str, seconds: float) -> None:
        child = self._children.get(integration)
        if child is None:
            child = self._children[integration] = self.upstream_latency.labels(integration)
        child.observe(seconds)

    def watch_queue(self, read: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_QueueDepth(read))
