"""Dashboard pages for the account's end users: search them, see each one's connections (status and
last error), revoke one, and make a connect link to send by hand."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import connect as oauth
from gateway.core import connect_sessions as sessions_core
from gateway.dashboard.web import action, field, page, redirect, render, services_of
from gateway.storage import connections, end_users
from gateway.storage.models import EndUser, User

PAGE = 50


def end_user_path(external_id: str) -> str:
    return f"/dashboard/end_users/{quote(external_id, safe='')}"


def _end_user(request: Request, user: User) -> EndUser:
    external_id = request.path_params["end_user_id"]
    found = (
        end_users.known(services_of(request).engine, user.id or 0, external_id)
        if end_users.valid_external_id(external_id)
        else None
    )
    if found is None:
        raise HTTPException(404, "There is no end user with that id in your account.")
    return found


@page
def end_users_page(request: Request, user: User) -> Response:
    services = services_of(request)
    query = request.query_params.get("q", "").strip()[:200] or None
    found = end_users.search(services.engine, user.id or 0, query, PAGE)
    counts = end_users.connection_counts(services.engine, [e.id or 0 for e in found])
    rows = [(e, counts.get(e.id or 0, 0), end_user_path(e.external_id)) for e in found]
    return render(request, "end_users.html", {"rows": rows, "q": query or "", "more": len(found) == PAGE})


def _detail(request: Request, user: User, end_user: EndUser, **extra: Any) -> Response:
    services = services_of(request)
    status = extra.pop("status", 200)
    mine = connections.list_for(services.engine, user.id or 0, end_user.id)
    names = {i.name: i.display_name for i in services.registry}
    rows = [(c, names.get(c.integration, c.integration)) for c in mine]
    context = {
        "done": None,
        "error": None,
        "link": None,
        "end_user": end_user,
        "rows": rows,
        "base": end_user_path(end_user.external_id),
        "integrations": list(services.registry),
        **extra,
    }
    return render(request, "end_user.html", context, status)


@page
def end_user_page(request: Request, user: User) -> Response:
    done = {"revoked": "The connection was revoked and deleted."}.get(request.query_params.get("done", ""))
    return _detail(request, user, _end_user(request, user), done=done)


@action
async def revoke(request: Request, user: User, form: FormData) -> Response:
    services = services_of(request)
    end_user = await services.db.run(lambda _engine: _end_user(request, user))
    public_id = request.path_params["connection_id"]
    found = await services.db.run(connections.by_public_id, user.id or 0, public_id)
    if found is None or found.end_user_id != end_user.id:
        raise HTTPException(404, "This end user has no such connection.")
    integration = services.registry.get(found.integration)
    if integration is not None:
        await oauth.revoke(services, integration, found)
    await services.db.run(connections.remove_connection, found)
    return redirect(f"{end_user_path(end_user.external_id)}?done=revoked")


@action
def connect_link(request: Request, user: User, form: FormData) -> Response:
    """A connect link for this end user, to send by hand (the page shows it once)."""
    services = services_of(request)
    end_user = _end_user(request, user)
    picked = [v for v in form.getlist("integrations") if isinstance(v, str)]
    if any(services.registry.get(name) is None for name in picked):
        return _detail(request, user, end_user, error="Choose integrations from the list.", status=400)
    created = sessions_core.start(
        services.engine,
        services.settings,
        user_id=user.id or 0,
        end_user_id=end_user.id or 0,
        api_key_id=None,
        integrations=sorted(set(picked)) or None,
        app_name=field(form, "app_name", 100).strip() or None,
    )
    return _detail(request, user, end_user, link=created.connect_url, link_expires=created.session.expires_at)


routes = [
    Route("/dashboard/end_users", end_users_page, methods=["GET"]),
    Route("/dashboard/end_users/{end_user_id:path}/connections/{connection_id}/revoke", revoke, methods=["POST"]),
    Route("/dashboard/end_users/{end_user_id:path}/connect_link", connect_link, methods=["POST"]),
    Route("/dashboard/end_users/{end_user_id:path}", end_user_page, methods=["GET"]),
]
