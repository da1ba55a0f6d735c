"""create_app(): routes, middleware, error handlers and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
from collections.abc import AsyncIterator
from urllib.parse import unquote_to_bytes

from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import jsoncodec
from gateway.agents import mcp
from gateway.api import calls as api
from gateway.api import end_users as end_users_api
from gateway.api import ops
from gateway.api import proxy as proxy_api
from gateway.api import runs as runs_api
from gateway.api import tools as api_tools
from gateway.api import waitpoints as waitpoints_api
from gateway.api.middleware import RateLimitHeadersMiddleware
from gateway.core.runtime import Services, clients
from gateway.dashboard import integrations as dashboard
from gateway.dashboard import web
from gateway.errors import BadRequest, GatewayError, InternalError, MethodNotAllowed, NotFound, ServiceUnavailable
from gateway.logs import request_id_var
from gateway.settings import Settings
from gateway.specs import registry as spec_registry
from gateway.storage import database as db
from gateway.storage.models import random_hex
from gateway.workers.queue import Worker, sweeper

logger = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Takes a caller's X-Request-ID when it is well-formed, or makes one, and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What runs from here is the gateway's own work, which must keep database calls off the loop.
        serving = db.serving.set(True)
        try:
            await self._call(scope, receive, send)
        finally:
            db.serving.reset(serving)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if REQUEST_ID.match(given) else "req_" + random_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _unreadable(scope: Scope) -> str | None:
    """Which part of the address holds what no route can take: text that is not UTF-8 (or a lone
    surrogate, from a server that decodes with surrogateescape) or NUL, which no database text holds."""
    raw_path = scope.get("raw_path") or b""
    path: str = scope["path"]
    if "\x00" in path or jsoncodec.has_lone_surrogate(path) or (b"%" in raw_path and not _utf8(raw_path)):
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%" in query and (b"%00" in query or not _utf8(query.replace(b"+", b" "))):
        return "query string"
    return None


def _utf8(encoded: bytes) -> bool:
    try:
        unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class UnreadableAddressMiddleware:
    """Answers 400 for a path or query no route can read, before any route reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        part = _unreadable(scope) if scope["type"] == "http" else None
        if part is None:
            await self.app(scope, receive, send)
            return
        error = BadRequest(f"The {part} holds a NUL character or text that is not UTF-8.")
        response = await gateway_error(Request(scope, receive), error)
        await response(scope, receive, send)


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, error: GatewayError) -> Response:
    return JSONResponse(error.body(request_id(request)), status_code=error.status, headers=error.headers)


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if web.is_page(request.url.path):
        return await web.error_page(request, exc.status, exc.message)
    return error_response(request, exc)


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = {"Allow": allowed_methods(request)}
        if web.is_page(request.url.path):
            response = await web.error_page(request, 405, exc.detail)
            response.headers.update(allow)
            return response
        return error_response(request, MethodNotAllowed(f"{request.method} is not allowed here.", headers=allow))
    if web.is_page(request.url.path):
        return await web.error_page(request, exc.status_code, exc.detail)
    if exc.status_code == 404:
        return error_response(request, NotFound("There is nothing at this address."))
    error = GatewayError(exc.detail or "HTTP error")
    error.code, error.status = "bad_request", exc.status_code
    return error_response(request, error)


async def database_error(request: Request, exc: Exception) -> Response:
    logger.error("database error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    error = ServiceUnavailable(
        "The gateway's database is unreachable; nothing was changed. Retry shortly.", headers={"Retry-After": "5"}
    )
    if web.is_page(request.url.path):
        return await web.error_page(request, 503, error.message)
    return error_response(request, error)


async def server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    if web.is_page(request.url.path):
        return await web.error_page(request, 500)
    return error_response(request, InternalError("The gateway failed to handle this request."))


def create_app(settings: Settings, registry: spec_registry.Registry | None = None) -> Starlette:
    registry = registry if registry is not None else spec_registry.registry_for(settings)
    engine = db.make_engine(settings.database_url, settings.database_timeout)
    mcp_endpoint = mcp.McpEndpoint(settings, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db.serving.set(True)  # the tasks started here (workers, sweepers) inherit it
        if settings.migrate_on_start:
            await asyncio.to_thread(db.upgrade, engine)
        async with clients(settings) as upstream:
            services = Services.build(settings, engine, registry, upstream)
            app.state.services = services
            worker = None
            # Without a worker here, something must still time out waitpoints and approvals on time.
            sweeping = None if settings.worker_in_serve else asyncio.create_task(sweeper(services))
            checkpointing = asyncio.create_task(db.checkpoints(engine))
            if settings.worker_in_serve:
                worker = Worker(services, settings.worker_concurrency)
                services.notify_queue = worker.wake
                await worker.start()
            # Start-up leaves a few hundred thousand long-lived objects; without freezing them the
            # cyclic GC walks them all, pausing requests (docs/benchmarks.md).
            gc.collect()
            gc.freeze()
            try:
                async with mcp_endpoint.run():
                    yield
            finally:
                if worker is not None:
                    await worker.stop()
                await services.leases.close()
                if sweeping is not None:
                    sweeping.cancel()
                checkpointing.cancel()
                await services.db.aclose()
        engine.dispose()

    app = Starlette(
        # /v1/tools before api.routes, whose /v1/{integration} would take it.
        routes=[
            api.call_route,
            *api_tools.routes,
            *mcp_endpoint.routes,
            *ops.routes,
            *runs_api.routes,
            *waitpoints_api.routes,
            *end_users_api.routes,
            *proxy_api.routes,
            *api.routes,
            *dashboard.routes,
            Mount("/static", StaticFiles(directory=web.STATIC), name="static"),
        ],
        lifespan=lifespan,
        exception_handlers={
            GatewayError: gateway_error,
            DBAPIError: database_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
    app.add_middleware(UnreadableAddressMiddleware)
    app.add_middleware(web.PageHeadersMiddleware)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.state.settings = settings
    app.state.engine = engine
    app.state.registry = registry
    return app
