"""Plans and daily limits: exact under concurrency, the right headers, what counts."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json

import httpx
import pytest
from sqlalchemy import update

from gateway import cli
from gateway.core import limits
from gateway.core.plans import PlanBook, PlanError, load
from gateway.storage.models import User
from tests.conftest import Gateway


def set_plan(gw: Gateway, user_id: int, plan: str) -> None:
    with gw.engine.begin() as c:
        c.execute(update(User).where(User.id == user_id).values(plan=plan))
    gw.app.state.services.plans.forget(user_id)


def burst(gw: Gateway, secret: str, n: int, endpoint: str = "get_authenticated_user") -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        f"/v1/github/{endpoint}", json={"params": {}}, headers={"Authorization": f"Bearer {secret}"}
                    )
                    for _ in range(n)
                ]
            )

    return asyncio.run(go())


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_n_concurrent_calls_against_a_key_limit_let_exactly_l_through(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider)
    secret = gateway.key(user_id, daily_limit=7)
    responses = burst(gateway, secret, 25)
    assert sorted(r.status_code for r in responses) == [200] * 7 + [429] * 18
    assert len(provider.api_requests()) == 7
    refused = next(r for r in responses if r.status_code == 429)
    body = refused.json()
    assert body["error"] == "daily_limit_reached" and body["action_url"].endswith("/dashboard/usage")
    tomorrow = dt.datetime.combine(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert refused.headers["x-ratelimit-reset"] == str(int(tomorrow.timestamp()))
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert refused.headers["x-ratelimit-remaining"] == "0" and refused.headers["x-ratelimit-limit"] == "7"


def test_the_plans_daily_limit_covers_all_of_a_persons_keys(gateway: Gateway, provider, tmp_path) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider)
    services = gateway.app.state.services
    services.plans.plans["tiny"] = load(None)["free"].model_copy(update={"name": "tiny", "daily_calls": 3})
    set_plan(gateway, user_id, "tiny")
    first, second = gateway.key(user_id), gateway.key(user_id)
    codes = [gateway.call(k, "github", "get_authenticated_user").status_code for k in (first, second, first, second)]
    assert codes == [200, 200, 200, 429]
    assert "plan allows 3 calls" in gateway.call(second, "github", "get_authenticated_user").json()["message"]


def test_headers_on_every_v1_answer_and_what_counts(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    secret = gateway.key(user_id, daily_limit=10)
    auth = {"Authorization": f"Bearer {secret}"}
    # Turned away by the gateway before the upstream: does not count.
    assert gateway.call(secret, "github", "get_authenticated_user").json()["error"] == "integration_not_connected"
    assert gateway.call(secret, "github", "create_issue", {"repo": "../x"}).status_code == 400
    listing = gateway.http.get("/v1/runs", headers=auth)
    assert listing.headers["x-ratelimit-remaining"] == "10" and listing.headers["x-ratelimit-limit"] == "10"
    gateway.connect(user_id, provider)
    ok = gateway.call(secret, "github", "get_authenticated_user")
    assert ok.headers["x-ratelimit-remaining"] == "9"
    # An upstream error still counts: the upstream was called.
    provider.always_401 = True
    assert gateway.call(secret, "github", "get_authenticated_user").json()["error"] == "token_expired"
    provider.always_401 = False
    assert gateway.http.get("/v1/runs", headers=auth).headers["x-ratelimit-remaining"] == "8"
    # Queued calls count when accepted, not again when they run.
    queued = gateway.http.post("/v1/github/get_authenticated_user", json={"params": {}, "async": True}, headers=auth)
    assert queued.headers["x-ratelimit-remaining"] == "7"
    for _ in range(100):
        if gateway.http.get(f"/v1/runs/{queued.json()['id']}", headers=auth).json()["status"] == "completed":
            break
        asyncio.run(asyncio.sleep(0.05))
    assert gateway.http.get("/v1/runs", headers=auth).headers["x-ratelimit-remaining"] == "7"
    assert "x-ratelimit-limit" not in gateway.http.get("/v1/integrations").headers  # no key, no usage


def test_plan_limit_on_connections(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    services = gateway.app.state.services
    services.plans.plans["one"] = load(None)["free"].model_copy(update={"name": "one", "max_connections": 1})
    set_plan(gateway, user_id, "one")
    secret = gateway.key(user_id)
    auth = {"Authorization": f"Bearer {secret}"}
    started = gateway.http.post("/v1/integrations/github/connect", headers=auth).json()
    assert started["connect_url"].endswith("/dashboard/integrations/github") and started["waitpoint"]["id"]
    gateway.connect(user_id, provider)
    refused = gateway.http.post("/v1/integrations/fakeapi/connect", headers=auth)
    assert refused.status_code == 403
    assert refused.json()["error"] == "plan_limit_reached" and refused.json()["action_url"].endswith("/dashboard/usage")
    # Reconnecting what is already connected stays allowed.
    assert gateway.http.post("/v1/integrations/github/connect", headers=auth).status_code == 200
    assert gateway.http.post("/v1/integrations/nope/connect", headers=auth).status_code == 404


def test_plans_file_and_cli(tmp_path, monkeypatch, capsys) -> None:
    plans_file = tmp_path / "plans.yaml"
    plans_file.write_text("startup: {max_connections: 3, daily_calls: 200}\nfree: {daily_calls: 10}\n")
    plans = load(plans_file)
    assert plans["startup"].daily_calls == 200 and plans["free"].max_connections is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("startup: {max_connectoins: 3}\n")
    with pytest.raises(PlanError, match="startup"):
        load(bad)
    for name in [n for n in __import__("os").environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    monkeypatch.setenv("GATEWAY_SECRET_KEY", "s")
    monkeypatch.setenv("GATEWAY_PLANS_FILE", str(plans_file))
    assert cli.main(["users", "create", "p@example.com", "--password", "long enough password", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"] == "free"
    assert cli.main(["users", "set-plan", "p@example.com", "startup", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daily_calls"] == 200
    assert cli.main(["users", "set-plan", "p@example.com", "gold"]) == 1
    assert "unknown plan 'gold'" in capsys.readouterr().err
    assert cli.main(["users", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["plan"] == "startup"


def test_plan_cache_is_short_lived() -> None:
    book = PlanBook(load(None), "free")
    assert book.get("missing").name == "free"


def test_usage_reset_is_the_next_utc_midnight() -> None:
    reset = limits.next_reset()
    assert reset.hour == 0 and reset.tzinfo is not None and reset > dt.datetime.now(dt.UTC)
    assert dataclasses.is_dataclass(limits.Usage)
