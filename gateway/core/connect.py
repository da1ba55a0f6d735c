"""The OAuth connect flow: authorization code with PKCE, a single-use state, and what follows.

The state is random, kept (hashed) in `oauth_states` with the web session that
started the flow and a ten-minute expiry, and deleted by the callback that uses
it. The callback URL is built from `public_url`, never from the Host header,
and is the same string in the authorize and token requests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from gateway.core import limits, links, waitpoints
from gateway.core.runtime import Services
from gateway.crypto import Box
from gateway.errors import GatewayError, IntegrationNotSetUp, PlanLimitReached
from gateway.settings import Settings
from gateway.specs.spec import Integration, OAuth2Auth
from gateway.storage import connections, end_users
from gateway.storage.models import Connection, EndUser, OAuthState, utcnow
from gateway.upstream import build as upstream
from gateway.upstream.token_endpoint import HTTP_ERRORS, TokenEndpointClient

logger = logging.getLogger(__name__)

STATE_TTL = dt.timedelta(minutes=10)
LOOKUP_MAX_BYTES = 1024 * 1024


class ConnectError(Exception):
    """The connect flow stopped; the message is safe to show the person."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def callback_url(settings: Settings, name: str) -> str:
    return settings.action_url(f"/oauth/{quote(name, safe='')}/callback")


def scope_string(auth: OAuth2Auth) -> str | None:
    return auth.scope_separator.join(auth.scopes) if auth.scopes else None


def missing_configuration(settings: Settings, integration: Integration) -> str | None:
    """Why this gateway cannot connect the integration yet, or None when it can."""
    if not isinstance(integration.spec.auth, OAuth2Auth):
        return None
    overrides = settings.overrides(integration.name)
    if not overrides.client_id or not overrides.client_secret:
        prefix = f"GATEWAY_{integration.name.upper().replace('-', '_')}"
        return f"The administrator has not set {prefix}_CLIENT_ID and {prefix}_CLIENT_SECRET."
    return None


def not_set_up(settings: Settings, integration: Integration) -> IntegrationNotSetUp | None:
    """What a caller is told about an integration nobody can connect yet, or None when one can.
    Waiting for a connection would be in vain, so it carries no waitpoint."""
    if missing_configuration(settings, integration) is None:
        return None
    name = integration.display_name
    return IntegrationNotSetUp(
        f"{name} is not set up on this gateway: its administrator must first register an OAuth app with "
        f"{name} and give the gateway its client id and secret. Nobody can connect it until then.",
        action_url=links.setup(settings, integration.name),
    )


def _client(services: Services, integration: Integration, redirect_uri: str) -> TokenEndpointClient:
    auth = integration.spec.auth
    assert isinstance(auth, OAuth2Auth)
    overrides = services.settings.overrides(integration.name)
    return TokenEndpointClient(
        services.upstream,
        client_id=overrides.client_id,
        client_secret=overrides.client_secret,
        scope=scope_string(auth),
        redirect_uri=redirect_uri,
        code_challenge_method="S256" if auth.pkce else None,
        token_endpoint_auth_method=auth.token_auth_method,
        revocation_endpoint_auth_method=auth.token_auth_method,
    )


def _state_id(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


async def begin(
    services: Services,
    integration: Integration,
    *,
    user_id: int,
    session_id: str,
    next_path: str | None,
    fields: dict[str, str] | None = None,
    end_user_id: int | None = None,
    connection_id: str | None = None,
) -> str:
    """Stores a new state and returns the provider's authorize URL to send the browser to. The
    state is bound to `session_id`: a dashboard session's, or a connect session's browser binding
    (then the connection is `end_user_id`'s, and `connection_id` the one being reconnected)."""
    auth = integration.spec.auth
    assert isinstance(auth, OAuth2Auth)
    settings = services.settings
    state = secrets.token_urlsafe(32)
    verifier = generate_token(64) if auth.pkce else None
    redirect_uri = callback_url(settings, integration.name)
    authorize_url = settings.overrides(integration.name).authorize_url or auth.authorize_url
    url, _ = _client(services, integration, redirect_uri).create_authorization_url(
        authorize_url, state=state, code_verifier=verifier, **auth.authorize_params
    )
    now = utcnow()
    row = dict(
        id=_state_id(state),
        session_id=session_id,
        user_id=user_id,
        integration=integration.name,
        end_user_id=end_user_id,
        connection_id=connection_id,
        code_verifier=services.box.encrypt(verifier),
        redirect_uri=redirect_uri,
        next_path=next_path,
        fields=fields or None,
        created_at=now,
        expires_at=now + STATE_TTL,
    )
    await services.db.run_unsettled(_store_state, row)
    return url


def _store_state(engine: Engine, row: dict[str, Any]) -> None:
    with engine.begin() as c:
        c.execute(delete(OAuthState).where(OAuthState.expires_at < row["created_at"]))
        c.execute(OAuthState.__table__.insert().values(**row))


def _claim(engine: Engine, state: str, session_ids: list[str]) -> OAuthState:
    """Takes the state out of the table, once, and only for the session that stored it (the
    browser's dashboard session, or its connect-session binding)."""
    state_id = _state_id(state)
    with engine.begin() as c:
        row = c.execute(select(OAuthState.__table__).where(OAuthState.id == state_id)).first()
        if row is None:
            raise ConnectError("This connection attempt has expired or was already used. Start it again.")
        session_id = next((s for s in session_ids if hmac.compare_digest(row.session_id, s)), None)
        if session_id is None and row.end_user_id is None and not session_ids:
            raise ConnectError("You are signed out in this browser. Sign in, then start the connection again.")
        if session_id is None:
            raise ConnectError(
                "This connection attempt was started in another browser session, so it was not used. "
                "Start it again from where you began."
            )
        taken = c.execute(
            delete(OAuthState).where(OAuthState.id == state_id, OAuthState.session_id == session_id)
        ).rowcount
    if taken != 1:
        raise ConnectError("This connection attempt was already used. Start it again.")
    found = OAuthState(**row._mapping)
    if found.expires_at <= utcnow():
        raise ConnectError("This connection attempt has expired (they last ten minutes). Start it again.")
    return found


async def complete(
    services: Services, integration: Integration, *, session_ids: list[str], params: Mapping[str, str]
) -> tuple[Connection, str | None]:
    """Handles the provider's redirect back; returns the saved connection and where to go next.
    `session_ids` are what this browser can prove: its dashboard session, its connect-session binding."""
    name = integration.display_name
    state = params.get("state")
    if not state or len(state) > 200:
        raise ConnectError(
            f"This address is where {name} sends you back after you approve a connection; "
            "on its own it does nothing. Start from the integration's page."
        )
    row = await services.db.run_unsettled(_claim, state, session_ids)
    if row.integration != integration.name:
        raise ConnectError("This connection attempt was for another integration. Start it again.")
    error = params.get("error")
    if error:
        if error == "access_denied":
            raise ConnectError(f"You declined access at {name}, so nothing was connected.")
        raise ConnectError(f"{name} stopped the connection ({error[:100]}). Nothing was connected; try again.")
    code = params.get("code")
    if not code:
        raise ConnectError(f"{name} sent no authorization code back. Nothing was connected; try again.")
    # Checked again on the way back: another connect may have filled the plan meanwhile.
    await services.db.run(_check_plan, services, integration, row)
    token = await _exchange(services, integration, row, code)
    connection = await _save(services, integration, row, token)
    return connection, row.next_path


def _check_plan(engine: Engine, services: Services, integration: Integration, row: OAuthState) -> None:
    """The account's own connections count against `max_connections`, an end user's against the
    plan's limit per end user."""
    plan = services.plans.for_user(engine, row.user_id)
    try:
        if row.end_user_id is None:
            limits.ensure_can_connect(engine, services.settings, plan, row.user_id, integration.name)
        else:
            limits.ensure_end_user_can_connect(
                engine, services.settings, plan, row.user_id, row.end_user_id, row.connection_id is not None
            )
    except PlanLimitReached as exc:
        raise ConnectError(exc.message, 403) from None


async def _exchange(services: Services, integration: Integration, row: OAuthState, code: str) -> dict[str, Any]:
    auth = integration.spec.auth
    assert isinstance(auth, OAuth2Auth)
    name = integration.display_name
    token_url = services.settings.overrides(integration.name).token_url or auth.token_url
    verifier = services.box.decrypt(row.code_verifier)
    extra = {"code_verifier": verifier} if verifier else {}
    try:
        client = _client(services, integration, row.redirect_uri)
        token = dict(await client.fetch_token(token_url, grant_type="authorization_code", code=code, **extra))
    except OAuthError as exc:
        logger.info("token exchange for %s refused: %s", integration.name, exc.error)
        raise ConnectError(f"{name} refused the connection ({exc.error}). Nothing was connected; try again.") from None
    except (*HTTP_ERRORS, ValueError) as exc:
        logger.warning("token exchange for %s failed: %s", integration.name, type(exc).__name__)
        raise ConnectError(f"{name} could not be reached to finish connecting. Try again shortly.", 502) from None
    if not isinstance(token.get("access_token"), str) or not token["access_token"]:
        raise ConnectError(f"{name} answered without an access token. Nothing was connected.", 502)
    return token


async def _save(services: Services, integration: Integration, row: OAuthState, token: dict[str, Any]) -> Connection:
    auth = integration.spec.auth
    assert isinstance(auth, OAuth2Auth)
    extra: dict[str, Any] = dict(row.fields or {})
    extra.update({f: token[f] for f in auth.token_response_fields if f in token})
    access_token = token["access_token"]
    for lookup in auth.lookups:
        value = dig(await _get_json(services, integration, lookup.url, access_token, extra), lookup.field)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            extra[lookup.store_as] = str(value)
    account = None
    if auth.account is not None:
        data = await _get_json(services, integration, auth.account.path, access_token, extra, auth.account.method)
        value = dig(data, auth.account.field)
        account = str(value)[:320] if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    scope = token.get("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    end_user = None
    if row.end_user_id is not None:
        end_user = await services.db.run_unsettled(end_users.by_id, row.end_user_id)
        if end_user is None:
            raise ConnectError("This end user was deleted while connecting; nothing was stored.", 410)
    try:
        return await services.db.run_unsettled(
            store,
            services.box,
            end_user=end_user,
            public_id=row.connection_id,
            user_id=row.user_id,
            integration=integration.name,
            access_token=access_token,
            refresh_token=token.get("refresh_token"),
            token_type=str(token.get("token_type") or "bearer")[:32],
            expires_at=connections.expires_at_from(token),
            scopes=scope if isinstance(scope, str) else scope_string(auth),
            account=account,
            extra=extra or None,
        )
    except LookupError:
        raise ConnectError("The connection being reconnected was deleted meanwhile; nothing was stored.", 410) from None


def store(engine: Engine, box: Box, end_user: EndUser | None = None, **values: Any) -> Connection:
    """Saves a new or renewed connection (the owner's, or `end_user`'s) and ends the waits for it
    (MCP's `wait_for_connection`, an end user's connection waitpoint)."""
    if end_user is not None:
        values["end_user_id"] = end_user.id
        values.setdefault("replace_default", False)
    connection = connections.save(engine, box, **values)
    assert connection.connected_at is not None
    waitpoints.connected(
        engine,
        connection.user_id,
        connection.integration,
        connection.connected_at,
        end_user.external_id if end_user is not None else None,
    )
    return connection


def dig(data: Any, dotted: str) -> Any:
    """The value at a dotted path; numeric parts index lists ('0.id')."""
    for part in dotted.split("."):
        if isinstance(data, list) and part.isdigit():
            index = int(part)
            data = data[index] if index < len(data) else None
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
        if data is None:
            return None
    return data


async def _get_json(
    services: Services,
    integration: Integration,
    target: str,
    access_token: str,
    extra: dict[str, Any],
    method: str = "GET",
) -> Any:
    """Best effort: a lookup that fails leaves its value out, it never fails the connect."""
    try:
        if not target.startswith(("https://", "http://")):
            template = services.settings.overrides(integration.name).base_url or integration.spec.base_url
            target = upstream.resolve_base_url(template, extra).rstrip("/") + target
        headers = {**integration.spec.headers, "Authorization": f"Bearer {access_token}"}
        request = upstream.request_for_url(method, target, headers)
        response = await upstream.send(services.upstream, request, LOOKUP_MAX_BYTES)
    except (GatewayError, UnicodeEncodeError) as exc:
        logger.info("lookup %s for %s failed: %s", target, integration.name, type(exc).__name__)
        return None
    if response.status >= 400:
        logger.info("lookup %s for %s answered %s", target, integration.name, response.status)
        return None
    return response.data


async def revoke(services: Services, integration: Integration, connection: Connection) -> None:
    """RFC 7009 revocation when the spec names an endpoint; failures are logged, not raised."""
    auth = integration.spec.auth
    if not isinstance(auth, OAuth2Auth):
        return
    url = services.settings.overrides(integration.name).revoke_url or auth.revoke_url
    if not url:
        return
    tokens = [
        (services.box.decrypt(connection.refresh_token), "refresh_token"),
        (services.box.decrypt(connection.access_token), "access_token"),
    ]
    client = _client(services, integration, callback_url(services.settings, integration.name))
    try:
        for value, hint in tokens:
            if value:
                response = await client.revoke_token(url, token=value, token_type_hint=hint)
                if response.status_code >= 400:
                    logger.warning("revoking a %s at %s answered %s", hint, integration.name, response.status_code)
    except (*HTTP_ERRORS, OAuthError, ValueError) as exc:
        logger.warning("revoking tokens at %s failed: %s", integration.name, type(exc).__name__)
