"""The /v1 routes a caller uses with an API key, and the public docs routes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import BadRequest, NotFound
from .execute import execute
from .openapi import describe_endpoint, describe_integration, openapi_document
from .requests import api_key, json_object
from .runs import RunRecord
from .services import Services

CALL_FIELDS = {"params"}


def services_of(request: Request) -> Services:
    return request.app.state.services


async def call_endpoint(request: Request) -> Response:
    services = services_of(request)
    key = api_key(services, request)
    body = await json_object(request)
    unknown = sorted(set(body) - CALL_FIELDS)
    if unknown:
        raise BadRequest(
            "The body has fields this call does not take.",
            details=[{"field": name, "message": "is not a known field"} for name in unknown],
        )
    result = await execute(
        services,
        key,
        request.path_params["integration"],
        request.path_params["endpoint"],
        body.get("params", {}),
        RunRecord.start(),
    )
    return JSONResponse(result.body, status_code=result.http_status, headers=result.headers)


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
    document: dict[str, Any] = openapi_document(services_of(request))
    return JSONResponse(document)


routes = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/integrations", list_integrations, methods=["GET"]),
    Route("/v1/{integration}", show_integration, methods=["GET"]),
    Route("/v1/{integration}/{endpoint}", show_endpoint, methods=["GET"]),
    Route("/v1/{integration}/{endpoint}", call_endpoint, methods=["POST"]),
]
