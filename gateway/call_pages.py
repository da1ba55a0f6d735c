"""Call history pages: this person's runs, newest first, filterable, and one page per run."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import history, keys, runs
from .models import User
from .runs import STATUSES
from .web import action, page, redirect, render, services_of


def _filters(request: Request) -> history.Filters:
    """Filters from the query string; a value that cannot match anything is dropped, not an error."""
    q = request.query_params
    key = q.get("key", "")
    status = q.get("status") or None
    return history.Filters(
        integration=(q.get("integration") or "")[:100] or None,
        endpoint=(q.get("endpoint") or "").strip()[:100] or None,
        status=status if status in STATUSES else None,
        key_id=int(key) if key.isascii() and key.isdigit() and len(key) < 12 else None,
    )


def _query(filters: history.Filters, **more: str) -> str:
    values = {
        "integration": filters.integration or "",
        "endpoint": filters.endpoint or "",
        "status": filters.status or "",
        "key": str(filters.key_id) if filters.key_id is not None else "",
        **more,
    }
    return urlencode({k: v for k, v in values.items() if v})


@page
async def calls_page(request: Request, user: User) -> Response:
    services = services_of(request)
    filters = _filters(request)
    before = (request.query_params.get("before") or "")[:40] or None
    runs, next_cursor = history.page(services, user.id or 0, filters, before)
    context = {
        "runs": runs,
        "filters": filters,
        "statuses": STATUSES,
        "integrations": list(services.registry),
        "keys": {k.id: k for k in keys.for_user(services.engine, user.id or 0)},
        "older": f"?{_query(filters, before=next_cursor)}" if next_cursor else None,
        "newest": f"?{_query(filters)}" if before else None,
    }
    return render(request, "calls.html", context)


@page
async def call_page(request: Request, user: User) -> Response:
    services = services_of(request)
    run = history.get(services, user.id or 0, request.path_params["run_id"][:40])
    if run is None:
        raise HTTPException(404, "There is no call with that id in your account.")
    key = keys.get_for_user(services.engine, user.id or 0, run.api_key_id) if run.api_key_id else None
    integration = services.registry.get(run.integration)
    context = {"run": run, "key": key, "integration": integration, "done": request.query_params.get("done")}
    return render(request, "call.html", context)


@action
async def cancel(request: Request, user: User, form: FormData) -> Response:
    """Removes a pending queued call; one that a worker already took keeps running."""
    services = services_of(request)
    run_id = request.path_params["run_id"][:40]
    if history.get(services, user.id or 0, run_id) is None:
        raise HTTPException(404, "There is no call with that id in your account.")
    removed = runs.cancel(services.engine, run_id, user.id or 0)
    return redirect(f"/dashboard/calls/{quote(run_id, safe='')}?done={'cancelled' if removed else 'not-cancelled'}")


routes = [
    Route("/dashboard/calls", calls_page, methods=["GET"]),
    Route("/dashboard/calls/{run_id}", call_page, methods=["GET"]),
    Route("/dashboard/calls/{run_id}/cancel", cancel, methods=["POST"]),
]
