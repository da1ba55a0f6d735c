"""Descriptions of what exists, generated from the specs: docs routes and OpenAPI 3.1."""

from __future__ import annotations

import json
from typing import Any

from .errors import all_error_classes
from .services import Services
from .specs import CompiledEndpoint, Integration, OAuth2Auth


def describe_integration(services: Services, integration: Integration, *, with_endpoints: bool) -> dict[str, Any]:
    spec = integration.spec
    described: dict[str, Any] = {
        "name": integration.name,
        "display_name": spec.display_name,
        "description": spec.description,
        "docs_url": spec.docs_url,
        "reference": spec.reference,
        "auth": spec.auth.type,
        "endpoint_count": len(integration.endpoints),
    }
    if isinstance(spec.auth, OAuth2Auth):
        described["scopes"] = spec.auth.scopes
    if with_endpoints:
        described["endpoints"] = [
            {"name": e.name, "method": e.method, "description": e.spec.description, "read_only": e.read_only}
            for e in integration.endpoints.values()
        ]
    return described


def example_request(services: Services, endpoint: CompiledEndpoint) -> dict[str, Any]:
    url = services.settings.action_url(f"/v1/{endpoint.integration.name}/{endpoint.name}")
    body = {"params": endpoint.example_params()}
    curl = (
        f"curl -X POST {url} -H 'Authorization: Bearer sk_...' "
        f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    )
    return {"method": "POST", "url": url, "body": body, "curl": curl}


def describe_endpoint(services: Services, endpoint: CompiledEndpoint) -> dict[str, Any]:
    spec = endpoint.spec
    described: dict[str, Any] = {
        "integration": endpoint.integration.name,
        "name": endpoint.name,
        "tool_name": endpoint.tool_name,
        "description": spec.description,
        "upstream": {"method": spec.method, "path": spec.path},
        "scopes": spec.scopes,
        "read_only": endpoint.read_only,
        "destructive": spec.destructive,
        "idempotent": endpoint.idempotent,
        "retry_safe": endpoint.retry_safe,
        "params": endpoint.params_schema,
        "example": example_request(services, endpoint),
    }
    if spec.pagination is not None:
        described["pagination"] = spec.pagination.model_dump(exclude_none=True)
    if spec.docs_url:
        described["docs_url"] = spec.docs_url
    return described


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message", "request_id"],
    "properties": {
        "error": {"type": "string", "enum": [c.code for c in all_error_classes()]},
        "message": {"type": "string"},
        "action_url": {"type": "string", "format": "uri"},
        "details": {},
        "request_id": {"type": ["string", "null"]},
    },
}

RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "data"],
    "properties": {
        "status": {"type": "integer", "description": "The upstream's HTTP status."},
        "data": {"description": "The upstream body: parsed JSON, or text."},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "upstream_error": {"type": "string"},
    },
}


def openapi_document(services: Services) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for endpoint in services.registry.endpoints():
        responses: dict[str, Any] = {
            "200": {
                "description": "The upstream's answer (the HTTP status mirrors the upstream's).",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}},
            }
        }
        for cls in all_error_classes():
            responses.setdefault(
                str(cls.status),
                {
                    "description": cls.__doc__ or cls.code,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            )
        paths[f"/v1/{endpoint.integration.name}/{endpoint.name}"] = {
            "post": {
                "operationId": endpoint.tool_name,
                "summary": endpoint.spec.description.split("\n")[0][:120],
                "description": endpoint.spec.description,
                "tags": [endpoint.integration.display_name],
                "security": [{"apiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["params"] if endpoint.params_schema["required"] else [],
                                "properties": {"params": endpoint.params_schema},
                                "additionalProperties": False,
                            },
                            "example": {"params": endpoint.example_params()},
                        }
                    },
                },
                "responses": responses,
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Integration gateway", "version": "1"},
        "servers": [{"url": services.settings.public_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "sk_..."}},
            "schemas": {"Error": ERROR_SCHEMA, "Result": RESULT_SCHEMA},
        },
    }
