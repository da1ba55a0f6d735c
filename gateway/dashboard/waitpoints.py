"""Waitpoint pages: this person's waitpoints (callbacks, connections, approvals), one page each, and cancelling."""

from __future__ import annotations

import json

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import waitpoints
from gateway.dashboard.web import action, page, redirect, render, services_of
from gateway.storage.models import User, Waitpoint

PAGE = 50
MAX_SHOWN_OUTPUT = 20_000


@page
def waitpoints_page(request: Request, user: User) -> Response:
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


def _waitpoint(request: Request, user: User) -> Waitpoint:
    found = waitpoints.get(services_of(request).engine, request.path_params["waitpoint_id"][:48], user.id or 0)
    if found is None:
        raise HTTPException(404, "There is no waitpoint with that id in your account.")
    return found


def _shown(value: object) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= MAX_SHOWN_OUTPUT else text[:MAX_SHOWN_OUTPUT] + "\n… (cut here)"


@page
def waitpoint_page(request: Request, user: User) -> Response:
    waitpoint = _waitpoint(request, user)
    context = {
        "w": waitpoint,
        "output": _shown(waitpoint.output),
        "error": _shown(waitpoint.error),
        "cancellable": waitpoint.status == "WAITING" and waitpoint.kind in waitpoints.CANCELLABLE,
        "done": request.query_params.get("done"),
    }
    return render(request, "waitpoint.html", context)


@action
def cancel(request: Request, user: User, form: FormData) -> Response:
    waitpoint = _waitpoint(request, user)
    cancelled = waitpoints.cancel(services_of(request).engine, waitpoint.id, user.id or 0)
    return redirect(f"/dashboard/waitpoints/{waitpoint.id}?done={'cancelled' if cancelled else 'not-cancelled'}")


routes = [
    Route("/dashboard/waitpoints", waitpoints_page, methods=["GET"]),
    Route("/dashboard/waitpoints/{waitpoint_id}", waitpoint_page, methods=["GET"]),
    Route("/dashboard/waitpoints/{waitpoint_id}/cancel", cancel, methods=["POST"]),
]
