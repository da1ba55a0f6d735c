"""GET /v1/tools: the key's tools in the shapes function-calling frameworks take, and tool search."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.agents import mcp
from gateway.core import tools
from gateway.settings import BUILTIN_INTEGRATIONS
from gateway.specs.registry import load_registry
from tests.conftest import Gateway

DOC = Path(__file__).resolve().parents[1] / "docs" / "agents.md"


def get_tools(gateway: Gateway, secret: str | None, **query: str):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return gateway.http.get("/v1/tools", params=query, headers=headers)


def test_openai_format(gateway: Gateway, account) -> None:
    _, secret = account
    response = get_tools(gateway, secret, format="openai")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["format"] == "openai"
    endpoint = gateway.app.state.registry.endpoint("github", "create_issue")
    create = next(t for t in body["tools"] if t["function"]["name"] == "github_create_issue")
    assert create == {
        "type": "function",
        "function": {
            "name": "github_create_issue",
            "description": endpoint.spec.description,
            "parameters": endpoint.params_schema,
        },
    }
    assert all(set(t) == {"type", "function"} and t["type"] == "function" for t in body["tools"])
    assert body["paths"]["github_create_issue"] == "/v1/github/create_issue"


def test_anthropic_format(gateway: Gateway, account) -> None:
    _, secret = account
    body = get_tools(gateway, secret, format="anthropic").json()
    endpoint = gateway.app.state.registry.endpoint("github", "get_authenticated_user")
    user = next(t for t in body["tools"] if t["name"] == "github_get_authenticated_user")
    assert user == {
        "name": "github_get_authenticated_user",
        "description": endpoint.spec.description,
        "input_schema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
    }
    assert all(set(t) == {"name", "description", "input_schema"} for t in body["tools"])


def test_mcp_format_is_the_default_and_carries_the_hints(gateway: Gateway, account) -> None:
    _, secret = account
    body = get_tools(gateway, secret).json()
    assert body["format"] == "mcp"
    assert all(set(t) == {"name", "description", "inputSchema", "annotations"} for t in body["tools"])
    merge = next(t for t in body["tools"] if t["name"] == "github_merge_pull_request")
    assert merge["annotations"] == {
        "title": "GitHub: merge pull request",
        "readOnlyHint": False,
        "destructiveHint": True,
        "idempotentHint": False,
        "openWorldHint": True,
    }
    names = [t["name"] for t in body["tools"]]
    assert names == [e.tool_name for e in gateway.app.state.registry.endpoints()]


def test_a_path_from_the_listing_makes_the_call(gateway: Gateway, account) -> None:
    _, secret = account
    body = get_tools(gateway, secret, format="openai", integration="github").json()
    path = body["paths"]["github_get_authenticated_user"]
    response = gateway.http.post(path, json={"params": {}}, headers={"Authorization": f"Bearer {secret}"})
    assert response.json()["data"] == {"login": "octocat", "id": 1}


def test_the_integration_filter_and_the_keys_scope(gateway: Gateway, account) -> None:
    user_id, secret = account
    only_github = get_tools(gateway, secret, format="anthropic", integration="github").json()["tools"]
    assert only_github and all(t["name"].startswith("github_") for t in only_github)

    scoped = gateway.key(user_id, integrations=["fakeapi"])
    names = [t["function"]["name"] for t in get_tools(gateway, scoped, format="openai").json()["tools"]]
    assert names and all(n.startswith("fakeapi_") for n in names)

    refused = get_tools(gateway, scoped, integration="github")
    assert refused.status_code == 403
    assert refused.json()["error"] == "scope_not_allowed"
    missing = get_tools(gateway, secret, integration="nope")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


def test_an_unknown_format_is_a_400_in_the_error_shape(gateway: Gateway, account) -> None:
    _, secret = account
    response = get_tools(gateway, secret, format="langchain")
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_request",
        "message": "There is no tool format named 'langchain'.",
        "details": [{"field": "format", "message": "must be one of mcp, openai, anthropic"}],
        "request_id": response.headers["x-request-id"],
    }


@pytest.mark.parametrize("secret", [None, "sk_unknown"])
def test_tools_need_a_key(gateway: Gateway, secret: str | None) -> None:
    response = get_tools(gateway, secret, format="openai")
    assert (response.status_code, response.json()["error"]) == (401, "unauthorized")


def test_catalogue_tool_names_suit_every_framework() -> None:
    """OpenAI and Anthropic take names of at most 64 of [a-zA-Z0-9_-]; MCP clients key tools by name."""
    registry = load_registry([BUILTIN_INTEGRATIONS])
    names = [e.tool_name for e in registry.endpoints()]
    assert names
    assert [n for n in names if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", n)] == []
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    assert set(names).isdisjoint(mcp.META_TOOLS)
    for endpoint in registry.endpoints():
        Draft202012Validator.check_schema(tools.input_schema(endpoint))


def test_search_ranks_names_above_descriptions() -> None:
    registry = load_registry([BUILTIN_INTEGRATIONS])
    github = registry.get("github")
    assert github is not None
    found = [e.tool_name for e in tools.search(github.endpoints.values(), "comment on an issue")]
    assert found[:2] == ["github_create_issue_comment", "github_list_issue_comments"]
    assert tools.search(github.endpoints.values(), "the a of") == []
    assert tools.search(github.endpoints.values(), "") == []


def test_the_agents_doc_names_every_tool_and_format() -> None:
    text = DOC.read_text()
    missing = [name for name in [*mcp.META_TOOLS, *tools.FORMATS] if f"`{name}`" not in text]
    assert not missing, f"docs/agents.md does not mention: {missing}"
