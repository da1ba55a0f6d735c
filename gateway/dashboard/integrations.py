"""Dashboard pages: integrations (connect, reconnect, disconnect), the OAuth callback, usage.

Keys, calls and approvals live in key_pages.py, call_pages.py and approval_pages.py,
accounts in accounts.py; `routes` gathers them all for create_app().
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import connect as oauth
from gateway.core import key_checks, limits
from gateway.dashboard import accounts, connect_page
from gateway.dashboard import approvals as approval_pages
from gateway.dashboard import calls as call_pages
from gateway.dashboard import end_users as end_user_pages
from gateway.dashboard import keys as key_pages
from gateway.dashboard import waitpoints as waitpoint_pages
from gateway.dashboard.web import (
    action,
    field,
    known_visitor,
    page,
    redirect,
    render,
    safe_next,
    services_of,
    visitor,
)
from gateway.errors import PlanLimitReached
from gateway.settings import env_name
from gateway.specs.spec import ApiKeyAuth, Integration, OAuth2Auth
from gateway.storage import connections, history, keys
from gateway.storage.models import Connection, User

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DONE_MESSAGES = {
    "connected": "Connected. Calls through the gateway can use this account now.",
    "disconnected": "Disconnected. The stored tokens were deleted.",
}


@dataclasses.dataclass(frozen=True)
class IntegrationStatus:
    integration: Integration
    connection: Connection | None
    problem: str | None

    @property
    def state(self) -> str:
        if self.connection is None:
            return "not_connected"
        return "connected" if self.connection.status == "connected" else "needs_reconnect"

    @property
    def granted_scopes(self) -> list[str]:
        raw = (self.connection.scopes if self.connection else None) or ""
        return [s for s in re.split(r"[\s,]+", raw) if s]


def integration_path(name: str) -> str:
    return f"/dashboard/integrations/{quote(name, safe='')}"


def _integration(request: Request) -> Integration:
    found = services_of(request).registry.get(request.path_params["name"])
    if found is None:
        raise HTTPException(404, "There is no integration with that name on this gateway.")
    return found


def _status(request: Request, integration: Integration, connection: Connection | None) -> IntegrationStatus:
    problem = oauth.missing_configuration(services_of(request).settings, integration)
    return IntegrationStatus(integration=integration, connection=connection, problem=problem)


@page
def home(request: Request, user: User) -> Response:
    return redirect("/dashboard/integrations")


@page
def integrations_page(request: Request, user: User) -> Response:
    services = services_of(request)
    mine = {c.integration: c for c in connections.list_for_user(services.engine, user.id or 0)}
    statuses = [_status(request, i, mine.get(i.name)) for i in services.registry]
    # What the person uses first, then what they could connect, then what this gateway has not set up.
    statuses.sort(key=lambda s: (s.connection is None, s.problem is not None))
    return render(request, "integrations.html", {"statuses": statuses})


def _integration_page(
    request: Request, user: User, integration: Integration, *, error: str | None = None, status: int = 200
) -> Response:
    services = services_of(request)
    connection = connections.get(services.engine, user.id or 0, integration.name)
    context: dict[str, Any] = {
        "status": _status(request, integration, connection),
        "integration": integration,
        "api_key_auth": integration.spec.auth if isinstance(integration.spec.auth, ApiKeyAuth) else None,
        "reconnect": request.query_params.get("reconnect") == "1",
        "next": safe_next(request.query_params.get("next"), default=""),
        "done": DONE_MESSAGES.get(request.query_params.get("done", "")),
        "error": error,
        "callback_url": oauth.callback_url(services.settings, integration.name),
    }
    return render(request, "integration.html", context, status)


@page
def integration_page(request: Request, user: User) -> Response:
    return _integration_page(request, user, _integration(request))


@page
def setup_page(request: Request, user: User) -> Response:
    """What the operator must do before anyone can connect an OAuth integration (the action_url of
    `integration_not_connected` when it is not set up)."""
    integration = _integration(request)
    auth = integration.spec.auth
    if not isinstance(auth, OAuth2Auth):
        raise HTTPException(404, f"{integration.display_name} needs no setup: each person pastes their own key.")
    settings = services_of(request).settings
    context = {
        "integration": integration,
        "auth": auth,
        "problem": oauth.missing_configuration(settings, integration),
        "callback_url": oauth.callback_url(settings, integration.name),
        "variables": [env_name(integration.name, field) for field in ("CLIENT_ID", "CLIENT_SECRET")],
    }
    return render(request, "setup.html", context)


@action
async def connect(request: Request, user: User, form: FormData) -> Response:
    services = services_of(request)
    integration = _integration(request)
    next_path = safe_next(field(form, "next", 2000), default="")

    async def again(error: str, status: int) -> Response:
        return await services.db.run(
            lambda _engine: _integration_page(request, user, integration, error=error, status=status)
        )

    try:
        fields = connect_page.connection_fields(integration, form)
    except ValueError as exc:
        return await again(str(exc), 400)
    try:
        plan = services.plans.get(user.plan)
        await services.db.run(limits.ensure_can_connect, services.settings, plan, user.id or 0, integration.name)
    except PlanLimitReached as exc:
        return await again(exc.message, 403)
    auth = integration.spec.auth
    if isinstance(auth, ApiKeyAuth):
        secret = field(form, "secret", 5000).strip()
        if not secret or len(secret) > 4096 or CONTROL.search(secret):
            return await again(f"Paste your {auth.label}.", 400)
        if not secret.isascii():
            # A key copied from a document can pick up typographic quotes or non-breaking spaces.
            return await again(
                f"This {auth.label} holds characters no key has (quotes, special spaces?); paste it again.", 400
            )
        try:
            await key_checks.check(services, integration, secret, fields or None)
        except oauth.ConnectError as exc:
            return await again(exc.message, exc.status)
        await services.db.run(
            oauth.store,
            services.box,
            user_id=user.id or 0,
            integration=integration.name,
            access_token=secret,
            token_type=None,
            # The last four characters tell two keys apart without revealing either.
            account=f"…{secret[-4:]}" if len(secret) >= 16 else None,
            extra=fields or None,
        )
        return redirect(next_path or f"{integration_path(integration.name)}?done=connected")
    problem = oauth.missing_configuration(services.settings, integration)
    if problem:
        return await again(problem, 400)
    session_id = visitor(request).session_id
    assert session_id is not None  # @action only lets signed-in sessions through
    url = await oauth.begin(
        services, integration, user_id=user.id or 0, session_id=session_id, next_path=next_path or None, fields=fields
    )
    return redirect(url)


@action
async def disconnect(request: Request, user: User, form: FormData) -> Response:
    services = services_of(request)
    integration = _integration(request)
    connection = await services.db.run(connections.get, user.id or 0, integration.name)
    if connection is not None:
        await oauth.revoke(services, integration, connection)
        await services.db.run(connections.remove, user.id or 0, integration.name)
    return redirect(f"{integration_path(integration.name)}?done=disconnected")


async def callback(request: Request) -> Response:
    """Where the provider sends the browser back. Only a stored, unused state of this session counts."""
    integration = _integration(request)
    services = services_of(request)
    found = await known_visitor(request)
    binding = connect_page.binding(request)
    session_ids = [s for s in (found.session_id, binding.browser if binding else None) if s]
    try:
        connection, next_path = await oauth.complete(
            services, integration, session_ids=session_ids, params=request.query_params
        )
    except oauth.ConnectError as exc:
        if binding is not None:
            # A connect session's flow: its own page explains, in the end user's terms.
            return await connect_page.failed(request, integration, exc.message, exc.status)
        context = {"integration": integration, "message": exc.message}
        return render(request, "connect_error.html", context, exc.status)
    if connection.end_user_id is not None:
        return redirect(connect_page.done_path(connection))
    return redirect(safe_next(next_path, default=f"{integration_path(integration.name)}?done=connected"))


@page
def usage_page(request: Request, user: User) -> Response:
    services = services_of(request)
    user_id = user.id or 0
    runs_by_key = history.calls_today_by_key(services.engine, user_id)
    # limits.py counts what the limits enforce (calls the gateway turned away are refunded);
    # the run counts are everything that was asked.
    key_rows = [
        (k, runs_by_key.get(k.id or 0, 0), limits.used_today(services.engine, limits.key_subject(k.id)))
        for k in keys.active_for_user(services.engine, user_id)
    ]
    context = {
        "calls_today": history.calls_today(services.engine, user_id),
        "connections": history.connections_count(services.engine, user_id),
        "keys": key_rows,
        "plan": services.plans.get(user.plan),
        "plan_known": services.plans.known(user.plan),
        "plan_calls": limits.used_today(services.engine, limits.user_subject(user_id)),
        "day_started": history.utc_midnight(),
        "resets": limits.next_reset(),
    }
    return render(request, "usage.html", context)


routes = [
    Route("/", home, methods=["GET"]),
    Route("/dashboard", home, methods=["GET"]),
    *accounts.routes,
    Route("/dashboard/integrations", integrations_page, methods=["GET"]),
    Route("/dashboard/integrations/{name}", integration_page, methods=["GET"]),
    Route("/dashboard/integrations/{name}/setup", setup_page, methods=["GET"]),
    Route("/dashboard/integrations/{name}/connect", connect, methods=["POST"]),
    Route("/dashboard/integrations/{name}/disconnect", disconnect, methods=["POST"]),
    Route("/oauth/{name}/callback", callback, methods=["GET"]),
    *key_pages.routes,
    *call_pages.routes,
    *approval_pages.routes,
    *waitpoint_pages.routes,
    Route("/dashboard/usage", usage_page, methods=["GET"]),
    *connect_page.routes,
    *end_user_pages.routes,
]
