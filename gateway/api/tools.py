"""GET /v1/tools: the endpoints a key may call, as tool definitions for MCP, OpenAI or Anthropic."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core import callers, tools
from gateway.core.callers import api_key
from gateway.core.runtime import Services
from gateway.errors import BadRequest


async def list_tools(request: Request) -> Response:
    services: Services = request.app.state.services
    key = await api_key(services, request)
    # The tools are the same for an end user (they do not depend on connections), but a key may not
    # list them for whom it may not act.
    end_user_id = request.headers.get(callers.END_USER_HEADER)
    if end_user_id is not None:
        callers.check_end_user_id(end_user_id)
    callers.may_act_for(key, end_user_id)
    name = request.query_params.get("format", "mcp")
    shape = tools.FORMATS.get(name)
    if shape is None:
        raise BadRequest(
            f"There is no tool format named '{name}'.",
            details=[{"field": "format", "message": f"must be one of {', '.join(tools.FORMATS)}"}],
        )
    integration = request.query_params.get("integration")
    if integration is not None:
        tools.check_integration(services, key, integration)
    endpoints = tools.allowed(services.registry, key, integration)
    return JSONResponse(
        {
            "format": name,
            "tools": [shape(endpoint) for endpoint in endpoints],
            # Where to send each tool call: POST {"params": <the tool's arguments>}.
            "paths": {e.tool_name: f"/v1/{e.integration.name}/{e.name}" for e in endpoints},
        }
    )


routes = [Route("/v1/tools", list_tools, methods=["GET"])]
