"""`{GET,POST,PUT,PATCH,DELETE} /v1/{integration}/proxy/{path}`: the passthrough proxy (core.proxy).

The answer is the upstream's own, streamed; what the gateway itself answers keeps its JSON error
shape and carries `X-Gateway-Error: <code>`, so a caller can tell the two apart.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.api.parsing import body_bytes
from gateway.core import callers, proxy, tools
from gateway.core.runtime import Services
from gateway.errors import GatewayError

PREFIX = "/proxy"


async def forward(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        key = await callers.api_key(services, request)
        acting = await callers.acting(services, key, request.headers)
        integration = tools.check_integration(services, key, request.path_params["integration"])
        # The path as the caller encoded it: what was decoded cannot tell '/' from '%2F'.
        raw = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("latin-1")
        raw_path = raw.split(f"/v1/{integration.name}{PREFIX}", 1)[1]
        body = bytes(await body_bytes(request)) if request.method != "GET" else None
    except GatewayError as exc:
        exc.headers["X-Gateway-Error"] = exc.code
        raise
    # Counting the call sets the gateway's own limits beside the upstream's headers.
    request.scope["state"]["usage_reported"] = True
    forwarded = await proxy.forward(
        services,
        key,
        acting,
        integration,
        method=request.method,
        raw_path=raw_path,
        query_string=request.scope.get("query_string", b"").decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
        body=body,
    )
    response = StreamingResponse(forwarded.body(), status_code=forwarded.status)
    response.raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in forwarded.headers
    ]
    return response


routes = [Route("/v1/{integration:integration}" + PREFIX + "/{path:path}", forward, methods=list(proxy.METHODS))]
