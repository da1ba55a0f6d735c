"""The /v1 routes for an owner's end users, their connect sessions and every connection.

Only the owner's keys see these, and a key limited to some integrations sees only their
connections; a key that acts for its owner only sees no end user.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.parsing import json_object, query_limit
from gateway.core import callers, connect_sessions
from gateway.core import connect as oauth
from gateway.core.execute import execute
from gateway.core.runtime import Services
from gateway.core.views import iso
from gateway.errors import BadRequest, GatewayError, NotFound, ScopeNotAllowed
from gateway.storage import connections, end_users, keys
from gateway.storage.models import ApiKey, Connection, EndUser
from gateway.storage.runs import RunRecord

MAX_LIMIT = 100
STATUSES = ("connected", "needs_reconnect", "error")


def _services(request: Request) -> Services:
    return request.app.state.services


async def create_session(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    created = await connect_sessions.create(services, key, await json_object(request))
    return JSONResponse(
        {
            "token": created.token,
            "connect_url": created.connect_url,
            "expires_at": iso(created.session.expires_at),
            "end_user": {"id": created.end_user_id},
            "integrations": created.session.integrations,
        },
        status_code=201,
    )


def _end_user_view(end_user: EndUser, connection_count: int | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": end_user.external_id,
        "display_name": end_user.display_name,
        "email": end_user.email,
        "created_at": iso(end_user.created_at),
    }
    if connection_count is not None:
        view["connections"] = connection_count
    return view


def status_of(connection: Connection) -> str:
    if connection.status != "connected":
        return "needs_reconnect"
    return "error" if connection.last_error_at is not None else "connected"


def connection_view(connection: Connection, end_user_id: str | None, default: bool) -> dict[str, Any]:
    scopes = [s for s in re.split(r"[\s,]+", connection.scopes or "") if s]
    return {
        "id": connection.public_id,
        "integration": connection.integration,
        "end_user_id": end_user_id,
        "label": connection.label,
        "account": connection.account,
        "status": status_of(connection),
        "default": default,
        "scopes": scopes,
        "created_at": iso(connection.created_at),
        "connected_at": iso(connection.connected_at),
        "updated_at": iso(connection.updated_at),
        "last_used_at": iso(connection.last_used_at),
        "expires_at": iso(connection.expires_at),
        "last_error": (
            {"message": connection.last_error, "at": iso(connection.last_error_at)}
            if connection.last_error_at is not None
            else None
        ),
    }


def _sees_end_users(key: ApiKey) -> None:
    if key.acts_for == "owner":
        raise ScopeNotAllowed("This API key acts for its owner only: it sees no end users.")


async def list_end_users(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    _sees_end_users(key)
    limit = query_limit(request, 50, MAX_LIMIT)
    query = request.query_params.get("q")
    if query is not None and len(query) > 200:
        raise BadRequest("'q' is at most 200 characters.")
    cursor = request.query_params.get("cursor", "0")
    if not cursor.isdigit() or len(cursor) > 18:
        raise BadRequest("'cursor' must be the next_cursor of a previous page.")

    def page(engine: Any) -> dict[str, Any]:
        found = end_users.search(engine, key.user_id, query, limit + 1, int(cursor))
        shown = found[:limit]
        counts = end_users.connection_counts(engine, [e.id or 0 for e in shown])
        return {
            "end_users": [_end_user_view(e, counts.get(e.id or 0, 0)) for e in shown],
            "next_cursor": str(shown[-1].id) if len(found) > limit else None,
        }

    return JSONResponse(await services.db.run(page))


async def _named_end_user(services: Services, key: ApiKey, external_id: str) -> EndUser:
    _sees_end_users(key)
    callers.check_end_user_id(external_id, "end user id")
    found = await services.db.run_unsettled(end_users.known, key.user_id, external_id)
    if found is None:
        raise NotFound("There is no end user with that id.")
    return found


async def show_end_user(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    end_user = await _named_end_user(services, key, request.path_params["end_user_id"])
    found = await services.db.run(connections.list_for, key.user_id, end_user.id)
    view = _end_user_view(end_user)
    view["connections"] = _views(services, key, found, end_user.external_id)
    return JSONResponse(view)


async def update_end_user(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    end_user = await _named_end_user(services, key, request.path_params["end_user_id"])
    body = await json_object(request)
    unknown = set(body) - {"display_name", "email"}
    if unknown or not body:
        raise BadRequest("Send 'display_name' and/or 'email' (null clears one).")
    values = {}
    for name, limit in (("display_name", 200), ("email", 320)):
        if name in body:
            value = body[name]
            if value is not None and (
                not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable()
            ):
                raise BadRequest(f"'{name}' must be text of 1-{limit} printable characters, or null.")
            values[name] = value.strip() if isinstance(value, str) else None
    changed = await services.db.run_unsettled(end_users.update_details, end_user, **values)
    return JSONResponse(_end_user_view(changed))


async def delete_end_user(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    end_user = await _named_end_user(services, key, request.path_params["end_user_id"])
    found = await services.db.run(connections.list_for, key.user_id, end_user.id)
    for connection in found:
        integration = services.registry.get(connection.integration)
        if integration is not None:
            await oauth.revoke(services, integration, connection)
    await services.db.run_unsettled(end_users.delete_all, end_user)
    return JSONResponse({"deleted": True, "connections_revoked": len(found)})


def _views(services: Services, key: ApiKey, found: list[Connection], end_user_id: str | None) -> list[dict[str, Any]]:
    visible = [c for c in found if keys.allows(key, c.integration)]
    defaults = {}
    for connection in visible:
        group = [c for c in visible if c.integration == connection.integration]
        defaults[connection.integration] = connections.choose(group)
    return [
        connection_view(c, end_user_id, defaults.get(c.integration) is not None and defaults[c.integration].id == c.id)
        for c in visible
    ]


async def list_connections(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    q = request.query_params
    integration = q.get("integration")
    status = q.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"'status' is one of {', '.join(STATUSES)}.")
    external_id = q.get("end_user_id")
    if external_id is None:
        external_id = request.headers.get(callers.END_USER_HEADER)
    end_user = None
    if external_id is not None:
        end_user = await _named_end_user(services, key, external_id)

    def listing(engine: Any) -> list[dict[str, Any]]:
        if end_user is not None:
            found = connections.list_for(engine, key.user_id, end_user.id, integration)
        else:
            # Every connection of the owner's: their own and their end users', as the key may see them.
            found = connections.list_for(engine, key.user_id, None, integration, every_end_user=True)
            if key.acts_for == "owner":
                found = [c for c in found if c.end_user_id is None]
            elif key.acts_for == "end_users":
                found = [c for c in found if c.end_user_id is not None]
        names = end_users.external_ids(engine, {c.end_user_id for c in found if c.end_user_id is not None})
        views = []
        for end_user_key in dict.fromkeys(c.end_user_id for c in found):
            group = [c for c in found if c.end_user_id == end_user_key]
            views += _views(services, key, group, names.get(end_user_key) if end_user_key is not None else None)
        return [v for v in views if status is None or v["status"] == status]

    return JSONResponse({"connections": await services.db.run(listing)})


async def _connection(services: Services, key: ApiKey, public_id: str) -> tuple[Connection, str | None]:
    if not callers.CONNECTION_ID.match(public_id):
        raise NotFound("There is no connection with that id.")
    found = await services.db.run(connections.by_public_id, key.user_id, public_id)
    if found is None or not keys.allows(key, found.integration):
        raise NotFound("There is no connection with that id.")
    end_user = None
    if found.end_user_id is not None:
        _sees_end_users(key)
        end_user = await services.db.run_unsettled(end_users.by_id, found.end_user_id)
    elif key.acts_for == "end_users":
        raise NotFound("There is no connection with that id.")
    return found, end_user.external_id if end_user else None


async def _shown(services: Services, connection: Connection, end_user_id: str | None) -> dict[str, Any]:
    """One connection as the API shows it, with whether it is its integration's default."""
    siblings = await services.db.run(
        connections.list_for, connection.user_id, connection.end_user_id, connection.integration
    )
    default = connections.choose(siblings)
    return connection_view(connection, end_user_id, default is not None and default.id == connection.id)


async def show_connection(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    found, end_user_id = await _connection(services, key, request.path_params["connection_id"])
    return JSONResponse(await _shown(services, found, end_user_id))


async def update_connection(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    found, end_user_id = await _connection(services, key, request.path_params["connection_id"])
    body = await json_object(request)
    if not body or set(body) - {"label", "default"}:
        raise BadRequest("Send 'label' (text, or null to clear) and/or 'default': true.")
    label = body.get("label")
    if (
        "label" in body
        and label is not None
        and (not isinstance(label, str) or len(label) > 200 or not label.isprintable())
    ):
        raise BadRequest("'label' must be text of at most 200 printable characters, or null.")
    if "default" in body and body["default"] is not True:
        raise BadRequest("'default' can only be set to true: make another connection the default instead.")
    changed = await services.db.run(
        connections.change,
        found,
        label=(label or "") if "label" in body else None,
        make_default=body.get("default") is True,
    )
    return JSONResponse(await _shown(services, changed, end_user_id))


async def check_connection(request: Request) -> Response:
    """Proves the connection still works with its spec's cheap read (`auth.verify`), as a real call:
    counted, recorded as a run, refreshed and retried once on 401. A refusal updates its status."""
    services = _services(request)
    key = await callers.api_key(services, request)
    found, end_user_id = await _connection(services, key, request.path_params["connection_id"])
    integration = services.registry.get(found.integration)
    verify = getattr(integration.spec.auth, "verify", None) if integration is not None else None
    if integration is None or verify is None:
        # Nothing to run: the check this route stands for does not exist for this connection.
        raise NotFound(f"{found.integration} names no check in its spec (auth.verify), so it cannot be checked.")
    record = RunRecord.for_call(key, integration.name, verify.endpoint, end_user_id, found.public_id)
    record.end_user_key = found.end_user_id  # the end user's daily limit counts it too
    checked: dict[str, Any]
    try:
        result = await execute(services, key, record, dict(verify.params))
        checked = {"ok": result.http_status < 400, "upstream_status": result.body.get("status")}
    except GatewayError as exc:
        checked = {"ok": False, "error": exc.code, "message": exc.message}
    checked["run_id"] = record.id
    current = await services.db.run(connections.by_public_id, key.user_id, found.public_id)
    if current is None:
        raise NotFound("There is no connection with that id.")
    return JSONResponse({**await _shown(services, current, end_user_id), "check": checked})


async def delete_connection(request: Request) -> Response:
    services = _services(request)
    key = await callers.api_key(services, request)
    found, _ = await _connection(services, key, request.path_params["connection_id"])
    integration = services.registry.get(found.integration)
    if integration is not None:
        await oauth.revoke(services, integration, found)
    await services.db.run(connections.remove_connection, found)
    return JSONResponse({"deleted": True})


routes = [
    Route("/v1/connect/sessions", create_session, methods=["POST"]),
    Route("/v1/end_users", list_end_users, methods=["GET"]),
    # An end user id may hold '/': sent percent-encoded, it arrives decoded.
    Route("/v1/end_users/{end_user_id:path}", show_end_user, methods=["GET"]),
    Route("/v1/end_users/{end_user_id:path}", update_end_user, methods=["PATCH"]),
    Route("/v1/end_users/{end_user_id:path}", delete_end_user, methods=["DELETE"]),
    Route("/v1/connections", list_connections, methods=["GET"]),
    Route("/v1/connections/{connection_id}", show_connection, methods=["GET"]),
    Route("/v1/connections/{connection_id}", update_connection, methods=["PATCH"]),
    Route("/v1/connections/{connection_id}", delete_connection, methods=["DELETE"]),
    Route("/v1/connections/{connection_id}/check", check_connection, methods=["POST"]),
]
