"""Two `gateway serve` and two `gateway worker` processes on one PostgreSQL keep every guarantee."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time

import httpx
import pytest
from sqlalchemy import update

from gateway.crypto import Box
from gateway.storage import connections, keys, runs, users
from gateway.storage import database as db
from gateway.storage.models import Connection
from tests.conftest import PostgresSchema, postgres_available
from tests.processes import GatewayProcess, gateway_env

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not running on 127.0.0.1:5432"),
]

SECRET = "cluster-test-secret-" + "c" * 32


@pytest.fixture
def cluster(provider):  # type: ignore[no-untyped-def]
    schema = PostgresSchema()
    engine = db.make_engine(schema.url)
    db.upgrade(engine)
    env = gateway_env(schema.url, provider.url, SECRET, GATEWAY_WORKER_IN_SERVE="false", GATEWAY_WORKER_CONCURRENCY="4")
    processes = [GatewayProcess.serve(env), GatewayProcess.serve(env)]
    processes += [GatewayProcess(["worker"], env), GatewayProcess(["worker"], env)]
    yield engine, processes[:2]
    for process in processes:
        process.stop()
    engine.dispose()
    schema.drop()


def account(engine, provider, integration: str = "github", **key_options):  # type: ignore[no-untyped-def]
    user = users.create(engine, f"{integration}-{time.monotonic_ns()}@example.com", "correct horse battery")
    token = provider.mint()
    connections.save(
        engine,
        Box((SECRET,)),
        user_id=user.id,
        integration=integration,
        access_token=token["access_token"],
        refresh_token=token["refresh_token"],
        expires_at=connections.expires_at_from(token),
    )
    return user.id, keys.create(engine, user.id, **key_options)[1]


def spread(servers, secret: str, path: str, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        f"{servers[i % len(servers)].url}{path}",
                        json=body,
                        headers={"Authorization": f"Bearer {secret}", **(headers or {})},
                    )
                    for i, body in enumerate(bodies)
                ]
            )

    return asyncio.run(go())


def test_exact_daily_limit_across_processes(cluster, provider) -> None:
    engine, servers = cluster
    _, secret = account(engine, provider, daily_limit=11)
    responses = spread(servers, secret, "/v1/github/get_authenticated_user", [{"params": {}}] * 40)
    assert collections.Counter(r.status_code for r in responses) == {200: 11, 429: 29}
    assert len(provider.api_requests()) == 11


def test_single_flight_refresh_across_processes(cluster, provider) -> None:
    engine, servers = cluster
    user_id, secret = account(engine, provider)
    with engine.begin() as c:
        c.execute(update(Connection).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    provider.expire_access_tokens()
    provider.token_delay = 0.3
    responses = spread(servers, secret, "/v1/github/get_authenticated_user", [{"params": {}}] * 30)
    assert [r.status_code for r in responses] == [200] * 30
    assert len(provider.refresh_requests()) == 1


def test_idempotency_keys_across_processes(cluster, provider) -> None:
    engine, servers = cluster
    _, secret = account(engine, provider, integration="fakeapi")
    body = {"params": {"queue": "idem", "seq": 1, "sleep": 0.5}}
    responses = spread(servers, secret, "/v1/fakeapi/record", [body] * 12, headers={"Idempotency-Key": "once"})
    assert set(collections.Counter(r.status_code for r in responses)) <= {200, 409}
    assert len(provider.recorded) == 1, "the upstream was called more than once for one key"
    time.sleep(0.1)
    replay = spread(servers, secret, "/v1/fakeapi/record", [body] * 4, headers={"Idempotency-Key": "once"})
    assert [r.status_code for r in replay] == [200] * 4
    assert all(r.headers["idempotent-replayed"] == "true" for r in replay)
    assert len(provider.recorded) == 1


def test_queued_calls_run_once_and_in_order(cluster, provider) -> None:
    engine, servers = cluster
    _, secret = account(engine, provider, integration="fakeapi")
    # Submitted in order per queue (one request at a time per queue), spread over both servers.
    ids = []
    with httpx.Client(timeout=30) as client:
        for seq in range(15):
            for q, queue in enumerate(("a", "b", "c", "d")):
                server = servers[(seq + q) % 2]
                response = client.post(
                    f"{server.url}/v1/fakeapi/record",
                    json={"params": {"queue": queue, "seq": seq}, "queue": queue},
                    headers={"Authorization": f"Bearer {secret}"},
                )
                assert response.status_code == 202
                ids.append(response.json()["id"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = [runs.get_any(engine, i).status for i in ids]
        if all(s in runs.TERMINAL for s in statuses):
            break
        time.sleep(0.2)
    assert statuses == ["completed"] * 60
    seen = collections.Counter((q, s) for q, s, _, _ in provider.recorded)
    assert len(seen) == 60 and set(seen.values()) == {1}
    for queue in ("a", "b", "c", "d"):
        calls = sorted((c for c in provider.recorded if c[0] == queue), key=lambda c: c[2])
        assert [c[1] for c in calls] == list(range(15))


def test_serve_with_several_worker_processes(provider) -> None:
    schema = PostgresSchema()
    engine = db.make_engine(schema.url)
    db.upgrade(engine)
    try:
        _, secret = account(engine, provider)
        env = gateway_env(schema.url, provider.url, SECRET)
        server = GatewayProcess.serve(env, "--workers", "2")
        try:
            responses = spread([server], secret, "/v1/github/get_authenticated_user", [{"params": {}}] * 20)
            assert [r.status_code for r in responses] == [200] * 20
            assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
        finally:
            server.stop()
    finally:
        engine.dispose()
        schema.drop()
