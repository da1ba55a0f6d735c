"""Call history pages: this person's runs, newest first, filterable, and one page per run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from urllib.parse import quote, urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dashboard.web import action, page, redirect, render, services_of
from gateway.storage import history, keys, runs
from gateway.storage.models import User
from gateway.storage.runs import STATUSES

# What the filter form's date and time fields send (HTML datetime-local), or a typed ISO date or time.
TIME = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?(Z|[+-]\d{2}:\d{2})?")
RUN_ID = re.compile(r"[A-Za-z0-9_]{1,40}")


def parse_time(value: str, *, end: bool = False) -> dt.datetime | None:
    """A date or time from the filter form, UTC unless it says otherwise; None when it is not one.
    An end includes all of what it names: "to 2026-03-04" takes that whole day, "to 12:30" that minute."""
    match = TIME.fullmatch(value)
    if match is None:
        return None
    _, hour, _, second, fraction, _ = match.groups()
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        if not end:
            return parsed
        if hour is None:
            return parsed + dt.timedelta(days=1)
        if second is None:
            return parsed + dt.timedelta(minutes=1)
        return parsed + dt.timedelta(microseconds=10 ** (6 - len(fraction or "")))
    except (ValueError, OverflowError):
        return None


@dataclasses.dataclass(frozen=True)
class CallQuery:
    """The calls page's query string: the filters it could use, what was typed, and what it could not read."""

    filters: history.Filters
    typed: dict[str, str]
    unreadable: list[str]


def _query_of(request: Request) -> CallQuery:
    """A value that cannot match anything is dropped, not an error; a time that cannot be read is said so."""
    q = request.query_params
    key = q.get("key", "")
    status = q.get("status") or None
    typed = {name: (q.get(name) or "").strip()[:40] for name in ("from", "to", "run")}
    since = parse_time(typed["from"]) if typed["from"] else None
    until = parse_time(typed["to"], end=True) if typed["to"] else None
    run_id = typed["run"] if RUN_ID.fullmatch(typed["run"]) else None
    unreadable = [
        label
        for label, name, value in (("From", "from", since), ("To", "to", until), ("Run id", "run", run_id))
        if typed[name] and value is None
    ]
    filters = history.Filters(
        integration=(q.get("integration") or "")[:100] or None,
        endpoint=(q.get("endpoint") or "").strip()[:100] or None,
        status=status if status in STATUSES else None,
        key_id=int(key) if key.isascii() and key.isdigit() and len(key) < 12 else None,
        since=since,
        until=until,
        run_id=run_id,
    )
    return CallQuery(filters, typed, unreadable)


def _query(query: CallQuery, **more: str) -> str:
    filters = query.filters
    values = {
        "integration": filters.integration or "",
        "endpoint": filters.endpoint or "",
        "status": filters.status or "",
        "key": str(filters.key_id) if filters.key_id is not None else "",
        "from": query.typed["from"] if filters.since else "",
        "to": query.typed["to"] if filters.until else "",
        "run": filters.run_id or "",
        **more,
    }
    return urlencode({k: v for k, v in values.items() if v})


@page
def calls_page(request: Request, user: User) -> Response:
    services = services_of(request)
    query = _query_of(request)
    before = (request.query_params.get("before") or "")[:40] or None
    runs, next_cursor = history.page(services.engine, user.id or 0, query.filters, before)
    context = {
        "runs": runs,
        "filters": query.filters,
        "typed": query.typed,
        "unreadable": query.unreadable,
        "statuses": STATUSES,
        "integrations": list(services.registry),
        "keys": {k.id: k for k in keys.for_user(services.engine, user.id or 0)},
        "older": f"?{_query(query, before=next_cursor)}" if next_cursor else None,
        "newest": f"?{_query(query)}" if before else None,
    }
    return render(request, "calls.html", context)


@page
def call_page(request: Request, user: User) -> Response:
    services = services_of(request)
    run = history.get(services.engine, user.id or 0, request.path_params["run_id"][:40])
    if run is None:
        raise HTTPException(404, "There is no call with that id in your account.")
    key = keys.get_for_user(services.engine, user.id or 0, run.api_key_id) if run.api_key_id else None
    integration = services.registry.get(run.integration)
    context = {"run": run, "key": key, "integration": integration, "done": request.query_params.get("done")}
    return render(request, "call.html", context)


@action
def cancel(request: Request, user: User, form: FormData) -> Response:
    """Removes a pending queued call; one that a worker already took keeps running."""
    services = services_of(request)
    run_id = request.path_params["run_id"][:40]
    if history.get(services.engine, user.id or 0, run_id) is None:
        raise HTTPException(404, "There is no call with that id in your account.")
    removed = runs.cancel(services.engine, run_id, user.id or 0)
    return redirect(f"/dashboard/calls/{quote(run_id, safe='')}?done={'cancelled' if removed else 'not-cancelled'}")


routes = [
    Route("/dashboard/calls", calls_page, methods=["GET"]),
    Route("/dashboard/calls/{run_id}", call_page, methods=["GET"]),
    Route("/dashboard/calls/{run_id}/cancel", cancel, methods=["POST"]),
]
