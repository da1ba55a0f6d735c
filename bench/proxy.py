"""The reference proxy: Starlette and one shared httpx.AsyncClient, doing no gateway work.

It reads the caller's body, GETs the upstream's /fast and answers its bytes: what any
Python proxy in front of an API must do at least. Served by uvicorn with the gateway's
own options (`python -m uvicorn bench.proxy:app`). BENCH_PROXY_TRANSPORT picks the
client's transport: `httpx` (HTTPX's default, httpcore) or `aiohttp` (httpx-aiohttp).
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

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8001").rstrip("/")
TRANSPORT = os.environ.get("BENCH_PROXY_TRANSPORT", "httpx")

# The same timeouts and pool limits as the gateway's client.
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30)


def make_client() -> httpx.AsyncClient:
    transport = None
    if TRANSPORT == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=LIMITS, trust_env=False)
    return httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, transport=transport, trust_env=False)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with make_client() as client:
        app.state.client = client
        yield


async def proxy(request: Request) -> Response:
    await request.body()
    upstream = await request.app.state.client.get(f"{UPSTREAM}/fast")
    return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")


app = Starlette(routes=[Route("/proxy", proxy, methods=["GET", "POST"])], lifespan=lifespan)
