"""One refresh-and-retry on 401, expired tokens refreshed first, single-flight, dead grants."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
from sqlalchemy import update

from gateway.storage import connections
from gateway.storage.models import Connection, Run
from tests.conftest import Gateway


def run_row(gateway: Gateway, run_id: str) -> Run:
    return gateway.run(run_id)


def expire_stored_token(gateway: Gateway, user_id: int) -> None:
    with gateway.engine.begin() as c:
        c.execute(
            update(Connection)
            .where(Connection.user_id == user_id)
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        )


def test_known_expired_token_is_refreshed_before_the_call(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    provider.expire_access_tokens()
    expire_stored_token(gateway, user_id)
    response = gateway.call(secret, "github", "get_authenticated_user")
    assert response.status_code == 200, response.text
    assert len(provider.refresh_requests()) == 1
    # The expired token was never sent: the only upstream call used the new one.
    assert len(provider.api_requests()) == 1
    run = run_row(gateway, response.headers["x-run-id"])
    assert (run.refreshed, run.attempts, run.status) == (True, 1, "completed")


def test_401_refreshes_once_and_retries(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    provider.expire_access_tokens()  # the provider says no; the gateway still thinks it is valid
    response = gateway.call(secret, "github", "get_authenticated_user")
    assert response.status_code == 200, response.text
    assert len(provider.refresh_requests()) == 1
    assert len(provider.api_requests()) == 2
    run = run_row(gateway, response.headers["x-run-id"])
    assert (run.refreshed, run.attempts) == (True, 2)


def test_rotated_refresh_token_is_stored(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    for _ in range(3):
        # The provider rejects a reused refresh token: three refreshes in a row
        # only succeed if each rotated token was stored.
        provider.expire_access_tokens()
        assert gateway.call(secret, "github", "get_authenticated_user").status_code == 200
    assert len(provider.refresh_requests()) == 3


def test_old_refresh_token_kept_when_provider_sends_none(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    provider.rotate_refresh_tokens = False
    before = gateway.box.decrypt(connections.get(gateway.engine, user_id, "github").refresh_token)
    for _ in range(2):
        provider.expire_access_tokens()
        assert gateway.call(secret, "github", "get_authenticated_user").status_code == 200
    after = gateway.box.decrypt(connections.get(gateway.engine, user_id, "github").refresh_token)
    assert before == after


def test_twenty_concurrent_calls_refresh_once(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    provider.expire_access_tokens()
    expire_stored_token(gateway, user_id)
    provider.token_delay = 0.3

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            responses = await asyncio.gather(
                *[
                    client.post(
                        "/v1/github/get_authenticated_user",
                        json={"params": {}},
                        headers={"Authorization": f"Bearer {secret}"},
                    )
                    for _ in range(20)
                ]
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 20
    assert len(provider.refresh_requests()) == 1


def test_invalid_grant_marks_the_connection_and_stops_refreshing(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    provider.expire_access_tokens()
    provider.reject_all_refreshes = True
    response = gateway.call(secret, "github", "get_authenticated_user")
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "token_expired"
    assert body["action_url"] == "http://127.0.0.1:9999/dashboard/integrations/github?reconnect=1"
    assert connections.get(gateway.engine, user_id, "github").status == "needs_reconnect"
    assert len(provider.refresh_requests()) == 1

    again = gateway.call(secret, "github", "get_authenticated_user")
    assert again.json()["error"] == "token_expired"
    assert len(provider.refresh_requests()) == 1, "a dead connection must not hit the token endpoint again"

    gateway.connect(user_id, provider)  # the person reconnects
    assert gateway.call(secret, "github", "get_authenticated_user").status_code == 200


def test_token_endpoint_down_is_retryable_not_dead(gateway: Gateway, account, provider) -> None:
    user_id, secret = account
    provider.expire_access_tokens()
    provider.token_endpoint_status = 503
    response = gateway.call(secret, "github", "get_authenticated_user")
    assert response.status_code == 503
    assert response.json()["error"] == "token_refresh_unavailable"
    assert "retry-after" in response.headers
    assert connections.get(gateway.engine, user_id, "github").status == "connected"

    provider.token_endpoint_status = None
    assert gateway.call(secret, "github", "get_authenticated_user").status_code == 200


def test_second_401_after_refresh_is_token_expired_not_a_loop(gateway: Gateway, account, provider) -> None:
    _, secret = account
    provider.always_401 = True
    response = gateway.call(secret, "github", "get_authenticated_user")
    assert response.status_code == 401
    assert response.json()["error"] == "token_expired"
    assert len(provider.refresh_requests()) == 1
    assert len(provider.api_requests()) == 2
    # The API says "reconnect"; the dashboard must say so too.
    assert connections.get(gateway.engine, account[0], "github").status == "needs_reconnect"


def test_connection_without_refresh_token_needs_reconnect_on_401(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider, refresh_token=None)
    secret = gateway.key(user_id)
    provider.expire_access_tokens()
    response = gateway.call(secret, "github", "get_authenticated_user")
    assert response.json()["error"] == "token_expired"
    assert provider.refresh_requests() == []
    assert connections.get(gateway.engine, user_id, "github").status == "needs_reconnect"
