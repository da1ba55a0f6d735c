"""The MCP server at /mcp, driven by the SDK's own client over real HTTP against the fake provider."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from sqlalchemy import update

from gateway.agents import mcp
from gateway.app import create_app
from gateway.core import connect
from gateway.errors import IntegrationNotConnected
from gateway.storage import keys
from gateway.storage.models import Connection
from tests.conftest import Gateway, make_settings
from tests.servers import ServerThread

pytestmark = pytest.mark.anyio

META_TOOLS = {"list_integrations", "connect_integration", "wait_for_connection", "search_tools", "proxy_request"}
# "auto" settles on the 2026-07-28 protocol; "legacy" is the initialize handshake today's desktop clients use.
MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def mcp_client(gateway: Gateway, secret: str, mode: str = "auto") -> AsyncIterator[Client]:
    async with mcp_client_with(gateway, {"Authorization": f"Bearer {secret}"}, mode=mode) as client:
        yield client


@contextlib.asynccontextmanager
async def mcp_client_with(
    gateway: Gateway, headers: dict[str, str], query: str = "", mode: str = "auto"
) -> AsyncIterator[Client]:
    """The SDK's client with these headers on every request, at /mcp plus `query`."""
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(f"{gateway.url}/mcp{query}", http_client=http), mode=mode) as client:
        yield client


def error_lines(result: types.CallToolResult) -> dict[str, str]:
    assert result.is_error, result
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return dict(line.split(": ", 1) for line in content.text.splitlines())


def post_mcp(gateway: Gateway, authorization: str | None) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream"}
    if authorization:
        headers["Authorization"] = authorization
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return gateway.http.post("/mcp", json=body, headers=headers)


async def call(gateway: Gateway, secret: str, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    async with mcp_client(gateway, secret) as client:
        return await client.call_tool(tool, arguments or {})


@MODES
async def test_lists_the_keys_endpoints_as_tools(gateway: Gateway, account, mode: str) -> None:
    _, secret = account
    async with mcp_client(gateway, secret, mode) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}

    registry = gateway.app.state.registry
    expected = {e.tool_name for e in registry.endpoints()} | META_TOOLS
    assert set(listed) == expected
    create = listed["github_create_issue"]
    endpoint = registry.endpoint("github", "create_issue")
    assert create.description == endpoint.spec.description
    assert create.input_schema == endpoint.params_schema
    assert create.input_schema["required"] == ["repo", "title"]
    assert create.annotations == types.ToolAnnotations(
        title="GitHub: create issue",
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=False,
        open_world_hint=True,
    )
    user = listed["github_get_authenticated_user"].annotations
    assert user is not None and (user.read_only_hint, user.idempotent_hint) == (True, True)
    merge = listed["github_merge_pull_request"].annotations
    assert merge is not None and (merge.read_only_hint, merge.destructive_hint) == (False, True)


@MODES
async def test_a_tool_call_runs_the_pipeline_and_is_recorded(gateway: Gateway, account, provider, mode: str) -> None:
    user_id, secret = account
    async with mcp_client(gateway, secret, mode) as client:
        me = await client.call_tool("github_get_authenticated_user", {})
        issue = await client.call_tool(
            "github_create_issue", {"repo": "acme/webapp", "title": "Bug report", "labels": ["bug"]}
        )

    assert not me.is_error
    assert me.structured_content["status"] == 200
    assert me.structured_content["data"] == {"login": "octocat", "id": 1}
    assert not issue.is_error
    assert issue.structured_content["status"] == 201
    assert issue.structured_content["data"]["title"] == "Bug report"
    [_, sent] = provider.api_requests()
    assert (sent.method, sent.path) == ("POST", "/api/repos/acme/webapp/issues")
    assert sent.headers["authorization"].startswith("Bearer gho_")

    run = gateway.run(issue.structured_content["run_id"])
    assert run.user_id == user_id
    assert (run.integration, run.endpoint, run.status, run.http_status) == ("github", "create_issue", "completed", 201)
    [key] = [k for k in _keys(gateway, user_id)]
    assert run.api_key_id == key


async def test_an_unconnected_integration_gives_an_actionable_error(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    secret = gateway.key(user_id)
    result = await call(gateway, secret, "github_get_authenticated_user")

    lines = error_lines(result)
    assert lines["error"] == "integration_not_connected"
    assert lines["message"] == "GitHub is not connected for this account."
    assert lines["action_url"] == "http://127.0.0.1:9999/dashboard/integrations/github"
    assert 'wait_for_connection with {"integration": "github"}' in lines["next_step"]
    waitpoint = json.loads(lines["waitpoint"])
    assert waitpoint == result.structured_content["waitpoint"]
    assert waitpoint["id"] and waitpoint["wait_url"].startswith("http://127.0.0.1:9999/")
    assert result.structured_content["error"] == "integration_not_connected"
    assert result.structured_content["action_url"] == lines["action_url"]
    run = gateway.run(lines["run_id"])
    assert (run.user_id, run.status, run.error_code) == (user_id, "failed", "integration_not_connected")
    assert provider.api_requests() == []


async def test_an_integration_without_an_oauth_app_says_so_and_opens_no_waitpoint(gateway: Gateway, provider) -> None:
    secret = gateway.key(gateway.user())
    setup = "http://127.0.0.1:9999/dashboard/integrations/slack/setup"
    results = [
        await call(gateway, secret, "slack_list_users"),
        await call(gateway, secret, "connect_integration", {"integration": "slack"}),
        await call(gateway, secret, "wait_for_connection", {"integration": "slack", "timeout_seconds": 30}),
    ]
    for result in results:
        lines = error_lines(result)
        assert lines["error"] == "integration_not_connected"
        assert "Slack is not set up on this gateway" in lines["message"]
        assert lines["action_url"] == setup
        assert "waitpoint" not in lines and "administrator" in lines["next_step"]
        assert "wait_for_connection" not in lines["next_step"]
    listed = (await call(gateway, secret, "list_integrations")).structured_content["integrations"]
    [slack] = [i for i in listed if i["integration"] == "slack"]
    assert slack["status"] == "not_set_up" and slack["action_url"] == setup
    assert provider.api_requests() == []


async def test_a_reconnect_error_links_to_reconnect(gateway: Gateway, account) -> None:
    user_id, secret = account
    _set_status(gateway, user_id, "github", "needs_reconnect")
    lines = error_lines(await call(gateway, secret, "github_get_authenticated_user"))
    assert lines["error"] == "token_expired"
    assert lines["action_url"] == "http://127.0.0.1:9999/dashboard/integrations/github?reconnect=1"


async def test_an_upstream_failure_is_a_tool_error_with_status_and_data(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    gateway.connect(user_id, provider, "fakeapi")
    result = await call(gateway, secret, "fakeapi_missing")

    lines = error_lines(result)
    assert (lines["error"], lines["status"]) == ("upstream_error", "404")
    assert lines["message"] == "Fake API answered HTTP 404."
    assert result.structured_content["data"] == {"message": "Not Found"}


async def test_bad_arguments_come_back_field_by_field(gateway: Gateway, account, provider) -> None:
    _, secret = account
    result = await call(gateway, secret, "github_create_issue", {"repo": "acme/webapp", "colour": "red"})

    lines = error_lines(result)
    assert lines["error"] == "bad_request"
    assert result.structured_content["details"] == [
        {"field": "colour", "message": "is not a param of this endpoint"},
        {"field": "title", "message": "is required"},
    ]
    assert provider.api_requests() == []


async def test_a_call_held_for_approval_says_where_to_approve_it(gateway: Gateway, account, provider) -> None:
    user_id, _ = account
    secret = gateway.key(user_id, require_approval=True)
    result = await call(gateway, secret, "github_create_issue", {"repo": "acme/webapp", "title": "Bug report"})

    assert not result.is_error
    held = result.structured_content
    assert (held["status"], held["approval"]) == ("pending", "pending")
    assert held["action_url"].startswith("http://127.0.0.1:9999/")
    assert held["waitpoint"]["id"]
    assert provider.api_requests() == []


async def test_an_unknown_tool_is_not_found(gateway: Gateway, account) -> None:
    _, secret = account
    lines = error_lines(await call(gateway, secret, "github_delete_everything"))
    assert lines["error"] == "not_found"
    assert "search_tools" in lines["message"]


async def test_a_scoped_key_sees_and_calls_only_its_integrations(gateway: Gateway, account, provider) -> None:
    user_id, _ = account
    secret = gateway.key(user_id, integrations=["fakeapi"])
    async with mcp_client(gateway, secret) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        refused = await client.call_tool("github_get_authenticated_user", {})
        listed = await client.call_tool("list_integrations", {})
        search = await client.call_tool("search_tools", {"query": "user"})

    assert names - META_TOOLS == {e.tool_name for e in gateway.app.state.registry.get("fakeapi").endpoints.values()}
    lines = error_lines(refused)
    assert lines["error"] == "scope_not_allowed"
    assert lines["action_url"].startswith("http://127.0.0.1:9999/dashboard/keys/")
    assert [i["integration"] for i in listed.structured_content["integrations"]] == ["fakeapi"]
    assert all(t["name"].startswith("fakeapi_") for t in search.structured_content["tools"])
    assert provider.api_requests() == []


@pytest.mark.parametrize("header", [None, "Bearer sk_unknown", "Basic c2s6"])
async def test_without_a_valid_key_mcp_answers_401_in_the_error_shape(gateway: Gateway, header: str | None) -> None:
    response = post_mcp(gateway, header)
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthorized",
        "message": response.json()["message"],
        "request_id": response.headers["x-request-id"],
    }


async def test_a_key_revoked_mid_session_stops_working(gateway: Gateway, account) -> None:
    user_id, secret = account
    async with mcp_client(gateway, secret, "legacy") as client:
        assert (await client.list_tools()).tools
        for key_id in _keys(gateway, user_id):
            keys.revoke(gateway.engine, key_id)
        # The SDK client reports any non-JSON-RPC 4xx as one generic error; the status is 401.
        with pytest.raises(MCPError, match="Server returned an error response"):
            await client.call_tool("github_get_authenticated_user", {})
    assert post_mcp(gateway, f"Bearer {secret}").status_code == 401


async def test_list_integrations_gives_each_status(gateway: Gateway, account) -> None:
    user_id, secret = account
    result = await call(gateway, secret, "list_integrations")
    assert not result.is_error
    by_name = {i["integration"]: i for i in result.structured_content["integrations"]}
    assert by_name["github"]["status"] == "connected"
    assert by_name["github"]["account"] == "octocat"
    assert by_name["github"]["scopes"] == ["repo", "read:user"]
    assert by_name["fakeapi"]["status"] == "not_connected"
    assert by_name["fakeapi"]["action_url"] == "http://127.0.0.1:9999/dashboard/integrations/fakeapi"

    _set_status(gateway, user_id, "github", "needs_reconnect")
    result = await call(gateway, secret, "list_integrations")
    github = next(i for i in result.structured_content["integrations"] if i["integration"] == "github")
    assert github["status"] == "needs_reconnect"
    assert github["action_url"].endswith("/dashboard/integrations/github?reconnect=1")


async def test_connect_integration_gives_the_dashboard_link(gateway: Gateway, account) -> None:
    _, secret = account
    result = await call(gateway, secret, "connect_integration", {"integration": "fakeapi"})
    assert not result.is_error
    assert result.structured_content["action_url"] == "http://127.0.0.1:9999/dashboard/integrations/fakeapi"
    assert result.structured_content["status"] == "not_connected"

    missing = error_lines(await call(gateway, secret, "connect_integration", {"integration": "nope"}))
    assert missing["error"] == "not_found"
    wrong = error_lines(await call(gateway, secret, "connect_integration", {}))
    assert wrong["error"] == "bad_request"
    assert "integration" in wrong["details"]


async def test_connect_integration_respects_the_plan(gateway: Gateway, account) -> None:
    user_id, secret = account  # github is connected
    services = gateway.app.state.services
    services.plans.plans["one"] = services.plans.get("free").model_copy(update={"name": "one", "max_connections": 1})
    with gateway.engine.begin() as c:
        from sqlalchemy import update

        from gateway.storage.models import User

        c.execute(update(User).where(User.id == user_id).values(plan="one"))
    services.plans.forget(user_id)
    refused = await call(gateway, secret, "connect_integration", {"integration": "fakeapi"})
    assert refused.is_error
    lines = error_lines(refused)
    assert lines["error"] == "plan_limit_reached" and lines["action_url"].endswith("/dashboard/usage")
    again = await call(gateway, secret, "connect_integration", {"integration": "github"})
    assert not again.is_error  # reconnecting stays allowed


async def test_search_tools_ranks_by_name_then_description(gateway: Gateway, account) -> None:
    _, secret = account
    result = await call(gateway, secret, "search_tools", {"query": "create an issue", "limit": 3})
    assert not result.is_error
    found = result.structured_content["tools"]
    assert found[0]["name"] == "github_create_issue"
    assert len(found) == 3
    endpoint = gateway.app.state.registry.endpoint("github", "create_issue")
    assert found[0]["inputSchema"] == endpoint.params_schema
    assert found[0]["description"] == endpoint.spec.description

    merges = await call(gateway, secret, "search_tools", {"query": "merge pull request", "integration": "github"})
    assert merges.structured_content["tools"][0]["name"] == "github_merge_pull_request"
    nothing = await call(gateway, secret, "search_tools", {"query": "zebra"})
    assert nothing.structured_content == {"tools": [], "total": 0}


# PostgreSQL too: the wait compares stored timestamps, which the two databases keep differently.
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


@BOTH_DATABASES
async def test_wait_for_connection_returns_when_the_person_connects(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    secret = gateway.key(user_id)

    def connect_later() -> None:
        time.sleep(1.5)
        gateway.connect(user_id, provider)

    thread = threading.Thread(target=connect_later)
    started = time.monotonic()
    thread.start()
    try:
        result = await call(gateway, secret, "wait_for_connection", {"integration": "github", "timeout_seconds": 20})
    finally:
        thread.join()

    assert 1.5 <= time.monotonic() - started < 10
    assert not result.is_error
    assert result.structured_content["completed"] is True
    assert (result.structured_content["status"], result.structured_content["account"]) == ("connected", "octocat")
    again = await call(gateway, secret, "github_get_authenticated_user")
    assert again.structured_content["data"]["login"] == "octocat"


async def test_wait_for_connection_waits_for_a_new_connection_and_is_bounded(gateway: Gateway, account) -> None:
    user_id, secret = account
    _set_status(gateway, user_id, "github", "needs_reconnect")
    started = time.monotonic()
    result = await call(gateway, secret, "wait_for_connection", {"integration": "github", "timeout_seconds": 1})
    assert 1 <= time.monotonic() - started < 5
    assert not result.is_error
    assert result.structured_content["completed"] is False
    assert result.structured_content["status"] == "needs_reconnect"

    too_long = error_lines(
        await call(gateway, secret, "wait_for_connection", {"integration": "github", "timeout_seconds": 301})
    )
    assert too_long["error"] == "bad_request"


@BOTH_DATABASES
async def test_a_reconnection_while_waiting_ends_the_wait(gateway: Gateway, account) -> None:
    user_id, secret = account
    box = gateway.box

    def reconnect_later() -> None:
        time.sleep(1)
        connect.store(
            gateway.engine, box, user_id=user_id, integration="github", access_token="gho_new", account="hubot"
        )

    thread = threading.Thread(target=reconnect_later)
    thread.start()
    try:
        # Already connected: only a connection made after the wait started ends it.
        result = await call(gateway, secret, "wait_for_connection", {"integration": "github", "timeout_seconds": 15})
    finally:
        thread.join()
    assert result.structured_content["completed"] is True
    assert result.structured_content["account"] == "hubot"


def test_the_host_check_follows_the_public_url(database_url: str, provider) -> None:
    settings = make_settings(database_url, provider.url, public_url="https://gateway.example.com")
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(settings, server)
        secret = gateway.key(gateway.user())
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
        headers = {"Authorization": f"Bearer {secret}", "Accept": "application/json, text/event-stream"}

        def status(host: str, origin: str | None = None) -> int:
            extra = {"Host": host} | ({"Origin": origin} if origin else {})
            return gateway.http.post("/mcp", json=body, headers=headers | extra).status_code

        assert status("gateway.example.com", "https://gateway.example.com") == 200
        assert status(f"127.0.0.1:{server.port}") == 200
        assert status("evil.example") == 421
        assert status("gateway.example.com", "https://evil.example") == 403
        gateway.http.close()


def _keys(gateway: Gateway, user_id: int) -> list[int]:
    from sqlalchemy import select

    from gateway.storage.models import ApiKey

    with gateway.engine.connect() as c:
        return [row.id for row in c.execute(select(ApiKey.id).where(ApiKey.user_id == user_id))]


def _set_status(gateway: Gateway, user_id: int, integration: str, status: str) -> None:
    with gateway.engine.begin() as c:
        c.execute(
            update(Connection)
            .where(Connection.user_id == user_id, Connection.integration == integration)
            .values(status=status)
        )


@MODES
async def test_waiting_reports_progress(gateway: Gateway, account, monkeypatch, mode: str) -> None:
    user_id, secret = account
    monkeypatch.setattr(mcp, "PROGRESS_EVERY", 0.2)
    _set_status(gateway, user_id, "github", "needs_reconnect")
    reported: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    async with mcp_client(gateway, secret, mode) as client:
        result = await client.call_tool(
            "wait_for_connection", {"integration": "github", "timeout_seconds": 2.5}, progress_callback=on_progress
        )
    assert result.structured_content["completed"] is False
    assert reported  # one every 0.2 s when the machine is idle; far fewer under load
    assert all(total == 2.5 and message == "Waiting for the person to connect GitHub" for _, total, message in reported)
    assert [p for p, _, _ in reported] == sorted(p for p, _, _ in reported)


def test_the_error_text_leads_with_what_to_fix() -> None:
    exc = IntegrationNotConnected(
        "GitHub is not connected for this account.",
        action_url="https://gw.example/dashboard/integrations/github",
        extra={"waitpoint": {"id": "waitpoint_1", "wait_url": "https://gw.example/w/1"}},
        headers={"X-Run-Id": "run_1"},
    )
    result = mcp.error_result(exc, "req_1", "github")
    [content] = result.content
    assert isinstance(content, types.TextContent)
    assert content.text.splitlines() == [
        "error: integration_not_connected",
        "message: GitHub is not connected for this account.",
        "action_url: https://gw.example/dashboard/integrations/github",
        'waitpoint: {"id": "waitpoint_1", "wait_url": "https://gw.example/w/1"}',
        "next_step: Ask the person to open action_url to connect github, then call wait_for_connection with "
        '{"integration": "github"} and retry.',
        "request_id: req_1",
        "run_id: run_1",
    ]
    assert result.is_error
    assert result.structured_content["waitpoint"] == {"id": "waitpoint_1", "wait_url": "https://gw.example/w/1"}


@MODES
async def test_an_idempotency_key_in_meta_makes_a_repeat_answer_the_first_answer(
    gateway: Gateway, account, provider, mode: str
) -> None:
    _, secret = account
    issue = {"repo": "acme/webapp", "title": "Bug report"}
    meta = {"gateway/idempotency_key": "issue-42"}
    async with mcp_client(gateway, secret, mode) as client:
        first = await client.call_tool("github_create_issue", issue, meta=meta)
        again = await client.call_tool("github_create_issue", issue, meta=meta)
        other = await client.call_tool("github_create_issue", {**issue, "title": "Another"}, meta=meta)

    assert not first.is_error and first.structured_content["status"] == 201
    assert again.structured_content == first.structured_content
    assert len(provider.api_requests()) == 1
    assert error_lines(other)["error"] == "idempotency_mismatch"
    # The key is the API key's, whichever way in: the same call over /v1 gets the same answer.
    replayed = gateway.http.post(
        "/v1/github/create_issue",
        json={"params": issue},
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "issue-42"},
    )
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.headers["x-run-id"] == first.structured_content["run_id"]
    assert replayed.json() == {k: v for k, v in first.structured_content.items() if k != "run_id"}
    assert len(provider.api_requests()) == 1


async def test_a_repeated_key_replays_a_refused_call_as_the_same_error(gateway: Gateway, account, provider) -> None:
    _, secret = account
    meta = {"gateway/idempotency_key": "no-title"}
    async with mcp_client(gateway, secret) as client:
        first = await client.call_tool("github_create_issue", {"repo": "acme/webapp"}, meta=meta)
        again = await client.call_tool("github_create_issue", {"repo": "acme/webapp"}, meta=meta)

    assert error_lines(first)["error"] == "bad_request"
    replayed = error_lines(again)
    assert replayed["error"] == "bad_request" and replayed["next_step"] == error_lines(first)["next_step"]
    assert again.structured_content["details"] == first.structured_content["details"]
    assert again.structured_content["run_id"] == first.structured_content["run_id"]
    assert provider.api_requests() == []


async def test_a_tool_call_queued_in_meta_answers_at_once_and_runs_in_its_queue(
    gateway: Gateway, account, provider
) -> None:
    user_id, secret = account
    gateway.connect(user_id, provider, "fakeapi")
    async with mcp_client(gateway, secret) as client:
        queued = [
            await client.call_tool("fakeapi_record", {"queue": "mcp", "seq": seq}, meta={"gateway/queue": "from-mcp"})
            for seq in range(3)
        ]

    for result in queued:
        assert not result.is_error, result
        assert result.structured_content["status"] in ("pending", "running", "completed")
        assert result.structured_content["queue_name"] == "from-mcp"
        assert result.structured_content["run_id"] == result.structured_content["id"]
    finished = [_finished(gateway, r.structured_content["id"]) for r in queued]
    assert [(run.status, run.queue_name, run.user_id) for run in finished] == [("completed", "from-mcp", user_id)] * 3
    assert [c[1] for c in provider.recorded] == [0, 1, 2]


async def test_meta_options_are_checked_like_the_v1_body(gateway: Gateway, account, provider) -> None:
    _, secret = account
    issue = {"repo": "acme/webapp", "title": "Bug report"}
    async with mcp_client(gateway, secret) as client:
        unknown = await client.call_tool("github_create_issue", issue, meta={"gateway/priority": "high"})
        bad_queue = await client.call_tool("github_create_issue", issue, meta={"gateway/queue": "a b"})
        bad_key = await client.call_tool("github_create_issue", issue, meta={"gateway/idempotency_key": ""})
        direct = await client.call_tool("github_create_issue", issue, meta={"gateway/expires": 60})

    assert error_lines(unknown)["error"] == "bad_request"
    assert unknown.structured_content["details"] == [
        {"field": "_meta.gateway/priority", "message": "is not a known key"}
    ]
    for result in (bad_queue, bad_key, direct):
        assert error_lines(result)["error"] == "bad_request"
    assert provider.api_requests() == []


def _finished(gateway: Gateway, run_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = gateway.run(run_id)
        if run.status in ("completed", "failed", "timeout", "cancelled"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")
