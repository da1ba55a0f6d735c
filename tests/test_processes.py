"""Guarantees that must hold across several real gateway processes on one PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from sqlalchemy import update

from gateway.crypto import Box
from gateway.storage import connections, keys, users
from gateway.storage import database as db
from gateway.storage.models import Connection
from tests.conftest import PostgresSchema, postgres_available
from tests.processes import GatewayProcess, gateway_env

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not running on 127.0.0.1:5432"),
]

SECRET = "process-test-secret-" + "y" * 32


@pytest.fixture
def pg():
    schema = PostgresSchema()
    engine = db.make_engine(schema.url)
    db.upgrade(engine)
    yield schema.url, engine
    engine.dispose()
    schema.drop()


def test_two_processes_refresh_a_token_once(pg, provider) -> None:
    url, engine = pg
    user = users.create(engine, "multi@example.com", "correct horse battery")
    token = provider.mint()
    connections.save(
        engine,
        Box((SECRET,)),
        user_id=user.id,
        integration="github",
        access_token=token["access_token"],
        refresh_token=token["refresh_token"],
        expires_at=connections.expires_at_from(token),
    )
    _, secret = keys.create(engine, user.id)
    with engine.begin() as c:
        c.execute(update(Connection).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    provider.expire_access_tokens()
    provider.token_delay = 0.5

    env = gateway_env(url, provider.url, SECRET)
    servers = [GatewayProcess.serve(env), GatewayProcess.serve(env)]
    try:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                responses = await asyncio.gather(
                    *[
                        client.post(
                            f"{servers[i % 2].url}/v1/github/get_authenticated_user",
                            json={"params": {}},
                            headers={"Authorization": f"Bearer {secret}"},
                        )
                        for i in range(20)
                    ]
                )
            return [r.status_code for r in responses]

        assert asyncio.run(burst()) == [200] * 20
    finally:
        for server in servers:
            server.stop()
    assert len(provider.refresh_requests()) == 1
