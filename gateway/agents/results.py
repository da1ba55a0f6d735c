"""What a tool call answers: structured content, and the same as text an agent reads line by line."""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types

from gateway.core.execute import CallResult
from gateway.errors import GatewayError, IntegrationNotSetUp
from gateway.specs.spec import CompiledEndpoint

# The order of the lines of an error's text; other fields follow.
ERROR_LINES = ("error", "message", "action_url", "waitpoint", "next_step", "details", "status", "data", "retry_after")


def next_step(code: str, integration: str | None) -> str | None:
    """What an agent should do about an error, in a sentence."""
    wait = f"call wait_for_connection with {json.dumps({'integration': integration})}"
    steps = {
        "integration_not_connected": f"Ask the person to open action_url to connect {integration}, then {wait} and retry.",
        "token_expired": f"Ask the person to open action_url to reconnect {integration}, then {wait} and retry.",
        "scope_not_allowed": "This API key may not use it; the person can allow it at action_url.",
        "bad_request": "Fix the arguments listed in details and call again.",
        "not_found": "Call search_tools or list_integrations to find the right name.",
        "daily_limit_reached": "The day's calls are used up; the person can see usage at action_url.",
        "approval_denied": "The person declined this call; do not repeat it unless they ask.",
    }
    if code in ("upstream_timeout", "upstream_unreachable", "token_refresh_unavailable", "service_unavailable"):
        return "This is temporary; retry later."
    if code in ("integration_not_connected", "token_expired") and not integration:
        return "Ask the person to open action_url, then retry."
    return steps.get(code)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def tool_result(data: dict[str, Any], *, is_error: bool = False) -> types.CallToolResult:
    """Structured content, and the same as text: JSON on success, 'field: value' lines on error."""
    fields = {k: v for k, v in data.items() if v is not None} if is_error else data
    if is_error:
        order = [k for k in ERROR_LINES if k in fields] + [k for k in fields if k not in ERROR_LINES]
        text = "\n".join(f"{k}: {_text(fields[k])}" for k in order)
    else:
        text = json.dumps(fields, ensure_ascii=False)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=fields, is_error=is_error)


def error_result(exc: GatewayError, request_id: str | None, integration: str | None) -> types.CallToolResult:
    body = exc.body(request_id)
    body["retry_after"] = exc.headers.get("Retry-After")
    if isinstance(exc, IntegrationNotSetUp):
        body["next_step"] = (
            "Only the gateway's administrator can set this integration up: tell the person, and show them "
            "action_url, which explains what to ask for. Waiting for a connection would not help."
        )
    else:
        body["next_step"] = next_step(exc.code, integration)
    body["run_id"] = exc.headers.get("X-Run-Id")
    return tool_result(body, is_error=True)


def call_result(endpoint: CompiledEndpoint, result: CallResult) -> types.CallToolResult:
    """The /v1 call's body as the tool's result; an upstream failure is an error the agent can read."""
    run_id = result.headers.get("X-Run-Id")
    if result.http_status < 400:
        return tool_result({**result.body, "run_id": run_id})
    if "data" not in result.body and isinstance(result.body.get("error"), str):
        # The gateway's own error, replayed for a repeated idempotency key.
        code = result.body["error"]
        return tool_result(
            {**result.body, "next_step": next_step(code, endpoint.integration.name), "run_id": run_id}, is_error=True
        )
    status = result.body.get("status")
    message = result.body.get("upstream_error") or f"{endpoint.integration.display_name} answered HTTP {status}."
    failed = {"error": "upstream_error", "message": message, "status": status, "data": result.body.get("data")}
    return tool_result({**failed, "run_id": run_id}, is_error=True)
