"""A database that stops answering (a partition: connections open, nothing comes back) costs callers a
503 after GATEWAY_DATABASE_TIMEOUT, never the process: /healthz answers throughout, and the gateway
recovers by itself when the database is back. A `serve` started during a partition does not hang.

The database is reached through tests/tcpproxy.py, which the test partitions and restores.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from gateway.storage import caches
from tests.conftest import Gateway, PostgresSchema, make_settings, postgres_available
from tests.fakes.provider import ProviderState
from tests.processes import GatewayProcess, gateway_env
from tests.servers import ServerThread, free_port
from tests.tcpproxy import TcpProxy
from tests.test_faults import Background, fake_account, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not running on 127.0.0.1:5432"),
]

TIMEOUT = 1.0


@pytest.fixture
def partitioned(provider: ProviderState) -> Iterator[tuple[Gateway, TcpProxy]]:
    schema, proxy = PostgresSchema(), TcpProxy(5432)
    url = schema.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = make_settings(url, provider.url, database_timeout=TIMEOUT)  # type: ignore[attr-defined]
    server = ServerThread(create_app(settings)).start()
    gw = Gateway(settings, server)
    try:
        yield gw, proxy
    finally:
        proxy.restore()
        gw.http.close()
        server.stop()
        proxy.close()
        schema.drop()


def call(gw: Gateway, headers: dict[str, str]) -> httpx.Response:
    # A bound far above TIMEOUT: what is tested is that the answer comes, not how fast.
    return gw.http.post("/v1/fakeapi/echo", json={"params": {"item": "1"}}, headers=headers, timeout=60)


def test_a_partition_costs_a_503_not_the_process(partitioned, provider: ProviderState) -> None:
    gw, proxy = partitioned
    user_id, headers = fake_account(gw, provider)
    assert call(gw, headers).status_code == 200

    # The key stays cached (it was just used) but its connection must be read again: that read
    # meets the partition too.
    caches.of(gw.app.state.engine).connections.drop_where(lambda *_: True)
    proxy.partition()
    # A fresh key is not in any cache, so its lookup must reach the database.
    other = {"Authorization": f"Bearer sk_{secrets.token_urlsafe(24)}"}
    # A known key too: its key and connection may be cached, its count cannot be.
    waiting = [Background(lambda: call(gw, other)) for _ in range(2)] + [Background(lambda: call(gw, headers))]
    # While those wait on the database, the process answers what needs no database.
    health = gw.http.get("/healthz", timeout=60)
    assert health.status_code == 200
    for background in waiting:
        answer = background.join()
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "service_unavailable"
    ready = gw.http.get("/readyz", timeout=60)
    assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"

    proxy.heal()
    # No restart: the next calls get fresh connections once the broken ones fail.
    wait_for(lambda: call(gw, headers).status_code == 200, what="a call to succeed after the partition")
    assert gw.http.get("/readyz", timeout=60).status_code == 200


def test_serve_started_during_a_partition_does_not_hang(provider: ProviderState) -> None:
    schema, proxy = PostgresSchema(), TcpProxy(5432)
    try:
        proxy.partition()
        url = schema.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        env = gateway_env(url, provider.url, secrets.token_urlsafe(32), GATEWAY_DATABASE_TIMEOUT="1s")
        process = GatewayProcess(["serve", "--host", "127.0.0.1", "--port", str(free_port())], env)
        try:
            code = process.process.wait(timeout=120)
            output = process.output()
        finally:
            process.kill()
        assert code != 0
        assert "database" in output.lower(), output
    finally:
        proxy.restore()
        proxy.close()
        schema.drop()
