"""Descriptions of what exists, generated from the specs: docs routes and OpenAPI 3.1.

The OpenAPI document states what the routes check, so that a client generated from it (or a
fuzzer, tests/test_openapi.py) never sends what the gateway refuses and is told of
every answer the gateway gives.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.api.openapi_end_users import SCHEMAS as END_USER_SCHEMAS
from gateway.api.openapi_end_users import end_user_paths, proxy_paths
from gateway.api.openapi_routes import own_paths
from gateway.api.openapi_schemas import JSON, SCHEMAS, answer, error_responses, ref
from gateway.core import callbacks
from gateway.core.runtime import Services
from gateway.core.submit import Submission
from gateway.specs.params import INT64_MAX, INT64_MIN
from gateway.specs.spec import CompiledEndpoint, Integration, OAuth2Auth, Param
from gateway.storage import runs


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


# What params.validate takes beyond a param's JSON Schema, as regular expressions: a path segment
# is not empty, '.' or '..' and holds no / \ % ? # or control character; a header holds no control
# character. A spec's own pattern is inlined where it can be, so that a generator draws from it.
SEGMENT_CHARS = r"[^/\\%?#\x00-\x1f\x7f]"
NOT_DOTS = r"(?!\.\.?(?:/|$))"
HEADER_CHARS = r"[^\x00-\x1f\x7f]"


def _body(pattern: str | None) -> str | None:
    """The inside of a spec pattern ^...$ to repeat for each of several segments, when it cannot reach
    past its own: no other anchor, no '.' outside a class, no / % ? #, no negated escape (\\W \\S \\D \\s)."""
    if pattern is None or not re.fullmatch(r"\^.*(?<!\\)\$", pattern):
        return None
    body = pattern[1:-1]
    if "$" in body or "^" in body or re.search(r"\\[WSDsx\\]|[/%?#]", body):
        return None
    if "." in re.sub(r"\[[^\]]*\]", "", body):
        return None
    return body


def _path_schema(param: Param, schema: dict[str, Any]) -> dict[str, Any]:
    """The whole value of a path param: its segments, each a segment as the gateway takes it."""
    if param.type != "string":
        return schema
    described = {k: v for k, v in schema.items() if k != "pattern"}
    if not param.multi_segment:
        shape = f"^(?!\\.\\.?$){SEGMENT_CHARS}+$"
        if param.pattern is None:
            return {**described, "pattern": shape}
        # The spec's pattern first: a generator draws from it and checks the other.
        return {**described, "allOf": [{"pattern": param.pattern}, {"pattern": shape}]}
    own = _body(param.pattern)
    one = f"{NOT_DOTS}(?:{own})" if own is not None else f"{NOT_DOTS}{SEGMENT_CHARS}+"
    if own is None and param.pattern is not None:
        # Several segments each matching a pattern that cannot be repeated inside one: said in words.
        described["description"] = f"{described.get('description', '')} Each segment matches {param.pattern}."
    if param.max_segments is not None:
        return {**described, "pattern": f"^{one}(?:/{one}){{{param.segments - 1},{param.max_segments - 1}}}$"}
    return {**described, "pattern": f"^{one}" + f"/{one}" * (param.segments - 1) + "$"}


def _header_schema(param: Param, schema: dict[str, Any]) -> dict[str, Any]:
    if param.type != "string":
        return schema
    described = {k: v for k, v in schema.items() if k != "pattern"}
    shape = f"^{HEADER_CHARS}*$"
    if param.pattern is None:
        return {**described, "pattern": shape}
    return {**described, "allOf": [{"pattern": param.pattern}, {"pattern": shape}]}


def _bounded_integers(schema: Any) -> Any:
    """Every integer in the schema within 64 bits, as params.validate takes them."""
    if isinstance(schema, list):
        return [_bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {
        key: value if key in ("enum", "default", "examples", "const") else _bounded_integers(value)
        for key, value in schema.items()
    }
    if bounded.get("type") == "integer":
        bounded["format"] = "int64"
        bounded["minimum"] = max(bounded.get("minimum", INT64_MIN), INT64_MIN)
        bounded["maximum"] = min(bounded.get("maximum", INT64_MAX), INT64_MAX)
    return bounded


def params_schema(endpoint: CompiledEndpoint) -> dict[str, Any]:
    """The endpoint's params as params.validate checks them, the checks beyond its JSON Schema included."""
    schema = _bounded_integers(endpoint.params_schema)
    for name, param in endpoint.spec.params.items():
        if param.location == "path":
            schema["properties"][name] = _path_schema(param, schema["properties"][name])
        elif param.location == "header":
            schema["properties"][name] = _header_schema(param, schema["properties"][name])
    return schema


def params_name(endpoint: CompiledEndpoint) -> str:
    return f"Params_{endpoint.tool_name}"


def call_body(services: Services, endpoint: CompiledEndpoint) -> dict[str, Any]:
    """A call's body: the schema of core.submit.Submission, which reads every call's body."""
    return Submission.body_schema(
        ref(params_name(endpoint)),
        params_required=bool(endpoint.params_schema["required"]),
        callback_url_pattern=callbacks.url_pattern(services.settings),
    )


def call_responses() -> dict[str, Any]:
    """Every call's answers (the same for all endpoints, so kept once in components.responses)."""
    mirrored = ref("Result")
    responses: dict[str, Any] = {
        "2XX": {
            "description": "The upstream's answer; the HTTP status is the upstream's.",
            "content": {JSON: {"schema": mirrored}},
        },
        "202": {
            "description": "Queued (`queue` or `async`), held for the person's approval, or the upstream's own 202.",
            "content": {JSON: {"schema": {"anyOf": [ref("Queued"), ref("Held"), mirrored]}}},
        },
        "204": {"description": "The upstream answered 204: no body."},
        "default": {
            "description": "Any other upstream status, mirrored with its body.",
            "content": {JSON: {"schema": mirrored}},
        },
        **error_responses(400, 401, 403, 409, 422, 429, 500, 503, 504, also=mirrored),
        **error_responses(502, also={"anyOf": [ref("UpstreamError"), mirrored]}),
    }
    for status in responses.values():
        status["headers"] = CALL_HEADERS
    return {f"Call{status}": response for status, response in responses.items()}


def call_operation(services: Services, endpoint: CompiledEndpoint) -> dict[str, Any]:
    body = call_body(services, endpoint)
    return {
        "operationId": endpoint.tool_name,
        "summary": endpoint.spec.description.split("\n")[0][:120],
        "description": endpoint.spec.description,
        "tags": [endpoint.integration.display_name],
        "security": [{"apiKey": []}],
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {
            # An empty body is a call without params.
            "required": "required" in body,
            "content": {JSON: {"schema": body, "example": {"params": endpoint.example_params()}}},
        },
        "responses": {name[len("Call") :]: {"$ref": f"#/components/responses/{name}"} for name in CALL_RESPONSES},
    }


def describe_operation(endpoint: CompiledEndpoint) -> dict[str, Any]:
    return {
        "operationId": f"describe_{endpoint.tool_name}",
        "summary": f"Describes {endpoint.integration.name}/{endpoint.name}: its params, scopes and an example.",
        "tags": [endpoint.integration.display_name],
        "security": [],
        "responses": {
            **answer("The endpoint's description.", {"type": "object", "required": ["integration", "name", "params"]}),
            **error_responses(500, 503),
        },
    }


CALL_HEADERS: dict[str, Any] = {
    "X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"},
    "X-Run-Id": {"description": "The call's run: GET /v1/runs/<id>.", "schema": {"type": "string"}},
}
CALL_RESPONSES = call_responses()


def openapi_document(services: Services) -> dict[str, Any]:
    paths: dict[str, Any] = {
        **own_paths([i.name for i in services.registry]),
        **end_user_paths([i.name for i in services.registry]),
    }
    schemas = {**SCHEMAS, **END_USER_SCHEMAS}
    for integration in services.registry:
        paths.update(proxy_paths(integration.name, integration.display_name))
        paths[f"/v1/{integration.name}"] = {
            "get": {
                "operationId": f"describe_{integration.name.replace('-', '_')}",
                "summary": f"Describes {integration.display_name} and its endpoints.",
                "tags": [integration.display_name],
                "security": [],
                "responses": {
                    **answer("The integration.", {"type": "object", "required": ["name", "endpoints"]}),
                    **error_responses(500, 503),
                },
            }
        }
        for endpoint in integration.endpoints.values():
            schemas[params_name(endpoint)] = params_schema(endpoint)
            paths[f"/v1/{integration.name}/{endpoint.name}"] = {
                "get": describe_operation(endpoint),
                "post": call_operation(services, endpoint),
            }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Integration gateway",
            "version": "1",
            "description": "Every answer of the gateway's own is JSON; its errors have one shape (`Error`).",
        },
        "servers": [{"url": services.settings.public_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "sk_..."}},
            "schemas": schemas,
            "responses": CALL_RESPONSES,
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A repeat with the same key and body answers the first answer again, without "
                    "calling the upstream (24 hours, per API key); another body is `idempotency_mismatch`.",
                    "schema": {"type": "string", "pattern": runs.IDEMPOTENCY_KEY.pattern},
                }
            },
            "headers": {
                "X-Request-Id": {
                    "description": "This request's id (the caller's X-Request-Id when well-formed).",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        },
    }
