"""The reference proxies: Starlette and one shared HTTP client, doing no gateway work.

It reads the caller's body, GETs the upstream's /fast and answers its bytes: what any
Python proxy in front of an API must do at least. Served by uvicorn with the gateway's
own options (`python -m uvicorn bench.proxy:app`). BENCH_PROXY_CLIENT picks the client:
`aiohttp` (one bare aiohttp.ClientSession with the gateway's limits and timeouts: the
practical ceiling of forwarding in Python, the reference the targets are set against),
`gateway` (the gateway's outbound client, gateway/upstream/client.py on aiohttp, with
its egress screen: what forwarding alone costs the gateway) or `httpx` (an
httpx.AsyncClient with HTTPX's default transport, issue #9's reference).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.settings import Settings
from gateway.upstream import client as upstream_client
from gateway.upstream.build import request_for_url

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8001").rstrip("/")
CLIENT = os.environ.get("BENCH_PROXY_CLIENT", "aiohttp")

# The same timeouts and pool limits as the gateway's client.
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if CLIENT == "aiohttp":
        defaults = Settings(secret_keys=("bench",))
        connector = aiohttp.TCPConnector(
            limit=defaults.upstream_max_connections, limit_per_host=defaults.upstream_max_connections_per_host
        )
        timeout = aiohttp.ClientTimeout(
            total=defaults.upstream_total_timeout,
            sock_connect=defaults.upstream_connect_timeout,
            sock_read=defaults.upstream_timeout,
        )
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def forward_aiohttp() -> tuple[int, bytes]:
                async with session.get(f"{UPSTREAM}/fast") as upstream:
                    return upstream.status, await upstream.read()

            app.state.forward = forward_aiohttp
            yield
        return
    if CLIENT == "gateway":
        # The gateway's defaults, with loopback allowed and plain http, as the bench's gateway runs.
        settings = Settings(secret_keys=("bench",), allow_http_upstreams=True, egress_allow=("127.0.0.1/32",))
        client = upstream_client.Client(settings)
        app.state.forward = _forward_with(client)
        try:
            yield
        finally:
            await client.close()
        return
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, trust_env=False) as client:

        async def forward() -> tuple[int, bytes]:
            upstream = await client.get(f"{UPSTREAM}/fast")
            return upstream.status_code, upstream.content

        app.state.forward = forward
        yield


def _forward_with(client: upstream_client.Client):  # type: ignore[no-untyped-def]
    async def forward() -> tuple[int, bytes]:
        upstream = await client.send(request_for_url("GET", f"{UPSTREAM}/fast", {}), 10 * 1024 * 1024)
        return upstream.status, upstream.content

    return forward


async def proxy(request: Request) -> Response:
    await request.body()
    status, content = await request.app.state.forward()
    return Response(content, status_code=status, media_type="application/json")


app = Starlette(routes=[Route("/proxy", proxy, methods=["GET", "POST"])], lifespan=lifespan)
