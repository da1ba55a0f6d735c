"""What one gateway process holds: settings, database, specs, the shared HTTP client."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from . import plans, runs
from .crypto import Box, Signer
from .metrics import Metrics
from .plans import PlanBook
from .settings import Settings
from .specs import Registry
from .tokens import TokenStore


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout)
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=min(settings.upstream_max_connections, 50),
        keepalive_expiry=30,
    )
    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "integration-gateway"},
    )


@dataclasses.dataclass
class Services:
    settings: Settings
    engine: Engine
    registry: Registry
    box: Box
    tokens: TokenStore
    http: httpx.AsyncClient
    signers: dict[str, Signer]
    plans: PlanBook = dataclasses.field(default_factory=lambda: PlanBook(dict(plans.BUILTIN), "free"))
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    # Wakes this process's queue worker when a call is queued here (set by the worker).
    notify_queue: Callable[[], None] = lambda: None
    # Awaited with (services, run) when a queued or held run ends: waitpoints, metrics.
    run_finished_hooks: list[Callable[[Any, Any], Awaitable[None]]] = dataclasses.field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, engine: Engine, registry: Registry, http: httpx.AsyncClient) -> Services:
        from .approvals import complete_waitpoint

        box = Box(settings.secret_keys)
        metrics = Metrics()
        metrics.watch_queue(lambda: runs.queue_depth(engine))
        tokens = TokenStore(settings, engine, box)
        tokens.on_refresh = lambda integration, result: metrics.refreshes.labels(integration, result).inc()
        return cls(
            settings=settings,
            engine=engine,
            registry=registry,
            box=box,
            tokens=tokens,
            metrics=metrics,
            http=http,
            signers={},
            run_finished_hooks=[complete_waitpoint],
            plans=PlanBook(plans.load(settings.plans_file), settings.default_plan),
        )

    def signer(self, purpose: str, max_age: int | None) -> Signer:
        if purpose not in self.signers:
            self.signers[purpose] = Signer(self.settings.secret_keys, purpose, max_age)
        return self.signers[purpose]
