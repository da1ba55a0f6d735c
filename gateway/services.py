"""What one gateway process holds: settings, database, specs, the shared HTTP client."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from sqlalchemy.engine import Engine

from . import plans, runs
from .crypto import Box, Signer
from .metrics import Metrics
from .plans import PlanBook
from .settings import Settings
from .specs import Registry
from .tokens import TokenStore


@contextlib.contextmanager
def _transport_errors(request: httpx.Request) -> Iterator[None]:
    """httpx-aiohttp turns every aiohttp connection error into ConnectTimeout: here only a timeout is a timeout."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        if isinstance(exc.__cause__, TimeoutError):
            raise
        error = httpx.ConnectError if isinstance(exc.__cause__, aiohttp.ClientConnectorError) else httpx.ReadError
        raise error(str(exc), request=request) from exc.__cause__
    except aiohttp.ClientError as exc:  # what it does not map, such as a malformed answer
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc


class _ErrorMappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self.stream, self.request = stream, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _transport_errors(self.request):
            async for chunk in self.stream:
                yield chunk

    async def aclose(self) -> None:
        with _transport_errors(self.request):
            await self.stream.aclose()


class _Transport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _transport_errors(request):
            response = await super().handle_async_request(request)
        response.stream = _ErrorMappedStream(response.stream, request)  # type: ignore[arg-type]
        return response


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout)
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=min(settings.upstream_max_connections, 50),
        keepalive_expiry=30,
    )

    def session() -> aiohttp.ClientSession:
        # aiohttp caps connections per pool, not idle ones: max_keepalive_connections has no equivalent.
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_max_connections,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=httpx.create_ssl_context(trust_env=False),
        )
        # One session serves every person's calls: an upstream's cookies must not reach the next caller.
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    # HTTPX's API on aiohttp's transport: HTTPX's own transport costs about twice the CPU per call and
    # slows as its pool grows (httpx #3215); see docs/benchmarks.md.
    return httpx.AsyncClient(
        transport=_Transport(limits=limits, trust_env=False, client=session),
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "integration-gateway"},
        # The same reason on HTTPX's side: a jar that accepts no cookie.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
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
    run_writer: runs.RunWriter = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.run_writer = runs.RunWriter(self.engine)

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
