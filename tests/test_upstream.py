"""Building upstream requests, and sending them to a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gateway.core.runtime import clients
from gateway.errors import BadRequest, UpstreamResponseTooLarge
from gateway.settings import BUILTIN_INTEGRATIONS, Settings
from gateway.specs.registry import load_registry
from gateway.upstream import build as upstream
from tests.conftest import Gateway
from tests.servers import ServerThread

REGISTRY = load_registry([Path(__file__).parent / "integrations", BUILTIN_INTEGRATIONS / "github.yaml"])


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
    assert request.url.raw_path == "/api/echo/x%20y%3F%23"
    assert request.url.host == "fake.invalid"


def test_connection_placeholders_in_base_url() -> None:
    ep = endpoint("github", "get_authenticated_user")
    request = upstream.build_request(
        ep,
        {},
        base_url="https://api.atlassian.com/ex/jira/{connection.cloud_id}",
        connection_extra={"cloud_id": "abc-123"},
    )
    assert str(request.url) == "https://api.atlassian.com/ex/jira/abc-123/user"
    request = upstream.build_request(
        ep,
        {},
        base_url="{connection.instance_url}/services/data/v59.0",
        connection_extra={"instance_url": "https://na1.my.salesforce.com"},
    )
    assert str(request.url) == "https://na1.my.salesforce.com/services/data/v59.0/user"
    for bad in ({"cloud_id": "../x"}, {"cloud_id": "a/b"}, {}):
        with pytest.raises(BadRequest):
            upstream.build_request(
                ep, {}, base_url="https://api.atlassian.com/ex/jira/{connection.cloud_id}", connection_extra=bad
            )
    for bad_origin in ("http://na1.salesforce.com", "https://user@evil.com", "javascript:alert(1)"):
        with pytest.raises(BadRequest):
            upstream.build_request(
                ep, {}, base_url="{connection.instance_url}/x", connection_extra={"instance_url": bad_origin}
            )


class Upstream:
    """A one-route upstream on 127.0.0.1 answering whatever the test sets."""

    def __init__(self) -> None:
        self.response = Response()
        self.seen: list[Request] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            self.seen.append(Request(scope))
            await self.response(scope, receive, send)


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[Upstream, str]]:
    app = Upstream()
    with ServerThread(app, lifespan="off") as server:
        yield app, server.url


# The fake upstream listens on loopback over plain http: both must be allowed.
LOOPBACK = Settings(secret_keys=("x",), allow_http_upstreams=True, egress_allow=("127.0.0.1/32",))


def send(fake: tuple[Upstream, str], response: Response, max_bytes: int = 1000) -> upstream.UpstreamResponse:
    app, url = fake
    app.response = response

    async def go() -> upstream.UpstreamResponse:
        async with clients(LOOPBACK) as client:
            return await upstream.send(client, upstream.request_for_url("GET", url + "/a", {}), max_bytes)

    return asyncio.run(go())


def test_json_text_and_empty_bodies(fake) -> None:  # type: ignore[no-untyped-def]
    assert send(fake, JSONResponse({"a": 1})).data == {"a": 1}
    assert send(fake, PlainTextResponse("hi")).data == "hi"
    assert send(fake, Response(status_code=204)).data is None
    broken = send(fake, Response(b"{nope", media_type="application/json"))
    assert broken.data == "{nope"
    vendor = send(fake, Response(b'{"a":1}', media_type="application/vnd.api+json"))
    assert vendor.data == {"a": 1}


def test_cap_counts_decompressed_bytes(fake) -> None:  # type: ignore[no-untyped-def]
    bomb = gzip.compress(b"0" * 5000)
    assert len(bomb) < 1000
    with pytest.raises(UpstreamResponseTooLarge):
        send(fake, Response(bomb, headers={"content-encoding": "gzip"}))


def test_only_rate_limit_and_link_headers_pass(fake) -> None:  # type: ignore[no-untyped-def]
    response = send(
        fake,
        JSONResponse(
            {}, headers={"x-ratelimit-remaining": "1", "retry-after": "3", "link": "<x>", "set-cookie": "a=b"}
        ),
    )
    assert response.headers == {"x-ratelimit-remaining": "1", "retry-after": "3", "link": "<x>"}


def test_ids_are_strictly_increasing_within_a_process() -> None:
    from gateway.storage.models import new_id

    ids = [new_id("run") for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == len(ids[0]) for i in ids)


def test_no_client_carries_one_callers_cookies_to_the_next(fake) -> None:  # type: ignore[no-untyped-def]
    app, url = fake
    response = JSONResponse({})
    response.set_cookie("session", "secret-of-the-first-caller")
    app.response = response

    async def twice() -> None:
        async with clients(LOOPBACK) as client:
            for _ in range(3):
                await upstream.send(client, upstream.request_for_url("GET", url + "/", {}), 1000)

    app.seen.clear()
    asyncio.run(twice())
    assert len(app.seen) == 3 and [r.headers.get("cookie") for r in app.seen] == [None] * 3


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body_is_answered_cleanly_on_a_kept_alive_connection(
    gateway: Gateway, provider, status: int
) -> None:  # type: ignore[no-untyped-def]
    # Issue #15: the gateway answered 204 and then wrote a JSON body; the server raised
    # "Response content longer than Content-Length" and the caller's connection broke.
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    secret = gateway.key(user_id)
    connection = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=30)
    try:
        answers = []
        for _ in range(2):
            connection.request(
                "POST",
                "/v1/fakeapi/status",
                body=json.dumps({"params": {"code": status}}),
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
            run_id = response.getheader("x-run-id")
            socket = connection.sock
            assert socket is not None  # still open: the next request goes on the same connection
        assert connection.sock is socket
    finally:
        connection.close()
    # The body every call answers with needs a status that may carry one.
    body = {"status": status, "data": None, "headers": {"x-ratelimit-remaining": "7"}}
    assert answers == [(200, body), (200, body)]
    run = gateway.run(run_id or "")
    assert (run.upstream_status, run.http_status, run.status) == (status, 200, "completed")
