"""The passthrough proxy (/v1/{integration}/proxy/{path}) against the fake provider: the upstream's
own answer, credentials added, paths and headers screened, a real SDK pointed at it."""

from __future__ import annotations

import dataclasses
import http.client
import json
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Gateway, running_gateway

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


def proxied(gateway: Gateway, secret: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return gateway.http.request(method, f"/v1/github/proxy{path}", headers=headers, **kwargs)  # type: ignore[arg-type]


def raw_request(gateway: Gateway, secret: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """A request whose path goes exactly as written: httpx would resolve its dot segments first."""
    parts = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {secret}"})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def test_the_upstreams_own_answer_with_the_connections_credential(gateway: Gateway, account, provider) -> None:
    _, secret = account
    answer = proxied(gateway, secret, "GET", "/user")
    assert answer.status_code == 200 and answer.json() == {"login": "octocat", "id": 1}  # not wrapped
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-ratelimit-limit"] == "60"  # the provider's own, for its SDKs
    assert answer.headers["x-gateway-ratelimit-limit"] == "5000"  # the gateway's, beside them
    assert answer.headers["x-run-id"].startswith("run_") and "x-gateway-error" not in answer.headers
    [sent] = provider.api_requests()
    assert (sent.method, sent.path) == ("GET", "/api/user")
    assert sent.headers["authorization"].startswith("Bearer gho_")  # the connection's, not the gateway key
    assert sent.headers["accept"] == "*/*"  # the caller's own Accept wins over the spec's
    assert sent.headers["x-github-api-version"] == "2022-11-28"  # the spec's other headers are added
    run = gateway.run(answer.headers["x-run-id"])
    assert (run.integration, run.endpoint, run.status, run.http_status) == ("github", "GET /user", "completed", 200)


def test_query_body_and_headers_pass_as_sent_but_never_the_callers_credentials(
    gateway: Gateway, account, provider
) -> None:
    _, secret = account
    answer = proxied(
        gateway,
        secret,
        "PATCH",
        "/echo?state=open&labels=a%2Cb&x=%E2%9C%93",
        content=b'{"title": "t"}',
        headers={
            "Content-Type": "application/json",
            "X-Custom": "kept",
            "Cookie": "session=secret",
            "Proxy-Authorization": "Basic x",
            "X-Forwarded-For": "10.0.0.1",
            "X-Gateway-Queue": "q",
            "X-End-User-Id": "alice",
        },
    )
    assert answer.status_code == 403  # alice has no GitHub connection: the gateway's own answer
    assert answer.headers["x-gateway-error"] == "integration_not_connected"
    answer = proxied(
        gateway,
        secret,
        "PATCH",
        "/echo?state=open&labels=a%2Cb&x=%E2%9C%93",
        content=b'{"title": "t"}',
        headers={
            "Content-Type": "application/json",
            "X-Custom": "kept",
            "Cookie": "session=secret",
            "Proxy-Authorization": "Basic x",
            "X-Forwarded-For": "10.0.0.1",
        },
    )
    echoed = answer.json()
    assert echoed["method"] == "PATCH" and echoed["query"] == "state=open&labels=a%2Cb&x=%E2%9C%93"
    assert json.loads(echoed["body"]) == {"title": "t"}
    seen = echoed["headers"]
    assert seen["x-custom"] == "kept" and seen["content-type"] == "application/json"
    assert seen["authorization"].startswith("Bearer gho_") and secret not in json.dumps(seen)
    for dropped in ("cookie", "proxy-authorization", "x-forwarded-for"):
        assert dropped not in seen, dropped


@pytest.mark.parametrize(
    "path",
    [
        "/v1/github/proxy/../user",
        "/v1/github/proxy/repos/%2e%2e/%2e%2e/user",
        "/v1/github/proxy/repos%2F..%2Fuser",
        "/v1/github/proxy//evil.example/user",
        "/v1/github/proxy/@evil.example/user",
        "/v1/github/proxy/http://evil.example/user",
        "/v1/github/proxy/a\\..\\user",
    ],
)
def test_paths_that_would_leave_the_base_path_are_refused_before_any_request(
    gateway: Gateway, account, provider, path: str
) -> None:
    _, secret = account
    status, headers, body = raw_request(gateway, secret, path)
    assert status in (400, 404), (status, body)
    if status == 400:
        assert headers["x-gateway-error"] == "bad_request"
    assert provider.api_requests() == []


def test_the_gateways_own_errors_say_so(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    unauthenticated = gateway.http.get("/v1/github/proxy/user")
    assert unauthenticated.status_code == 401 and unauthenticated.headers["x-gateway-error"] == "unauthorized"
    narrow = gateway.key(user_id, integrations=["fakeapi"])
    refused = proxied(gateway, narrow, "GET", "/user")
    assert refused.status_code == 403 and refused.headers["x-gateway-error"] == "scope_not_allowed"
    # The provider's own error passes as it is, with no X-Gateway-Error.
    provider.always_401 = True
    theirs = proxied(gateway, secret, "GET", "/user")
    assert theirs.status_code == 401 and theirs.json() == {"message": "Bad credentials"}
    assert "x-gateway-error" not in theirs.headers


def test_an_expired_token_is_refreshed_and_the_request_sent_once_more(gateway: Gateway, account, provider) -> None:
    _, secret = account
    provider.expire_access_tokens()
    answer = proxied(gateway, secret, "GET", "/user")
    assert answer.status_code == 200 and answer.json()["login"] == "octocat"
    assert len(provider.refresh_requests()) == 1
    assert gateway.run(answer.headers["x-run-id"]).refreshed


def test_end_users_and_connection_ids_through_the_proxy(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    first = gateway.connect(owner, provider, account="alice-work", end_user="alice")
    gateway.connect(owner, provider, account="alice-home", end_user="alice")
    alice = {"X-End-User-Id": "alice"}
    assert proxied(gateway, secret, "GET", "/user", headers=alice).json()["login"] == "alice-home"
    chosen = proxied(gateway, secret, "GET", "/user", headers={**alice, "X-Connection-Id": first.public_id})
    assert chosen.json()["login"] == "alice-work"


def test_links_are_pointed_back_at_the_proxy(gateway: Gateway, account, provider) -> None:
    _, secret = account
    answer = proxied(gateway, secret, "GET", "/user/repos")
    proxy = f"{gateway.settings.public_url}/v1/github/proxy"
    assert answer.headers["link"] == f'<{proxy}/user/repos?page=2>; rel="next", <{proxy}/user/repos?page=2>; rel="last"'
    assert provider.url not in answer.headers["link"]  # type: ignore[attr-defined]


def test_a_large_answer_streams_through_and_the_cap_cuts_it(gateway: Gateway, account, provider) -> None:
    _, secret = account
    size = 8 * 1024 * 1024
    received = 0
    with gateway.http.stream(
        "GET", f"/v1/github/proxy/public/big?bytes={size}", headers={"Authorization": f"Bearer {secret}"}
    ) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_raw():
            received += len(chunk)
    assert received == size
    capped = dataclasses.replace(gateway.settings, proxy_max_response_bytes=1024 * 1024)
    with running_gateway(capped) as small:
        user_id = small.user()
        small.connect(user_id, provider)
        key = small.key(user_id)
        # Declared past the cap: refused before anything is sent back.
        declared = small.http.get("/v1/github/proxy/public/text", headers={"Authorization": f"Bearer {key}"})
        assert declared.status_code == 200  # a small declared answer passes
        # Chunked past the cap: the head went out, so the connection is cut rather than completed.
        with (
            pytest.raises(httpx.RemoteProtocolError),
            small.http.stream(
                "GET", f"/v1/github/proxy/public/big?bytes={size}", headers={"Authorization": f"Bearer {key}"}
            ) as answer,
        ):
            for _ in answer.iter_raw():
                pass
        runs = small.http.get("/v1/runs", headers={"Authorization": f"Bearer {key}"}).json()["runs"]
        assert runs[0]["error_code"] == "upstream_response_too_large"


def test_a_github_sdk_pointed_at_the_proxy_works_unchanged(public_gateway: Gateway, provider) -> None:
    import github

    gateway = public_gateway  # its public URL is its own address: the rewritten links lead back to it
    user_id = gateway.user()
    gateway.connect(user_id, provider)
    secret = gateway.key(user_id)
    client = github.Github(auth=github.Auth.Token(secret), base_url=f"{gateway.url}/v1/github/proxy")
    me = client.get_user()
    assert me.login == "octocat"
    # Its pagination follows the rewritten Link back through the gateway, never to the provider.
    repos = [r.name for r in me.get_repos()]
    assert repos == ["repo-1", "repo-2"]
    assert all(r.headers["authorization"].startswith("Bearer gho_") for r in provider.api_requests())
    client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_agent_reaches_any_path_with_the_proxy_request_tool(
    gateway: Gateway, account, provider, anyio_backend: str
) -> None:
    from tests.test_mcp import mcp_client

    _, secret = account
    async with mcp_client(gateway, secret) as client:
        me = await client.call_tool("proxy_request", {"integration": "github", "path": "/user"})
        echoed = await client.call_tool(
            "proxy_request",
            {"integration": "github", "method": "POST", "path": "/echo", "query": {"q": "a b"}, "body": {"x": 1}},
        )
        escape = await client.call_tool("proxy_request", {"integration": "github", "path": "/../user"})
    assert not me.is_error and me.structured_content["status"] == 200
    assert me.structured_content["data"] == {"login": "octocat", "id": 1}
    assert me.structured_content["headers"]["x-ratelimit-limit"] == "60" and me.structured_content["run_id"]
    seen = echoed.structured_content["data"]
    assert seen["method"] == "POST" and seen["query"] == "q=a+b" and json.loads(seen["body"]) == {"x": 1}
    assert escape.is_error and "bad_request" in escape.content[0].text
    assert [r.path for r in provider.api_requests()] == ["/api/user", "/api/echo"]
