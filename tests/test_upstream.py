"""Unit tests of building and sending upstream requests, with httpx.MockTransport."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import httpx
import pytest

from gateway import upstream
from gateway.errors import BadRequest, UpstreamResponseTooLarge
from gateway.specs import load_registry

REGISTRY = load_registry([Path(__file__).parent / "integrations", Path(__file__).parents[1] / "integrations" / "github.yaml"])


def endpoint(integration: str, name: str):  # type: ignore[no-untyped-def]
    found = REGISTRY.endpoint(integration, name)
    assert found is not None
    return found


def test_host_never_changes_and_path_is_encoded_per_segment() -> None:
    ep = endpoint("github", "get_repo")
    request = upstream.build_request(ep, {"repo": "acme/web.app"}, base_url="https://api.github.com")
    assert str(request.url) == "https://api.github.com/repos/acme/web.app"
    ep = endpoint("fakeapi", "echo")
    request = upstream.build_request(ep, {"item": "x y?#"}, base_url="https://fake.invalid/api")
    assert request.url.raw_path == b"/api/echo/x%20y%3F%23"
    assert request.url.host == "fake.invalid"


def test_connection_placeholders_in_base_url() -> None:
    ep = endpoint("github", "get_authenticated_user")
    request = upstream.build_request(
        ep, {}, base_url="https://api.atlassian.com/ex/jira/{connection.cloud_id}", connection_extra={"cloud_id": "abc-123"}
    )
    assert str(request.url) == "https://api.atlassian.com/ex/jira/abc-123/user"
    request = upstream.build_request(
        ep, {}, base_url="{connection.instance_url}/services/data/v59.0", connection_extra={"instance_url": "https://na1.my.salesforce.com"}
    )
    assert str(request.url) == "https://na1.my.salesforce.com/services/data/v59.0/user"
    for bad in ({"cloud_id": "../x"}, {"cloud_id": "a/b"}, {}):
        with pytest.raises(BadRequest):
            upstream.build_request(ep, {}, base_url="https://api.atlassian.com/ex/jira/{connection.cloud_id}", connection_extra=bad)
    for bad_origin in ("http://na1.salesforce.com", "https://user@evil.com", "javascript:alert(1)"):
        with pytest.raises(BadRequest):
            upstream.build_request(ep, {}, base_url="{connection.instance_url}/x", connection_extra={"instance_url": bad_origin})


def send(handler, max_bytes: int = 1000):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            request = upstream.UpstreamRequest("GET", httpx.URL("https://x.test/a"), {}, [])
            return await upstream.send(client, request, max_bytes)

    return asyncio.run(go())


def test_json_text_and_empty_bodies() -> None:
    assert send(lambda r: httpx.Response(200, json={"a": 1})).data == {"a": 1}
    assert send(lambda r: httpx.Response(200, text="hi")).data == "hi"
    assert send(lambda r: httpx.Response(204)).data is None
    broken = send(lambda r: httpx.Response(200, content=b"{nope", headers={"content-type": "application/json"}))
    assert broken.data == "{nope"
    vendor = send(lambda r: httpx.Response(200, content=b'{"a":1}', headers={"content-type": "application/vnd.api+json"}))
    assert vendor.data == {"a": 1}


def test_cap_counts_decompressed_bytes() -> None:
    bomb = gzip.compress(b"0" * 5000)
    assert len(bomb) < 1000
    with pytest.raises(UpstreamResponseTooLarge):
        send(lambda r: httpx.Response(200, content=bomb, headers={"content-encoding": "gzip"}))


def test_only_rate_limit_and_link_headers_pass() -> None:
    response = send(
        lambda r: httpx.Response(
            200, json={}, headers={"x-ratelimit-remaining": "1", "retry-after": "3", "link": "<x>", "set-cookie": "a=b"}
        )
    )
    assert response.headers == {"x-ratelimit-remaining": "1", "retry-after": "3", "link": "<x>"}


def test_ids_are_strictly_increasing_within_a_process() -> None:
    from gateway.models import new_id

    ids = [new_id("run") for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == len(ids[0]) for i in ids)


def test_the_shared_client_never_carries_one_callers_cookies_to_the_next() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from gateway.services import make_http_client
    from gateway.settings import Settings
    from tests.servers import ServerThread

    async def echo(request: Request) -> JSONResponse:
        response = JSONResponse({"cookie": request.headers.get("cookie")})
        response.set_cookie("session", "secret-of-the-first-caller")
        return response

    with ServerThread(Starlette(routes=[Route("/", echo)])) as server:

        async def twice() -> list[str | None]:
            async with make_http_client(Settings(secret_keys=("x",))) as client:
                return [(await client.get(server.url + "/")).json()["cookie"] for _ in range(2)]

        assert asyncio.run(twice()) == [None, None]
