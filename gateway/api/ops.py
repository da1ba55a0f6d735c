"""Operations routes: liveness, readiness and metrics."""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.callers import bearer
from gateway.errors import Unauthorized
from gateway.storage import database as db


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _revision(engine: Engine) -> str | None:
    with engine.connect() as c:
        c.execute(text("SELECT 1"))
    return db.current_revision(engine)


async def readyz(request: Request) -> Response:
    database: db.Database = request.app.state.services.db
    checks = {"database": "ok", "migrations": "ok"}
    try:
        revision = await database.run_unsettled(_revision)
        if revision != db.head_revision():
            checks["migrations"] = f"behind: at {revision}, head is {db.head_revision()}"
    except Exception as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
        checks["migrations"] = "unknown"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


async def metrics(request: Request) -> Response:
    services = request.app.state.services
    token = services.settings.metrics_token
    if token and not hmac.compare_digest((bearer(request) or "").encode(), token.encode()):
        raise Unauthorized("Send the metrics token as 'Authorization: Bearer ...'.")
    # Collecting reads the queue depth from the database: in a thread, like any database work.
    body = await services.db.run_unsettled(lambda _engine: generate_latest(services.metrics.registry))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
