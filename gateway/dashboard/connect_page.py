"""The hosted connect page: where an owner's end user connects their own accounts, with no login.

`GET /connect?token=cs_...` (the session's `connect_url`) shows a Continue button; pressing it (a
POST, so that a link preview fetching the URL claims nothing) binds the session to this browser
with a cookie and moves to `/connect`, so the token leaves the address bar. Opened as a popup by
`/static/connect.js` (`&popup=1`), the binding is made at once. The page lists the
integrations the session allows, each with the end user's connections to it; its buttons run the
OAuth flow (state bound to this browser's binding, PKCE) or take a pasted key. Once an account is
connected the session ends: the browser goes to the session's `redirect_url` with
`connection_id`, `integration` and `status`, or, opened as a popup by `/static/connect.js`, the
page posts the same to its opener (on an allowed origin only) and closes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import connect as oauth
from gateway.core import connect_sessions as sessions_core
from gateway.core import key_checks, limits
from gateway.dashboard.web import checked_form, cookie_name, field, redirect, render, services_of
from gateway.errors import PlanLimitReached
from gateway.specs.spec import ApiKeyAuth, Integration
from gateway.storage import connect_sessions, connections, end_users, keys
from gateway.storage.models import Connection, ConnectSession, EndUser

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
COOKIE = "gateway_connect"
HOME = "/connect"


@dataclasses.dataclass(frozen=True)
class Binding:
    """What this browser holds for a connect session: its token, and the SHA-256 of the secret that
    bound the session to this browser (also what the OAuth state is bound to)."""

    token: str
    browser: str
    popup: bool


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def binding(request: Request) -> Binding | None:
    raw = request.cookies.get(cookie_name(services_of(request).settings, COOKIE), "")
    token, _, rest = raw.partition(".")
    secret, _, mode = rest.partition(".")
    if not token.startswith(connect_sessions.PREFIX) or len(token) > 100 or not secret or len(secret) > 100:
        return None
    return Binding(token=token, browser=_hash(secret), popup=mode == "p")


def done_path(connection: Connection) -> str:
    return f"{HOME}/done?" + urlencode({"connection": connection.public_id})


@dataclasses.dataclass
class Opened:
    session: ConnectSession
    end_user: EndUser
    allowed: list[Integration]
    popup: bool


def _opened(request: Request, found: Binding | None) -> Opened | None:
    """The live session this browser is bound to (in a database thread), or None."""
    if found is None:
        return None
    services = services_of(request)
    session = connect_sessions.by_token(services.engine, found.token)
    if session is None or session.browser is None or not secrets.compare_digest(session.browser, found.browser):
        return None
    end_user = end_users.by_id(services.engine, session.end_user_id)
    if end_user is None:
        return None
    key = keys.by_id(services.engine, session.api_key_id) if session.api_key_id else None
    names = sessions_core.allowed(services, session, key)
    allowed = [i for i in services.registry if i.name in names]
    return Opened(session=session, end_user=end_user, allowed=allowed, popup=found.popup)


def _gone(request: Request, message: str, status: int = 410) -> Response:
    context = {"title": "This connect link cannot be used", "message": message, "app_name": None}
    return render(request, "connect_gone.html", context, status)


def _page(request: Request, opened: Opened, *, error: str | None = None, status: int = 200) -> Response:
    services = services_of(request)
    mine = connections.list_for(services.engine, opened.session.user_id, opened.end_user.id, None)
    rows = []
    for integration in opened.allowed:
        rows.append(
            {
                "integration": integration,
                "connections": [c for c in mine if c.integration == integration.name],
                "api_key_auth": integration.spec.auth if isinstance(integration.spec.auth, ApiKeyAuth) else None,
                "problem": oauth.missing_configuration(services.settings, integration),
            }
        )
    context = {
        "app_name": opened.session.app_name or "This app",
        "rows": rows,
        "error": error,
        "expires_at": opened.session.expires_at,
    }
    return render(request, "connect.html", context, status)


async def open_link(request: Request) -> Response:
    """`GET /connect`: with `?token=`, bind the session to this browser; without, show the page."""
    services = services_of(request)
    token = request.query_params.get("token")
    if token is None:
        found = binding(request)

        def show(_engine: Any) -> Response:
            opened = _opened(request, found)
            if opened is None:
                return _gone(request, "Open the connect link the app gave you again; this one has expired.")
            return _page(request, opened)

        return await services.db.run(show)
    popup = request.query_params.get("popup") == "1"
    if not popup:
        # A link sent by chat or email is often fetched first by a preview bot: a GET must not claim
        # the session for whoever fetched it. The person presses Continue (a POST) in their browser.
        return await services.db.run(lambda _engine: _continue_page(request, token))
    return await services.db.run(lambda _engine: _bind(request, token, popup=True))


def _continue_page(request: Request, token: str) -> Response:
    session = connect_sessions.by_token(services_of(request).engine, token)
    if session is None:
        return _gone(request, "This connect link has expired or was already used. Ask the app for a new one.")
    held = binding(request)
    if session.browser is not None and held is not None and held.token == token:
        return redirect(HOME)  # this browser already holds it
    context = {"app_name": session.app_name or "This app", "token": token}
    return render(request, "connect_continue.html", context)


async def claim(request: Request) -> Response:
    """`POST /connect/open`: the person's Continue binds the session to their browser."""
    services = services_of(request)
    form = await checked_form(request)
    token = field(form, "token", 200)
    return await services.db.run(lambda _engine: _bind(request, token, popup=False))


def _bind(request: Request, token: str, *, popup: bool) -> Response:
    """Binds the session to this browser (a cookie), or refuses when another browser holds it."""
    services = services_of(request)
    session = connect_sessions.by_token(services.engine, token)
    if session is None:
        return _gone(request, "This connect link has expired or was already used. Ask the app for a new one.")
    held = binding(request)
    if session.browser is not None:
        # The same browser opening its link again keeps going; any other is refused.
        if held is None or held.token != token or not secrets.compare_digest(held.browser, session.browser):
            return _gone(request, "This connect link was already opened in another browser.", 409)
        secret = None
    else:
        secret = secrets.token_urlsafe(24)
        if not connect_sessions.bind_browser(services.engine, session, _hash(secret)):
            return _gone(request, "This connect link was already opened in another browser.", 409)
    response = redirect(HOME)
    if secret is not None:
        seconds = max(int((session.expires_at - session.created_at).total_seconds()), 60)
        response.set_cookie(
            cookie_name(services.settings, COOKIE),
            f"{token}.{secret}.{'p' if popup else 'w'}",
            max_age=seconds,
            httponly=True,
            samesite="lax",
            secure=services.settings.public_https,
        )
    return response


def connection_fields(integration: Integration, form: FormData) -> dict[str, str]:
    """What a connect form gives for the spec's `connection_fields`, checked (a ValueError says which)."""
    values: dict[str, str] = {}
    for name, label in integration.spec.connection_fields.items():
        value = field(form, f"field_{name}", 2000).strip()
        if not value or len(value) > 500 or CONTROL.search(value):
            raise ValueError(f"Fill in “{label}” (up to 500 characters).")
        values[name] = value
    return values


async def connect(request: Request) -> Response:
    """`POST /connect/{name}`: a pasted key, stored at once, or the start of the OAuth flow."""
    services = services_of(request)
    form = await checked_form(request)
    found = binding(request)
    opened = await services.db.run(lambda _engine: _opened(request, found))
    if opened is None or found is None:
        return await services.db.run(
            lambda _engine: _gone(request, "This connect link has expired. Ask the app for a new one.")
        )
    integration = next((i for i in opened.allowed if i.name == request.path_params["name"]), None)

    async def again(message: str, status: int = 400) -> Response:
        return await services.db.run(lambda _engine: _page(request, opened, error=message, status=status))

    if integration is None:
        return await again("This link does not allow connecting that integration.", 403)
    reconnect = field(form, "connection", 100) or None
    if reconnect is not None and not await services.db.run(
        lambda engine: any(
            c.public_id == reconnect
            for c in connections.list_for(engine, opened.session.user_id, opened.end_user.id, integration.name)
        )
    ):
        return await again("That connection is not one of yours any more.", 409)
    try:
        fields = connection_fields(integration, form)
    except ValueError as exc:
        return await again(str(exc))
    try:
        await services.db.run(
            lambda engine: limits.ensure_end_user_can_connect(
                engine,
                services.settings,
                services.plans.for_user(engine, opened.session.user_id),
                opened.session.user_id,
                opened.end_user.id or 0,
                reconnect is not None,
            )
        )
    except PlanLimitReached as exc:
        return await again(exc.message, 403)
    auth = integration.spec.auth
    if isinstance(auth, ApiKeyAuth):
        secret = field(form, "secret", 5000).strip()
        if not secret or len(secret) > 4096 or CONTROL.search(secret) or not secret.isascii():
            return await again(f"Paste your {auth.label} (it holds no spaces or special characters).")
        try:
            await key_checks.check(services, integration, secret, fields or None)
        except oauth.ConnectError as exc:
            return await again(exc.message, exc.status)
        try:
            connection = await services.db.run(
                oauth.store,
                services.box,
                end_user=opened.end_user,
                public_id=reconnect,
                user_id=opened.session.user_id,
                integration=integration.name,
                access_token=secret,
                token_type=None,
                account=f"…{secret[-4:]}" if len(secret) >= 16 else None,
                extra=fields or None,
            )
        except LookupError:
            return await again("That connection was deleted meanwhile; connect again.", 409)
        return redirect(done_path(connection))
    problem = oauth.missing_configuration(services.settings, integration)
    if problem:
        return await again(f"{integration.display_name} cannot be connected on this gateway yet.", 503)
    url = await oauth.begin(
        services,
        integration,
        user_id=opened.session.user_id,
        session_id=found.browser,
        next_path=None,
        fields=fields,
        end_user_id=opened.end_user.id,
        connection_id=reconnect,
    )
    return redirect(url)


async def failed(request: Request, integration: Integration, message: str, status: int) -> Response:
    """The OAuth flow of a connect session stopped: the page again, saying why, to try again."""
    services = services_of(request)
    found = binding(request)

    def show(_engine: Any) -> Response:
        opened = _opened(request, found)
        if opened is None:
            return _gone(request, f"{message} This connect link has expired meanwhile; ask the app for a new one.")
        return _page(request, opened, error=message, status=status)

    return await services.db.run(show)


def _with_params(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit(parts._replace(query=query))


async def done(request: Request) -> Response:
    """After a connect: the session ends, and the app learns which connection was made."""
    services = services_of(request)
    found = binding(request)
    public_id = request.query_params.get("connection", "")

    def finish(engine: Any) -> Response:
        opened = _opened(request, found)
        if opened is None:
            return _gone(
                request, "Your account was connected, but this connect link has expired: return to the app.", 200
            )
        connection = connections.by_public_id(engine, opened.session.user_id, public_id)
        if connection is None or connection.end_user_id != opened.end_user.id:
            return _gone(request, "There is no such connection for this link.", 404)
        connect_sessions.end(engine, opened.session)
        result = {"connection_id": connection.public_id, "integration": connection.integration, "status": "connected"}
        if opened.session.redirect_url and not opened.popup:
            response = redirect(_with_params(opened.session.redirect_url, result))
        else:
            integration = services.registry.get(connection.integration)
            context = {
                "app_name": opened.session.app_name or "This app",
                "result": result,
                "display_name": integration.display_name if integration else connection.integration,
                "origins": " ".join(opened.session.allowed_origins or []) if opened.popup else "",
                "redirect_url": _with_params(opened.session.redirect_url, result)
                if opened.session.redirect_url
                else None,
            }
            response = render(request, "connect_done.html", context)
        response.delete_cookie(cookie_name(services.settings, COOKIE), secure=services.settings.public_https)
        return response

    return await services.db.run(finish)


routes = [
    Route(HOME, open_link, methods=["GET"]),
    Route(f"{HOME}/open", claim, methods=["POST"]),
    Route(f"{HOME}/done", done, methods=["GET"]),
    Route(HOME + "/{name}", connect, methods=["POST"]),
]
