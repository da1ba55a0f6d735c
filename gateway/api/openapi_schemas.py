"""The OpenAPI description of the gateway's answers (components.schemas) and the helpers that
describe an operation's answers: data, so that openapi.py stays the assembly."""

from __future__ import annotations

from typing import Any

from gateway.core import waitpoints
from gateway.errors import all_error_classes
from gateway.storage import runs

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


TIME = {"type": "string", "format": "date-time"}
TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
ANY: dict[str, Any] = {}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "request_id"],
        "properties": {
            "error": {"type": "string", "enum": [c.code for c in all_error_classes()]},
            "message": {"type": "string"},
            "action_url": {"type": "string", "format": "uri"},
            "details": ANY,
            "request_id": {"type": ["string", "null"]},
        },
    },
    "Result": {
        "type": "object",
        "required": ["status", "data"],
        "properties": {
            "status": {"type": "integer", "description": "The upstream's HTTP status."},
            "data": {"description": "The upstream body: parsed JSON, text, or null for an empty body."},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "upstream_error": {
                "type": "string",
                "description": "Set (and the answer is 502) when the endpoint's `error_when` matched a 2xx body.",
            },
        },
    },
    "UpstreamError": {
        "description": "A 2xx upstream body that says it failed (the spec's `error_when`), answered with HTTP 502.",
        "allOf": [ref("Result"), {"required": ["upstream_error"]}],
    },
    "Queued": {
        "type": "object",
        "required": ["id", "status", "queue_name", "in_queue"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": list(runs.STATUSES)},
            "queue_name": {"type": "string"},
            "in_queue": {"type": "integer", "minimum": 0, "description": "Calls ahead of and including this one."},
        },
    },
    "Held": {
        "type": "object",
        "description": "The key needs the person's approval: the call waits for it.",
        "required": ["id", "status", "approval", "queue_name", "message", "action_url", "waitpoint", "expires_at"],
        "properties": {
            "id": {"type": "string"},
            "status": {"const": "pending"},
            "approval": {"const": "pending"},
            "queue_name": {"type": "string"},
            "message": {"type": "string"},
            "action_url": {"type": "string", "format": "uri"},
            "waitpoint": ref("WaitpointReference"),
            "expires_at": TIME,
        },
    },
    "WaitpointReference": {
        "type": "object",
        "required": ["id", "wait_url"],
        "properties": {"id": {"type": "string"}, "wait_url": {"type": "string", "format": "uri"}},
    },
    "Run": {
        "type": "object",
        "required": ["id", "status", "integration", "endpoint", "queue_name", "attempts", "refreshed", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": list(runs.STATUSES)},
            "integration": {"type": "string"},
            "endpoint": {"type": "string"},
            "end_user_id": nullable("string", description="The end user the call acted for (X-End-User-Id)."),
            "connection_id": nullable("string", description="The connection the call used."),
            "queue_name": nullable("string"),
            "http_status": nullable("integer"),
            "upstream_status": nullable("integer"),
            "error_code": nullable("string"),
            "attempts": {"type": "integer"},
            "refreshed": {"type": "boolean"},
            "created_at": TIME_OR_NULL,
            "started_at": TIME_OR_NULL,
            "ended_at": TIME_OR_NULL,
            "expires_at": TIME_OR_NULL,
            "approval": {"type": "string"},
            "waitpoint_id": {"type": "string"},
            "result": {"description": "Once ended: the body a direct call would have answered."},
        },
    },
    "Waitpoint": {
        "type": "object",
        "required": ["id", "status", "kind", "createdAt", "tags"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": list(waitpoints.STATUSES)},
            "kind": {"type": "string"},
            "createdAt": TIME_OR_NULL,
            "completedAt": TIME_OR_NULL,
            "timeoutAt": TIME_OR_NULL,
            "idempotencyKey": nullable("string"),
            "idempotencyKeyExpiresAt": TIME_OR_NULL,
            "tags": {"type": "array", "items": {"type": "string"}},
            "integration": {"type": "string"},
            "endUserId": {"type": "string"},
            "output": ANY,
            "error": ANY,
        },
    },
    "Completion": {
        "type": "object",
        "required": ["id", "completed", "status", "message"],
        "properties": {
            "id": {"type": "string"},
            "completed": {"type": "boolean", "description": "Whether this completion was the first (it stands)."},
            "status": {"type": "string"},
            "message": {"type": "string"},
        },
    },
}

for _status in sorted({c.status for c in all_error_classes()}):
    SCHEMAS[f"Error{_status}"] = {
        "allOf": [
            ref("Error"),
            {"properties": {"error": {"enum": [c.code for c in all_error_classes() if c.status == _status]}}},
        ]
    }


def error_responses(*statuses: int, also: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our error answers at these statuses (the codes each may carry), or `also` beside them."""
    answers: dict[str, Any] = {}
    for status in statuses:
        codes = [c for c in all_error_classes() if c.status == status]
        schema: dict[str, Any] = ref(f"Error{status}")
        if also is not None:
            schema = {"anyOf": [schema, also]}
        answers[str(status)] = {
            "description": "; ".join(f"`{c.code}`: {c.__doc__}" for c in codes),
            "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
            "content": {JSON: {"schema": schema}},
        }
    return answers


def answer(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {
        status: {
            "description": description,
            "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
            "content": {JSON: {"schema": schema}},
        }
    }


def operation(
    operation_id: str, summary: str, responses: dict[str, Any], *, tag: str, secured: bool = True, **more: Any
) -> dict[str, Any]:
    described: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag], **more}
    described["security"] = [{"apiKey": []}] if secured else []
    described["responses"] = {**responses, **error_responses(*((401,) if secured else ()), 500, 503)}
    return described


def an_object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}
