"""The /v1 call route (the body is read into a core.submit.Submission) and the public docs routes."""

from __future__ import annotations

from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.openapi import describe_endpoint, describe_integration, openapi_document
from gateway.api.parsing import json_object
from gateway.core import callers, limits, links, tools, waitpoints
from gateway.core.callers import api_key
from gateway.core.connect import not_set_up
from gateway.core.runtime import Services
from gateway.core.submit import Submission, submit
from gateway.errors import NotFound
from gateway.jsoncodec import JSONAnswer, dumps
from gateway.specs.spec import RESERVED_NAMES


def services_of(request: Request) -> Services:
    return request.app.state.services


async def call_endpoint(request: Request) -> Response:
    services = services_of(request)
    key = await api_key(services, request)
    acting = await callers.acting(services, key, request.headers)
    body = await json_object(request)
    idempotency_key = request.headers.get("idempotency-key")
    submission = Submission.of(body, services.settings, idempotency_key)
    # Counting the call sets its X-RateLimit-* headers; the middleware need not read them again.
    request.scope["state"]["usage_reported"] = True
    integration, endpoint = request.path_params["integration"], request.path_params["endpoint"]
    result = await submit(services, key, integration, endpoint, submission, acting)
    return JSONAnswer(result.body, status_code=result.http_status, headers=result.headers)


async def start_connection(request: Request) -> Response:
    """Where a person connects an integration, and a waitpoint that completes when they have."""
    services = services_of(request)
    key = await api_key(services, request)
    name = request.path_params["name"]
    integration = tools.check_integration(services, key, name)
    unavailable = not_set_up(services.settings, integration)
    if unavailable is not None:
        raise unavailable
    plan = await services.plans.of(services.db, key.user_id)
    await services.db.run(limits.ensure_can_connect, services.settings, plan, key.user_id, name)
    waitpoint = await services.db.run_unsettled(waitpoints.connection_waitpoint, key.user_id, name)
    return JSONResponse(
        {
            "integration": name,
            "connect_url": links.integration(services.settings, name),
            "waitpoint": waitpoints.reference(services, waitpoint),
        }
    )


async def list_integrations(request: Request) -> Response:
    services = services_of(request)
    return JSONResponse(
        {"integrations": [describe_integration(services, i, with_endpoints=False) for i in services.registry]}
    )


async def show_integration(request: Request) -> Response:
    services = services_of(request)
    integration = services.registry.get(request.path_params["integration"])
    if integration is None:
        raise NotFound(f"There is no integration named '{request.path_params['integration']}'.")
    return JSONResponse(describe_integration(services, integration, with_endpoints=True))


async def show_endpoint(request: Request) -> Response:
    services = services_of(request)
    name, endpoint_name = request.path_params["integration"], request.path_params["endpoint"]
    endpoint = services.registry.endpoint(name, endpoint_name)
    if endpoint is None:
        raise NotFound(f"There is no endpoint '{name}/{endpoint_name}'.")
    return JSONResponse(describe_endpoint(services, endpoint))


async def openapi(request: Request) -> Response:
    # The same for the process's life (settings and specs are fixed at start), and most of a megabyte.
    state = request.app.state
    if getattr(state, "openapi_body", None) is None:
        state.openapi_body = dumps(openapi_document(services_of(request)))
    return Response(state.openapi_body, media_type="application/json")


class IntegrationName(StringConvertor):
    """A path segment that is not one of the gateway's own /v1 names: /v1/runs/<id> is never a call,
    so a POST there is a 405 naming the methods /v1/runs/<id> takes."""

    regex = "(?!(?:" + "|".join(sorted(RESERVED_NAMES)) + ")(?:/|$))[^/]+"


register_url_convertor("integration", IntegrationName())

routes = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/integrations", list_integrations, methods=["GET"]),
    Route("/v1/integrations/{name}/connect", start_connection, methods=["POST"]),
    Route("/v1/{integration:integration}", show_integration, methods=["GET"]),
    Route("/v1/{integration:integration}/{endpoint}", show_endpoint, methods=["GET"]),
]
# The hot route, matched before every other: Starlette tries routes in order, each at a cost.
# No other route takes a POST to /v1/<a>/<b>, so putting it first changes no answer.
call_route = Route("/v1/{integration:integration}/{endpoint}", call_endpoint, methods=["POST"])
