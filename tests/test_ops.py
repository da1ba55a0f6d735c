"""Liveness, readiness, metrics, JSON logs, and a database outage."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest

from gateway import logs
from gateway.app import create_app
from gateway.storage import database as db
from tests.conftest import PG_URL, Gateway, PostgresSchema, postgres_available
from tests.servers import ServerThread
from tests.tcpproxy import TcpProxy


def test_healthz_and_readyz(gateway: Gateway) -> None:
    assert gateway.http.get("/healthz").json() == {"status": "ok"}
    ready = gateway.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "migrations": "ok"}


def test_readyz_says_when_migrations_are_behind(settings, tmp_path) -> None:
    behind = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path / 'old.db'}", migrate_on_start=False)
    db.upgrade(db.make_engine(behind.database_url), "0001")
    with ServerThread(create_app(behind)) as server:
        gw = Gateway(behind, server)
        ready = gw.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["migrations"].startswith("behind")
        gw.http.close()


def test_metrics(gateway: Gateway, account, provider) -> None:
    _, secret = account
    gateway.call(secret, "github", "get_authenticated_user")
    gateway.call(secret, "github", "nope")
    provider.expire_access_tokens()
    gateway.call(secret, "github", "get_authenticated_user")
    text = gateway.http.get("/metrics").text
    assert 'gateway_calls_total{endpoint="get_authenticated_user",integration="github",outcome="ok"} 2.0' in text
    assert 'gateway_calls_total{endpoint="unknown",integration="unknown",outcome="not_found"} 1.0' in text
    assert 'gateway_token_refreshes_total{integration="github",result="ok"} 1.0' in text
    assert 'gateway_upstream_latency_seconds_count{integration="github"} 3.0' in text
    assert 'gateway_queue_depth{status="pending"}' in text


def test_metrics_token(settings, provider) -> None:
    guarded = dataclasses.replace(settings, metrics_token="scrape-me")
    with ServerThread(create_app(guarded)) as server:
        gw = Gateway(guarded, server)
        assert gw.http.get("/metrics").status_code == 401
        assert gw.http.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200
        gw.http.close()


def test_json_logs_carry_the_request_id(
    gateway: Gateway, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("INFO", json_lines=True)
    logging.getLogger("gateway.test").info("hello")
    token = logs.request_id_var.set("req_abc")
    logging.getLogger("gateway.test").warning("inside")
    logs.request_id_var.reset(token)
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert lines[0]["message"] == "hello" and lines[0]["request_id"] == "-"
    assert lines[1]["request_id"] == "req_abc" and lines[1]["level"] == "WARNING"


def test_a_request_id_is_echoed_or_made(gateway: Gateway) -> None:
    assert gateway.http.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = gateway.http.get("/healthz", headers={"X-Request-ID": "bad id with spaces and ;"}).headers["x-request-id"]
    assert made.startswith("req_")


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not running")
def test_database_outage_answers_503_and_loses_no_accepted_queued_call(settings, provider) -> None:
    schema = PostgresSchema()
    proxy = TcpProxy(5432)
    url = schema.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert url != schema.url and PG_URL in schema.url
    cut_settings = dataclasses.replace(settings, database_url=url)
    try:
        with ServerThread(create_app(cut_settings)) as server:
            gw = Gateway(cut_settings, server)
            user_id = gw.user()
            gw.connect(user_id, provider, integration="fakeapi")
            secret = gw.key(user_id)
            auth = {"Authorization": f"Bearer {secret}"}
            accepted = [
                gw.http.post(
                    "/v1/fakeapi/record",
                    json={"params": {"queue": "o", "seq": i, "sleep": 0.3}, "queue": "o"},
                    headers=auth,
                )
                for i in range(3)
            ]
            assert [a.status_code for a in accepted] == [202] * 3
            proxy.cut()
            down = gw.call(secret, "fakeapi", "text")
            assert down.status_code == 503
            assert down.json()["error"] == "service_unavailable" and down.headers["retry-after"] == "5"
            refused = gw.http.post(
                "/v1/fakeapi/record", json={"params": {"queue": "o", "seq": 9}, "queue": "o"}, headers=auth
            )
            assert refused.status_code == 503
            assert gw.http.get("/readyz").status_code == 503
            assert gw.http.get("/healthz").status_code == 200
            time.sleep(1.0)
            proxy.restore()
            deadline = time.monotonic() + 60
            statuses: list[str] = []
            while time.monotonic() < deadline:
                try:
                    statuses = [
                        gw.http.get(f"/v1/runs/{a.json()['id']}", headers=auth).json().get("status", "?")
                        for a in accepted
                    ]
                except Exception:
                    statuses = []
                if statuses and all(s in ("completed", "failed") for s in statuses):
                    break
                time.sleep(0.3)
            gw.http.close()
        # Every accepted call ended, none vanished; the refused one never ran.
        assert len(statuses) == 3 and all(s in ("completed", "failed") for s in statuses), statuses
        assert 9 not in [seq for _, seq, _, _ in provider.recorded]
    finally:
        proxy.close()
        schema.drop()
