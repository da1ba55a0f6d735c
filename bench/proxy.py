"""The reference proxy: Starlette and one shared httpx.AsyncClient, doing no gateway work.

It reads the caller's body, GETs the upstream's /fast and answers its bytes: what any
Python proxy in front of an API must do at least. Served by uvicorn with the gateway's
own options (`python -m uvicorn bench.proxy:app`). BENCH_PROXY_CLIENT picks the client:
`httpx` (an httpx.AsyncClient with HTTPX's default transport: the reference the targets
are set against) or `gateway` (the gateway's outbound client, gateway/upstream/client.py
on aiohttp, with its egress screen: what forwarding alone costs the gateway).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.settings import Settings
from gateway.upstream import client as upstream_client
from gateway.upstream.build import request_for_url

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8001").rstrip("/")
CLIENT = os.environ.get("BENCH_PROXY_CLIENT", "httpx")

# The same timeouts and pool limits as the gateway's client.
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
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
