"""The waitpoints page: this person's waitpoints (callbacks, connections, approvals) and their status."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import waitpoints
from .models import User
from .web import page, render, services_of

PAGE = 50


@page
async def waitpoints_page(request: Request, user: User) -> Response:
    services = services_of(request)
    status = request.query_params.get("status")
    before = (request.query_params.get("before") or "")[:48] or None
    found = waitpoints.search(
        services.engine,
        waitpoints.WaitFilter(
            user_id=user.id or 0,
            statuses=[status] if status in waitpoints.STATUSES else None,
            before_id=before,
            limit=PAGE + 1,
        ),
    )
    shown = found[:PAGE]
    older = None
    if len(found) > PAGE:
        older = f"?before={shown[-1].id}" + (f"&status={status}" if status in waitpoints.STATUSES else "")
    context = {
        "waitpoints": shown,
        "statuses": waitpoints.STATUSES,
        "status": status if status in waitpoints.STATUSES else None,
        "older": older,
    }
    return render(request, "waitpoints.html", context)


routes = [Route("/dashboard/waitpoints", waitpoints_page, methods=["GET"])]
