"""The OpenAPI description of the end-user routes: connect sessions, end users and connections."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_schemas import TIME, TIME_OR_NULL, an_object, answer, error_responses, nullable, operation, ref
from gateway.core.callers import CONNECTION_ID
from gateway.storage.end_users import EXTERNAL_ID

END_USER_ID = {"type": "string", "pattern": EXTERNAL_ID.pattern, "minLength": 1, "maxLength": 200}
CONNECTION = {"type": "string", "pattern": CONNECTION_ID.pattern}
PRINTABLE = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"


def _text(limit: int) -> dict[str, Any]:
    """Optional text as the routes take it (printable ASCII; null is the same as leaving it out)."""
    return {"type": ["string", "null"], "minLength": 1, "maxLength": limit, "pattern": PRINTABLE}


SCHEMAS: dict[str, Any] = {
    "EndUser": an_object(
        ["id", "display_name", "email", "created_at"],
        {
            "id": {"type": "string", "description": "Your id for the end user."},
            "display_name": nullable("string"),
            "email": nullable("string"),
            "created_at": TIME_OR_NULL,
            "connections": {"description": "Their connection count (a list), or their connections (one end user)."},
        },
    ),
    "Connection": an_object(
        ["id", "integration", "end_user_id", "status", "default", "scopes"],
        {
            "id": {"type": "string"},
            "integration": {"type": "string"},
            "end_user_id": nullable("string"),
            "label": nullable("string"),
            "account": nullable("string"),
            "status": {"type": "string", "enum": ["connected", "needs_reconnect", "error"]},
            "default": {"type": "boolean", "description": "Whether a call that names no connection uses this one."},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "created_at": TIME_OR_NULL,
            "connected_at": TIME_OR_NULL,
            "updated_at": TIME_OR_NULL,
            "last_used_at": TIME_OR_NULL,
            "expires_at": TIME_OR_NULL,
            "last_error": {"type": ["object", "null"]},
            "check": {"type": "object", "description": "What a check found (POST .../check only)."},
        },
    ),
}


def session_body(integration_names: list[str]) -> dict[str, Any]:
    body = dict(_SESSION_BODY)
    body["properties"] = {
        **_SESSION_BODY["properties"],
        "integrations": {
            "type": ["array", "null"],
            "minItems": 1,
            "maxItems": 200,
            "items": {"type": "string", "enum": integration_names},
        },
    }
    return body


_SESSION_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["end_user"],
    "properties": {
        "end_user": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id"],
            "properties": {"id": END_USER_ID, "display_name": _text(200), "email": _text(320)},
        },
        "integrations": {"type": ["array", "null"], "minItems": 1, "maxItems": 200, "items": {"type": "string"}},
        "redirect_url": {
            "type": ["string", "null"],
            "maxLength": 2000,
            "pattern": r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[\x21-\x22\x24-\x7e]*)?$",
        },
        "allowed_origins": {
            "type": ["array", "null"],
            "maxItems": 20,
            "items": {"type": "string", "pattern": r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$"},
        },
        "app_name": _text(100),
    },
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def end_user_paths(integration_names: list[str]) -> dict[str, Any]:
    end_user = _path("end_user_id", END_USER_ID, "Your id for the end user (percent-encode a '/').")
    connection = _path("connection_id", CONNECTION, "The connection's id.")
    one_connection = {**answer("The connection.", ref("Connection")), **error_responses(404)}
    return {
        "/v1/connect/sessions": {
            "post": operation(
                "create_connect_session",
                "A connect session: a short-lived token and the hosted page where one end user connects accounts.",
                {
                    **answer(
                        "The session.",
                        an_object(
                            ["token", "connect_url", "expires_at"],
                            {
                                "token": {"type": "string", "pattern": "^cs_"},
                                "connect_url": {"type": "string", "format": "uri"},
                                "expires_at": TIME,
                                "end_user": {"type": "object"},
                                "integrations": {"type": ["array", "null"]},
                            },
                        ),
                        "201",
                    ),
                    **error_responses(400, 403),
                },
                tag="End users",
                requestBody=_json_body(session_body(integration_names)),
            )
        },
        "/v1/end_users": {
            "get": operation(
                "list_end_users",
                "Your end users, oldest first, with their connection counts.",
                {
                    **answer(
                        "One page of end users.",
                        an_object(
                            ["end_users", "next_cursor"],
                            {
                                "end_users": {"type": "array", "items": ref("EndUser")},
                                "next_cursor": nullable("string"),
                            },
                        ),
                    ),
                    **error_responses(400, 403),
                },
                tag="End users",
                parameters=[
                    _query(
                        "q", {"type": "string", "maxLength": 200}, "Only end users whose id, name or email holds this."
                    ),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}, "Per page."),
                    _query(
                        "cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "`next_cursor` of the previous page."
                    ),
                ],
            )
        },
        "/v1/end_users/{end_user_id}": {
            "get": operation(
                "get_end_user",
                "One end user and their connections.",
                {**answer("The end user.", ref("EndUser")), **error_responses(400, 403, 404)},
                tag="End users",
                parameters=[end_user],
            ),
            "patch": operation(
                "update_end_user",
                "Renames an end user (display name, email; null clears one).",
                {**answer("The end user.", ref("EndUser")), **error_responses(400, 403, 404)},
                tag="End users",
                parameters=[end_user],
                requestBody=_json_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "display_name": {"anyOf": [_text(200), {"type": "null"}]},
                            "email": {"anyOf": [_text(320), {"type": "null"}]},
                        },
                    }
                ),
            ),
            "delete": operation(
                "delete_end_user",
                "Deletes an end user: revokes and deletes their connections, erases their runs' payloads.",
                {
                    **answer(
                        "Deleted.",
                        an_object(
                            ["deleted", "connections_revoked"],
                            {"deleted": {"const": True}, "connections_revoked": {"type": "integer"}},
                        ),
                    ),
                    **error_responses(400, 403, 404),
                },
                tag="End users",
                parameters=[end_user],
            ),
        },
        "/v1/connections": {
            "get": operation(
                "list_connections",
                "Connections: the owner's own and every end user's, or one end user's.",
                {
                    **answer(
                        "The connections.",
                        an_object(["connections"], {"connections": {"type": "array", "items": ref("Connection")}}),
                    ),
                    **error_responses(400, 403, 404),
                },
                tag="End users",
                parameters=[
                    _query("end_user_id", END_USER_ID, "Only this end user's."),
                    _query("integration", {"type": "string"}, "Only this integration's."),
                    _query(
                        "status", {"type": "string", "enum": ["connected", "needs_reconnect", "error"]}, "Only these."
                    ),
                ],
            )
        },
        "/v1/connections/{connection_id}": {
            "get": operation(
                "get_connection", "One connection.", one_connection, tag="End users", parameters=[connection]
            ),
            "patch": operation(
                "update_connection",
                "Labels a connection, or makes it the default for its integration.",
                {**one_connection, **error_responses(400)},
                tag="End users",
                parameters=[connection],
                requestBody=_json_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "label": {"type": ["string", "null"], "maxLength": 200, "pattern": r"^[^\x00-\x1f\x7f]*$"},
                            "default": {"const": True},
                        },
                    }
                ),
            ),
            "delete": operation(
                "delete_connection",
                "Revokes the connection's tokens at the provider (where its spec says how) and deletes it.",
                {
                    **answer("Deleted.", an_object(["deleted"], {"deleted": {"const": True}})),
                    **error_responses(403, 404),
                },
                tag="End users",
                parameters=[connection],
            ),
        },
        "/v1/connections/{connection_id}/check": {
            "post": operation(
                "check_connection",
                "Proves the connection still works with its spec's cheap read, as a real call.",
                {**one_connection, **error_responses(400, 403)},
                tag="End users",
                parameters=[connection],
            )
        },
    }


def proxy_paths(integration: str, display_name: str) -> dict[str, Any]:
    """The passthrough proxy of one integration: the provider's own answers, undescribed here."""
    operations = {}
    for method in ("get", "post", "put", "patch", "delete"):
        operations[method] = {
            "operationId": f"proxy_{integration.replace('-', '_')}_{method}",
            "summary": f"Forwards to {display_name}'s API at `path`, with the connection's credential; "
            "the answer is the provider's own (docs/proxy.md).",
            "tags": [display_name],
            "security": [{"apiKey": []}],
            "parameters": [
                _path(
                    "path",
                    {"type": "string", "pattern": r"^[A-Za-z0-9_~-]+(/[A-Za-z0-9_~-]+)*$"},
                    "The path under the API's base URL (any path; the pattern describes the simplest ones).",
                ),
            ],
            "responses": {
                "default": {
                    "description": "The provider's own answer (status, headers, body); the gateway's own errors "
                    "carry `X-Gateway-Error`.",
                    "content": {"*/*": {"schema": {}}},
                }
            },
        }
        if method != "get" and method != "delete":
            operations[method]["requestBody"] = {"required": False, "content": {"*/*": {"schema": {}}}}
    return {f"/v1/{integration}/proxy/{{path}}": operations}
