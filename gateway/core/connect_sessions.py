"""Connect sessions: how an owner's app lets one of its end users connect their own accounts.

The app's server creates a session for an end user (`POST /v1/connect/sessions`) and hands its
`connect_url` (or its token, to `/static/connect.js`) to the end user's browser. The hosted page
at that URL needs no dashboard login: the token names the owner, the end user and the integrations
allowed. The first browser that opens the link is bound to it (a cookie), the token lives
`GATEWAY_CONNECT_SESSION_TTL_SECONDS` (30 minutes by default), and a session ends once it has
connected an account.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy.engine import Engine

from gateway.core import callers
from gateway.core.runtime import Services
from gateway.errors import BadRequest, ScopeNotAllowed
from gateway.settings import Settings
from gateway.storage import connect_sessions, end_users, keys
from gateway.storage.models import ApiKey, ConnectSession, EndUser, utcnow

MAX_ORIGINS = 20
MAX_URL = 2000


@dataclasses.dataclass(frozen=True)
class Created:
    token: str
    session: ConnectSession
    connect_url: str
    # The owner's id for the end user, when the caller named them (the API's answer repeats it).
    end_user_id: str | None = None


def connect_url(settings: Settings, token: str) -> str:
    return settings.action_url("/connect?" + urlencode({"token": token}))


def _text(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise BadRequest(f"'{name}' must be text of 1-{limit} printable characters.")
    return value.strip()


def _redirect_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise BadRequest(f"'redirect_url' must be an http or https URL of at most {MAX_URL} characters.")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise BadRequest("'redirect_url' must be an absolute http or https URL, with no user name or password in it.")
    if parts.fragment or not value.isprintable() or " " in value:
        raise BadRequest("'redirect_url' must have no fragment (#...) and no spaces.")
    return value


def origin(value: Any) -> str | None:
    """`scheme://host[:port]` exactly as a browser sends it in Origin, or None when `value` is not one."""
    if not isinstance(value, str) or len(value) > 300:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _origins(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_ORIGINS:
        raise BadRequest(f"'allowed_origins' must be a list of at most {MAX_ORIGINS} origins.")
    found = []
    for item in value:
        normal = origin(item)
        if normal is None:
            raise BadRequest(
                "Each of 'allowed_origins' must be an origin: scheme://host[:port], like https://app.example.com."
            )
        found.append(normal)
    return sorted(set(found))


def _integrations(services: Services, key: ApiKey, value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > 200 or not all(isinstance(v, str) for v in value):
        raise BadRequest("'integrations' must be a non-empty list of integration names.")
    for name in value:
        integration = services.registry.get(name)
        if integration is None:
            raise BadRequest(f"There is no integration named '{name[:100]}'.")
        if not keys.allows(key, name):
            raise ScopeNotAllowed(f"This API key may not use {integration.display_name}.")
    return sorted(set(value))


async def create(services: Services, key: ApiKey, body: dict[str, Any]) -> Created:
    """A new session from `POST /v1/connect/sessions`, or a 400 naming what is wrong with the body."""
    unknown = set(body) - {"end_user", "integrations", "redirect_url", "allowed_origins", "app_name"}
    if unknown:
        raise BadRequest(
            "The body has fields this call does not take.",
            details=[{"field": name, "message": "is not a known field"} for name in sorted(unknown)],
        )
    person = body.get("end_user")
    if not isinstance(person, dict) or not isinstance(person.get("id"), str):
        raise BadRequest("'end_user' must be an object with the end user's 'id' (your id for them).")
    if set(person) - {"id", "display_name", "email"}:
        raise BadRequest("'end_user' takes 'id', 'display_name' and 'email'.")
    external_id = callers.check_end_user_id(person["id"], "end_user.id")
    callers.may_act_for(key, external_id)
    details = {
        "display_name": _text(person.get("display_name"), "end_user.display_name", 200),
        "email": _text(person.get("email"), "end_user.email", 320),
    }
    values = dict(
        integrations=_integrations(services, key, body.get("integrations")),
        redirect_url=_redirect_url(body.get("redirect_url")),
        allowed_origins=_origins(body.get("allowed_origins")),
        app_name=_text(body.get("app_name"), "app_name", 100),
    )
    end_user = await services.db.run_unsettled(
        end_users.resolve, key.user_id, external_id, **{k: v for k, v in details.items() if v is not None}
    )
    created = await services.db.run_unsettled(
        start, services.settings, user_id=key.user_id, end_user_id=end_user.id or 0, api_key_id=key.id, **values
    )
    return dataclasses.replace(created, end_user_id=end_user.external_id)


def start(
    engine: Engine, settings: Settings, *, user_id: int, end_user_id: int, api_key_id: int | None, **values: Any
) -> Created:
    """Stores a new session (in a database thread): made by a key, or (`api_key_id` None) by the
    owner in the dashboard."""
    token = connect_sessions.generate()
    expires_at = utcnow() + dt.timedelta(seconds=settings.connect_session_ttl_seconds)
    session = connect_sessions.create(
        engine,
        token,
        user_id=user_id,
        end_user_id=end_user_id,
        api_key_id=api_key_id,
        expires_at=expires_at,
        **values,
    )
    return Created(token=token, session=session, connect_url=connect_url(settings, token))


def allowed(services: Services, session: ConnectSession, key: ApiKey | None) -> list[str]:
    """The integrations the session may connect, in catalogue order: those it names, or every one
    the key that made it may use (a key revoked since allows none; a session the owner made in the
    dashboard, with no key, is limited by what it names only)."""
    names = [i.name for i in services.registry]
    if session.api_key_id is None:
        chosen = set(session.integrations) if session.integrations is not None else set(names)
        return [name for name in names if name in chosen]
    if key is None or key.revoked_at is not None:
        return []
    chosen = set(session.integrations) if session.integrations is not None else set(names)
    return [name for name in names if name in chosen and keys.allows(key, name)]


async def link_for(services: Services, key: ApiKey, end_user: EndUser, integration: str) -> str:
    """A fresh connect link for this end user and integration: where an `integration_not_connected`
    or `token_expired` for an end user sends them (their own page, never the owner's dashboard)."""
    created = await services.db.run_unsettled(
        start,
        services.settings,
        user_id=key.user_id,
        end_user_id=end_user.id or 0,
        api_key_id=key.id,
        integrations=[integration],
    )
    return created.connect_url
