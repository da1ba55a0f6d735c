"""The OpenAPI description of the gateway's own /v1 routes (runs, queues, waitpoints, tools), with
the same patterns the routes check."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_schemas import (
    ANY,
    JSON,
    TIME_OR_NULL,
    an_object,
    answer,
    error_responses,
    nullable,
    operation,
    ref,
)
from gateway.api.waitpoints import PERIODS, WAIT_TIMEOUT_PATTERN
from gateway.core import waitpoints
from gateway.storage import runs

# What a caller may send, the same patterns the routes check.
QUEUE_NAME = runs.QUEUE_NAME.pattern
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
# NUL is refused in any path or query (no database text column holds it).
NO_NUL = r"^[^\x00]*$"
TEXT = {"type": "string", "pattern": NO_NUL}
RUN_ID = r"^run_[0-9a-f]{32}$"
WAITPOINT_ID = r"^waitpoint_[0-9a-f]{32}$"
LIMIT = {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}


def query(name: str, schema: dict[str, Any], description: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **more}


def path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def comma_list(values: tuple[str, ...], what: str) -> dict[str, Any]:
    return query(
        "status",
        {"type": "array", "items": {"type": "string", "enum": list(values)}, "minItems": 1},
        f"Only {what} in these statuses (comma-separated).",
        style="form",
        explode=False,
    )


TIME_QUERY = {
    "type": "string",
    "description": "An RFC 3339 time (without an offset: UTC) or a date (YYYY-MM-DD: its midnight, UTC).",
    "anyOf": [{"format": "date-time"}, {"format": "date"}],
}


WAITPOINT_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "timeout": {
            "type": "string",
            "pattern": waitpoints.DURATION_PATTERN,
            "default": "10m",
            "description": "How long the waitpoint waits before it times out: 1s to 30d.",
        },
        "idempotencyKey": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": 255,
            "pattern": NO_CONTROL,
            "description": "A repeat with this key within its TTL returns the same waitpoint.",
        },
        "idempotencyKeyTTL": {"type": "string", "pattern": waitpoints.DURATION_PATTERN, "default": "1h"},
        "tags": {
            "type": ["array", "null"],
            "maxItems": 20,
            "items": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NO_CONTROL},
        },
    },
}

LIST_RESPONSES = error_responses(400)


def own_paths(integration_names: list[str]) -> dict[str, Any]:
    run_id = path("run_id", {"type": "string", "pattern": RUN_ID}, "The run's id.")
    waitpoint_id = path("waitpoint_id", {"type": "string", "pattern": WAITPOINT_ID}, "The waitpoint's id.")
    return {
        "/v1/integrations": {
            "get": operation(
                "list_integrations",
                "Every integration, with its auth type and endpoint count.",
                answer("The integrations.", an_object(["integrations"], {"integrations": {"type": "array"}})),
                tag="Gateway",
                secured=False,
            )
        },
        "/v1/integrations/{name}/connect": {
            "post": operation(
                "connect_integration",
                "The dashboard link where the person connects an integration, and a waitpoint that completes then.",
                {
                    **answer(
                        "Where to send the person, and what to wait on.",
                        an_object(
                            ["integration", "connect_url", "waitpoint"],
                            {
                                "integration": {"type": "string"},
                                "connect_url": {"type": "string", "format": "uri"},
                                "waitpoint": ref("WaitpointReference"),
                            },
                        ),
                    ),
                    **error_responses(403, 404),
                },
                tag="Gateway",
                parameters=[path("name", {"type": "string", "enum": integration_names}, "The integration's name.")],
            )
        },
        "/v1/runs": {
            "get": operation(
                "list_runs",
                "The caller's runs (direct and queued calls), newest first.",
                {
                    **answer(
                        "One page of runs.",
                        an_object(
                            ["runs", "next_cursor"],
                            {"runs": {"type": "array", "items": ref("Run")}, "next_cursor": nullable("string")},
                        ),
                    ),
                    **LIST_RESPONSES,
                },
                tag="Runs",
                parameters=[
                    query("integration", TEXT, "Only this integration's runs."),
                    query("endpoint", TEXT, "Only this endpoint's runs."),
                    query("queue", TEXT, "Only this queue's runs."),
                    comma_list(runs.STATUSES, "runs"),
                    query("from", TIME_QUERY, "Only runs created at or after this time."),
                    query("to", TIME_QUERY, "Only runs created before this time."),
                    query("limit", LIMIT, "Runs per page."),
                    query("cursor", TEXT, "`next_cursor` of the previous page."),
                ],
            )
        },
        "/v1/runs/{run_id}": {
            "get": operation(
                "get_run",
                "One run; once it has ended, `result` holds what a direct call would have answered.",
                {**answer("The run.", ref("Run")), **error_responses(404)},
                tag="Runs",
                parameters=[run_id],
            )
        },
        "/v1/runs/{run_id}/cancel": {
            "post": operation(
                "cancel_run",
                "Removes a pending queued call from its queue.",
                {
                    **answer(
                        "Whether it was removed.",
                        an_object(
                            ["removed", "message"], {"removed": {"type": "boolean"}, "message": {"type": "string"}}
                        ),
                    ),
                    **error_responses(404),
                },
                tag="Runs",
                parameters=[run_id],
            )
        },
        "/v1/queues/{name}": {
            "get": operation(
                "get_queue",
                "How many of the caller's calls a queue holds (pending or running).",
                {
                    **answer(
                        "The queue.",
                        an_object(
                            ["queue_name", "in_queue"],
                            {"queue_name": {"type": "string"}, "in_queue": {"type": "integer", "minimum": 0}},
                        ),
                    ),
                    **error_responses(400),
                },
                tag="Runs",
                parameters=[path("name", {"type": "string", "pattern": QUEUE_NAME}, "The queue's name.")],
            )
        },
        "/v1/callbacks/secret": {
            "get": operation(
                "get_callback_secret",
                "The secret that signs this key's callbacks.",
                answer(
                    "The secret.",
                    an_object(["secret", "scheme"], {"secret": {"type": "string"}, "scheme": {"type": "string"}}),
                ),
                tag="Runs",
            )
        },
        "/v1/tools": {
            "get": operation(
                "list_tools",
                "The endpoints this key may use, as tools for function-calling frameworks.",
                {
                    **answer(
                        "The tools, and the path that runs each.",
                        an_object(
                            ["format", "tools", "paths"],
                            {
                                "format": {"type": "string"},
                                "tools": {"type": "array"},
                                "paths": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        ),
                    ),
                    **error_responses(400, 403, 404),
                },
                tag="Gateway",
                parameters=[
                    query("format", {"type": "string", "enum": ["mcp", "openai", "anthropic"], "default": "mcp"}, ""),
                    query("integration", TEXT, "Only this integration's tools."),
                ],
            )
        },
        "/v1/waitpoints": {
            "post": operation(
                "create_waitpoint",
                "A waitpoint: a URL that something else completes, and that callers wait on.",
                {
                    **answer(
                        "The waitpoint (or the one made earlier with the same idempotency key).",
                        an_object(
                            ["id", "url", "isCached", "publicAccessToken"],
                            {
                                "id": {"type": "string"},
                                "url": {"type": "string", "format": "uri"},
                                "isCached": {"type": "boolean"},
                                "publicAccessToken": {"type": "string"},
                            },
                        ),
                    ),
                    **error_responses(400),
                },
                tag="Waitpoints",
                requestBody={"required": False, "content": {JSON: {"schema": WAITPOINT_CREATE}}},
            ),
            "get": operation(
                "list_waitpoints",
                "The caller's waitpoints, newest first.",
                {
                    **answer(
                        "One page of waitpoints (without their output).",
                        an_object(
                            ["data", "nextCursor"],
                            {"data": {"type": "array", "items": ref("Waitpoint")}, "nextCursor": nullable("string")},
                        ),
                    ),
                    **LIST_RESPONSES,
                },
                tag="Waitpoints",
                parameters=[
                    comma_list(waitpoints.STATUSES, "waitpoints"),
                    query("period", {"type": "string", "enum": list(PERIODS)}, "Only this recent."),
                    query("from", TIME_QUERY, "Only waitpoints created at or after this time."),
                    query("to", TIME_QUERY, "Only waitpoints created before this time."),
                    query("limit", LIMIT, "Waitpoints per page."),
                    query(
                        "tags",
                        {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "minLength": 1, "pattern": r"^[^,\x00]*$"},
                        },
                        "Only waitpoints with all these tags (comma-separated).",
                        style="form",
                        explode=False,
                    ),
                    query(
                        "idempotencyKey",
                        TEXT,
                        "Only the waitpoint with this idempotency key.",
                    ),
                    query("cursor", TEXT, "`nextCursor` of the previous page."),
                ],
            ),
        },
        "/v1/waitpoints/{waitpoint_id}": {
            "get": operation(
                "get_waitpoint",
                "One waitpoint, with its output once completed.",
                {**answer("The waitpoint.", ref("Waitpoint")), **error_responses(404)},
                tag="Waitpoints",
                parameters=[waitpoint_id],
            )
        },
        "/v1/waitpoints/{waitpoint_id}/wait": {
            "get": operation(
                "wait_for_waitpoint",
                "Waits until the waitpoint ends, or `timeout` seconds (at most 120) have passed.",
                {
                    **answer(
                        "The waitpoint ended: completed (`output`) or timed out (`error`).",
                        {
                            "anyOf": [
                                an_object(["ok", "output"], {"ok": {"const": True}, "output": ANY}),
                                an_object(["ok", "error"], {"ok": {"const": False}, "error": ANY}),
                            ]
                        },
                    ),
                    **answer(
                        "Still waiting: call again.",
                        an_object(
                            ["ok", "status", "waitAgain", "message", "timeoutAt"],
                            {
                                "ok": {"const": False},
                                "status": {"const": "WAITING"},
                                "waitAgain": {"const": True},
                                "message": {"type": "string"},
                                "timeoutAt": TIME_OR_NULL,
                            },
                        ),
                        status="202",
                    ),
                    **error_responses(400, 404),
                },
                tag="Waitpoints",
                parameters=[
                    waitpoint_id,
                    query(
                        "timeout",
                        {"type": "string", "pattern": WAIT_TIMEOUT_PATTERN, "default": "30"},
                        "Seconds (or a duration such as 30s) to wait at most; more than 120 waits 120.",
                    ),
                ],
            )
        },
        "/v1/waitpoints/{waitpoint_id}/complete": {
            "post": operation(
                "complete_waitpoint",
                "Completes a waitpoint with an API key or its public access token (`wpt_...`) as the bearer.",
                {**answer("The first completion stands.", ref("Completion")), **error_responses(400, 404)},
                tag="Waitpoints",
                parameters=[waitpoint_id],
                requestBody={
                    "required": False,
                    "content": {
                        JSON: {"schema": {"type": "object", "additionalProperties": False, "properties": {"data": ANY}}}
                    },
                },
            )
        },
        "/v1/waitpoints/{waitpoint_id}/cancel": {
            "post": operation(
                "cancel_waitpoint",
                "Cancels a waiting manual or connection waitpoint: every waiter gets `cancelled` at once. An "
                "approval's waitpoint ends by approving or rejecting its call instead.",
                {
                    **answer(
                        "Whether this request cancelled it, and its status now.",
                        an_object(
                            ["id", "cancelled", "status", "message"],
                            {
                                "id": {"type": "string"},
                                "cancelled": {"type": "boolean"},
                                "status": {"enum": list(waitpoints.STATUSES)},
                                "message": {"type": "string"},
                            },
                        ),
                    ),
                    **error_responses(400, 404),
                },
                tag="Waitpoints",
                parameters=[waitpoint_id],
            )
        },
        "/v1/waitpoints/{waitpoint_id}/callback/{token}": {
            "post": operation(
                "complete_waitpoint_by_url",
                "Completes a waitpoint through its URL (the token is the credential); the body, any JSON, is "
                "its output.",
                {**answer("The first completion stands.", ref("Completion")), **error_responses(400, 404)},
                tag="Waitpoints",
                secured=False,
                parameters=[
                    waitpoint_id,
                    path("token", TEXT, "The signed token of the waitpoint's URL."),
                ],
                requestBody={"required": False, "content": {JSON: {"schema": ANY}}},
            )
        },
    }
