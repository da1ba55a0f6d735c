"""What one gateway process holds: settings, database, specs, the shared outbound client."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy.engine import Engine

from gateway.core import plans
from gateway.core.plans import PlanBook
from gateway.core.tokens import TokenStore
from gateway.crypto import Box, Signer
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.specs.registry import Registry
from gateway.storage import runs
from gateway.storage.batch import Batcher
from gateway.storage.database import Database
from gateway.storage.leases import Leases
from gateway.upstream.client import Client, UpstreamClient


@contextlib.asynccontextmanager
async def clients(settings: Settings) -> AsyncIterator[Client]:
    """The one outbound client of this process (gateway/upstream/client.py): upstream calls,
    token endpoints, lookups and callbacks all go through it and its egress rules."""
    client = Client(settings)
    try:
        yield client
    finally:
        await client.close()


@dataclasses.dataclass
class Services:
    settings: Settings
    db: Database
    registry: Registry
    box: Box
    tokens: TokenStore
    upstream: UpstreamClient
    signers: dict[str, Signer]
    plans: PlanBook = dataclasses.field(default_factory=lambda: PlanBook(dict(plans.BUILTIN), "free"))
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    engine: Engine = dataclasses.field(init=False)
    batcher: Batcher = dataclasses.field(init=False)
    leases: Leases = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.engine = self.db.engine
        self.batcher = self.db.batcher
        self.leases = Leases(self.db, dt.timedelta(seconds=self.settings.worker_lease_seconds))

    # Wakes this process's queue worker when a call is queued here (set by the worker).
    notify_queue: Callable[[], None] = lambda: None
    # Awaited with (services, run) when a queued or held run ends: waitpoints, metrics.
    run_finished_hooks: list[Callable[[Any, Any], Awaitable[None]]] = dataclasses.field(default_factory=list)

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine,
        registry: Registry,
        upstream: UpstreamClient,
    ) -> Services:
        from gateway.core.approvals import complete_waitpoint

        box = Box(settings.secret_keys)
        metrics = Metrics()
        metrics.watch_queue(lambda: runs.queue_depth(engine))
        database = Database(engine, settings.database_timeout)
        tokens = TokenStore(settings, database, box, upstream)
        tokens.on_refresh = lambda integration, result: metrics.refreshes.labels(integration, result).inc()
        services = cls(
            settings=settings,
            db=database,
            registry=registry,
            box=box,
            tokens=tokens,
            metrics=metrics,
            upstream=upstream,
            signers={},
            run_finished_hooks=[complete_waitpoint],
            plans=PlanBook(plans.load(settings.plans_file), settings.default_plan),
        )
        services.batcher.on_lost = metrics.run_rows_lost.inc
        services.leases.on_lost = metrics.run_rows_lost.inc
        return services

    def signer(self, purpose: str, max_age: int | None) -> Signer:
        if purpose not in self.signers:
            self.signers[purpose] = Signer(self.settings.secret_keys, purpose, max_age)
        return self.signers[purpose]
