"""The endpoints an API key may use, as tools: MCP, OpenAI and Anthropic shapes, and search.

A tool is one endpoint: `CompiledEndpoint.tool_name`, the endpoint's description,
its params schema as the input schema, and hints from the spec. The MCP server
(mcp.py) and function-calling frameworks (GET /v1/tools) both take them from here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

from gateway.core import links
from gateway.core.runtime import Services
from gateway.errors import NotFound, ScopeNotAllowed
from gateway.specs.registry import Registry
from gateway.specs.spec import CompiledEndpoint, Integration
from gateway.storage import keys
from gateway.storage.models import ApiKey

WORD = re.compile(r"[a-z0-9]+")
# Words too common in requests like "create an issue in my repo" to rank anything.
STOP_WORDS = frozenset({"a", "an", "the", "to", "in", "on", "of", "for", "and", "or", "with", "my", "me", "i", "by"})


def title(endpoint: CompiledEndpoint) -> str:
    return f"{endpoint.integration.display_name}: {endpoint.name.replace('_', ' ')}"


def annotations(endpoint: CompiledEndpoint) -> dict[str, Any]:
    # Every hint is explicit: MCP reads a missing destructiveHint as true.
    return {
        "title": title(endpoint),
        "readOnlyHint": endpoint.read_only,
        "destructiveHint": endpoint.spec.destructive,
        "idempotentHint": endpoint.idempotent,
        "openWorldHint": True,
    }


def input_schema(endpoint: CompiledEndpoint) -> dict[str, Any]:
    # A copy: the compiled schema is shared by the validator of every call.
    return copy.deepcopy(endpoint.params_schema)


def mcp_tool(endpoint: CompiledEndpoint) -> dict[str, Any]:
    return {
        "name": endpoint.tool_name,
        "description": endpoint.spec.description,
        "inputSchema": input_schema(endpoint),
        "annotations": annotations(endpoint),
    }


def openai_tool(endpoint: CompiledEndpoint) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": endpoint.tool_name,
            "description": endpoint.spec.description,
            "parameters": input_schema(endpoint),
        },
    }


def anthropic_tool(endpoint: CompiledEndpoint) -> dict[str, Any]:
    return {
        "name": endpoint.tool_name,
        "description": endpoint.spec.description,
        "input_schema": input_schema(endpoint),
    }


FORMATS: dict[str, Callable[[CompiledEndpoint], dict[str, Any]]] = {
    "mcp": mcp_tool,
    "openai": openai_tool,
    "anthropic": anthropic_tool,
}


def by_name(registry: Registry) -> dict[str, CompiledEndpoint]:
    """Every endpoint by tool name; on a clash (`a-b`+`c` and `a`+`b_c`) the first in name order wins."""
    found: dict[str, CompiledEndpoint] = {}
    for endpoint in registry.endpoints():
        found.setdefault(endpoint.tool_name, endpoint)
    return found


def allowed(registry: Registry, key: ApiKey, integration: str | None = None) -> list[CompiledEndpoint]:
    """The endpoints this key may call, in catalogue order, optionally of one integration."""
    return [
        endpoint
        for found in registry
        if keys.allows(key, found.name) and integration in (None, found.name)
        for endpoint in found.endpoints.values()
    ]


def check_integration(services: Services, key: ApiKey, name: str) -> Integration:
    """The integration, or the error a caller gets for one that does not exist or that the key may not use."""
    integration = services.registry.get(name)
    if integration is None:
        raise NotFound(f"There is no integration named '{name}'.")
    _check_scope(services, key, integration)
    return integration


def resolve(services: Services, key: ApiKey, integration: str, endpoint: str) -> CompiledEndpoint:
    """The endpoint a call names, or the error a caller gets for one that does not exist or that the
    key may not use."""
    found = services.registry.endpoint(integration, endpoint)
    if found is None:
        if services.registry.get(integration) is None:
            raise NotFound(f"There is no integration named '{integration}'.")
        raise NotFound(f"{integration} has no endpoint named '{endpoint}'.")
    _check_scope(services, key, found.integration)
    return found


def _check_scope(services: Services, key: ApiKey, integration: Integration) -> None:
    if not keys.allows(key, integration.name):
        raise ScopeNotAllowed(
            f"This API key may not use {integration.display_name}.",
            action_url=links.api_key(services.settings, key.id or 0),
        )


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _words(text: str) -> set[str]:
    return {_stem(w) for w in WORD.findall(text.lower())}


def _score(endpoint: CompiledEndpoint, terms: list[str]) -> float:
    name = _words(f"{endpoint.tool_name.replace('_', ' ')} {endpoint.integration.display_name}")
    text = _words(f"{endpoint.spec.description} {' '.join(endpoint.spec.params)}")
    score, matched = 0.0, 0
    for term in terms:
        if term in name:
            score, matched = score + 3, matched + 1
        elif term in text:
            score, matched = score + 1, matched + 1
        elif len(term) >= 3 and any(w.startswith(term) for w in name | text):
            score, matched = score + 0.5, matched + 1
    # A tool that matches every word beats one that matches a single word often.
    return score + (2 if matched == len(terms) else 0) if matched else 0.0


def search(endpoints: Iterable[CompiledEndpoint], query: str) -> list[CompiledEndpoint]:
    """The endpoints matching any word of `query`, best first: names count more than descriptions."""
    terms = [_stem(w) for w in WORD.findall(query.lower()) if w not in STOP_WORDS]
    if not terms:
        return []
    scored = [(_score(endpoint, terms), endpoint) for endpoint in endpoints]
    ranked = sorted((pair for pair in scored if pair[0] > 0), key=lambda pair: (-pair[0], pair[1].tool_name))
    return [endpoint for _, endpoint in ranked]
