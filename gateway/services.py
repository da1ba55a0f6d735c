"""What one gateway process holds: settings, database, specs, the shared HTTP client."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from . import http_client, plans, runs
from .batch import Batcher
from .crypto import Box, Signer
from .leases import Leases
from .metrics import Metrics
from .plans import PlanBook
from .settings import Settings
from .specs import Registry
from .tokens import TokenStore


def make_upstream_client(settings: Settings) -> http_client.Client:
    """The client every proxied call goes through (see http_client for why it is its own)."""
    return http_client.Client(
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_timeout,
        max_connections=settings.upstream_max_connections,
        ssl_context=httpx.create_ssl_context(trust_env=False),
    )


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    """HTTPX for the gateway's own requests off the hot path: signed callbacks."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "integration-gateway"},
        # One client serves every person's callbacks: a receiver's cookies must not reach the next one.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


@contextlib.asynccontextmanager
async def clients(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, http_client.Client]]:
    async with make_http_client(settings) as http, make_upstream_client(settings) as upstream:
        yield http, upstream


@dataclasses.dataclass
class Services:
    settings: Settings
    engine: Engine
    registry: Registry
    box: Box
    tokens: TokenStore
    http: httpx.AsyncClient
    upstream: http_client.Client
    signers: dict[str, Signer]
    plans: PlanBook = dataclasses.field(default_factory=lambda: PlanBook(dict(plans.BUILTIN), "free"))
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    batcher: Batcher = dataclasses.field(init=False)
    leases: Leases = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.engine)
        self.leases = Leases(self.engine, dt.timedelta(seconds=self.settings.worker_lease_seconds))

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
        http: httpx.AsyncClient,
        upstream: http_client.Client,
    ) -> Services:
        from .approvals import complete_waitpoint

        box = Box(settings.secret_keys)
        metrics = Metrics()
        metrics.watch_queue(lambda: runs.queue_depth(engine))
        tokens = TokenStore(settings, engine, box)
        tokens.on_refresh = lambda integration, result: metrics.refreshes.labels(integration, result).inc()
        services = cls(
            settings=settings,
            engine=engine,
            registry=registry,
            box=box,
            tokens=tokens,
            metrics=metrics,
            http=http,
            upstream=upstream,
            signers={},
            run_finished_hooks=[complete_waitpoint],
            plans=PlanBook(plans.load(settings.plans_file), settings.default_plan),
        )
        services.batcher.on_lost = metrics.run_rows_lost.inc
        services.leases.on_lost = metrics.run_rows_lost.inc
        return services

    def settled_engine(self) -> Engine:
        """The engine, once this process's pending run rows and refunds are committed: what reads
        them back uses it, so a call shows the moment it is answered (its row otherwise follows
        by up to 2 ms, gateway/batch.py)."""
        self.batcher.flush()
        return self.engine

    def signer(self, purpose: str, max_age: int | None) -> Signer:
        if purpose not in self.signers:
            self.signers[purpose] = Signer(self.settings.secret_keys, purpose, max_age)
        return self.signers[purpose]
