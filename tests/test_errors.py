"""Every error code the gateway answers with, in its one JSON shape."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import update

from gateway.app import create_app
from gateway.errors import all_error_classes
from gateway.settings import IntegrationOverrides
from gateway.storage import keys
from gateway.storage.models import Connection
from tests.conftest import Gateway
from tests.servers import ServerThread, free_port

SHAPE = {"error", "message", "action_url", "details", "request_id", "waitpoint"}


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert set(body) <= SHAPE
    assert body["message"] and isinstance(body["message"], str)
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


def test_bad_request_malformed_json(gateway: Gateway, account) -> None:
    _, secret = account
    response = gateway.http.post(
        "/v1/github/get_authenticated_user",
        content=b'{"params": ',
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    assert_error(response, 400, "bad_request")


def test_unauthorized_without_key_and_with_revoked_key(gateway: Gateway, account) -> None:
    user_id, secret = account
    assert_error(gateway.http.post("/v1/github/get_authenticated_user", json={}), 401, "unauthorized")
    assert_error(gateway.call("sk_" + "A" * 43, "github", "get_authenticated_user"), 401, "unauthorized")
    [key] = [k for k in [keys.authenticate(gateway.engine, secret)] if k]
    keys.revoke(gateway.engine, key.id)
    assert_error(gateway.call(secret, "github", "get_authenticated_user"), 401, "unauthorized")


def test_token_expired_for_a_connection_needing_reconnection(gateway: Gateway, account) -> None:
    user_id, secret = account
    with gateway.engine.begin() as c:
        c.execute(update(Connection).where(Connection.user_id == user_id).values(status="needs_reconnect"))
    body = assert_error(gateway.call(secret, "github", "get_authenticated_user"), 401, "token_expired")
    assert body["action_url"].endswith("/dashboard/integrations/github?reconnect=1")


def test_integration_not_connected(gateway: Gateway) -> None:
    secret = gateway.key(gateway.user())
    body = assert_error(gateway.call(secret, "github", "get_authenticated_user"), 403, "integration_not_connected")
    assert body["action_url"] == "http://127.0.0.1:9999/dashboard/integrations/github"


def test_scope_not_allowed(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider)
    secret = gateway.key(user_id, integrations=["fakeapi"])
    body = assert_error(gateway.call(secret, "github", "get_authenticated_user"), 403, "scope_not_allowed")
    assert body["action_url"].startswith("http://127.0.0.1:9999/dashboard/keys/")
    assert provider.api_requests() == []


@pytest.mark.parametrize("path", ["/v1/nope/thing", "/v1/github/nope", "/nowhere"])
def test_not_found(gateway: Gateway, account, path: str) -> None:
    _, secret = account
    response = gateway.http.post(path, json={"params": {}}, headers={"Authorization": f"Bearer {secret}"})
    assert_error(response, 404, "not_found")


def test_method_not_allowed(gateway: Gateway) -> None:
    assert_error(gateway.http.delete("/v1/github/create_issue"), 405, "method_not_allowed")


def test_upstream_unreachable(settings, provider) -> None:
    closed = free_port()
    overrides = dict(settings.integrations)
    overrides["github"] = dataclasses.replace(overrides["github"], base_url=f"http://127.0.0.1:{closed}/api")
    with ServerThread(create_app(dataclasses.replace(settings, integrations=overrides))) as server:
        gw = Gateway(dataclasses.replace(settings, integrations=overrides), server)
        user_id = gw.user()
        gw.connect(user_id, provider)
        body = assert_error(gw.call(gw.key(user_id), "github", "get_authenticated_user"), 502, "upstream_unreachable")
        assert str(closed) not in body["message"] or "127.0.0.1" in body["message"]
        gw.http.close()


def test_upstream_timeout(settings, provider) -> None:
    quick = dataclasses.replace(settings, upstream_timeout=0.3)
    with ServerThread(create_app(quick)) as server:
        gw = Gateway(quick, server)
        user_id = gw.user()
        gw.connect(user_id, provider, integration="fakeapi")
        response = gw.call(gw.key(user_id), "fakeapi", "slow", {"seconds": 2})
        assert_error(response, 504, "upstream_timeout")
        gw.http.close()


@pytest.mark.parametrize("endpoint", ["big", "gzip_bomb"])
def test_upstream_response_too_large(gateway: Gateway, provider, endpoint: str) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    cap = gateway.settings.upstream_max_response_bytes
    response = gateway.call(gateway.key(user_id), "fakeapi", endpoint, {"bytes": cap + 1})
    body = assert_error(response, 502, "upstream_response_too_large")
    assert body["details"] == {"limit_bytes": cap}
    # Just under the cap passes: the cap counts decompressed bytes and the headers (well under 1 KiB), not more.
    assert gateway.call(gateway.key(user_id), "fakeapi", endpoint, {"bytes": cap - 1024}).status_code == 200


def test_internal_error_has_no_stack_trace(gateway: Gateway, account) -> None:
    user_id, secret = account
    # Tokens encrypted under another key: what a lost or changed secret key looks like.
    with gateway.engine.begin() as c:
        c.execute(update(Connection).where(Connection.user_id == user_id).values(access_token="gAAAAAnotatoken"))
    body = assert_error(gateway.call(secret, "github", "get_authenticated_user"), 500, "internal_error")
    assert "InvalidToken" not in body["message"]


def test_upstream_errors_are_proxied_not_disguised(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    response = gateway.call(gateway.key(user_id), "fakeapi", "missing")
    assert response.status_code == 404
    assert response.json() == {
        "status": 404,
        "data": {"message": "Not Found"},
        "headers": {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "59"},
    }


def test_ok_false_bodies_are_surfaced_as_upstream_errors(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    response = gateway.call(gateway.key(user_id), "fakeapi", "slack_style", {"text": "hi"})
    assert response.status_code == 502
    body = response.json()
    assert body["status"] == 200
    assert body["upstream_error"] == "channel_not_found"
    assert body["data"]["ok"] is False


def test_text_bodies_come_back_as_text(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    response = gateway.call(gateway.key(user_id), "fakeapi", "text")
    assert response.json()["data"] == "plain text answer"


def test_every_error_class_has_a_distinct_code_and_docstring() -> None:
    classes = all_error_classes()
    assert len({c.code for c in classes}) == len(classes)
    assert all(c.__doc__ for c in classes)


def test_https_is_required_unless_allowed(settings, provider) -> None:
    strict = dataclasses.replace(settings, allow_http_upstreams=False)
    with ServerThread(create_app(strict)) as server:
        gw = Gateway(strict, server)
        user_id = gw.user()
        gw.connect(user_id, provider)
        assert_error(gw.call(gw.key(user_id), "github", "get_authenticated_user"), 400, "bad_request")
        assert provider.api_requests() == []
        gw.http.close()


def test_overrides_point_an_integration_elsewhere() -> None:
    assert IntegrationOverrides().base_url is None
