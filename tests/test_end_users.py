"""End users (X-End-User-Id) and several connections per integration (X-Connection-Id), end to end
over real HTTP against the fake provider, on both databases."""

from __future__ import annotations

import time

import pytest

from gateway.storage import end_users
from tests.conftest import Gateway

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


def login(gateway: Gateway, secret: str, **headers: str) -> tuple[int, dict]:
    response = gateway.http.post(
        "/v1/github/get_authenticated_user",
        json={"params": {}},
        headers={"Authorization": f"Bearer {secret}", **headers},
    )
    return response.status_code, response.json()


def test_each_end_user_calls_with_their_own_connection_and_never_another(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    gateway.connect(owner, provider, account="owner-login")
    gateway.connect(owner, provider, account="alice-login", end_user="alice")
    gateway.connect(owner, provider, account="bob-login", end_user="user 42@acme")

    assert login(gateway, secret)[1]["data"]["login"] == "owner-login"
    status, body = login(gateway, secret, **{"X-End-User-Id": "alice"})
    assert (status, body["data"]["login"]) == (200, "alice-login")
    assert login(gateway, secret, **{"X-End-User-Id": "user 42@acme"})[1]["data"]["login"] == "bob-login"

    # A new end user is made on first use and has no connection of anyone else's.
    status, body = login(gateway, secret, **{"X-End-User-Id": "carol"})
    assert status == 403 and body["error"] == "integration_not_connected"
    assert "this end user" in body["message"] and "waitpoint" in body
    assert end_users.find(gateway.engine, owner, "carol") is not None

    # Another owner's key naming the same end user id reaches another end user altogether.
    other = gateway.user()
    other_secret = gateway.key(other)
    status, body = login(gateway, other_secret, **{"X-End-User-Id": "alice"})
    assert status == 403 and body["error"] == "integration_not_connected"


def test_a_run_records_its_end_user_and_connection(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    connection = gateway.connect(owner, provider, account="alice-login", end_user="alice")
    response = gateway.http.post(
        "/v1/github/get_authenticated_user",
        json={"params": {}},
        headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": "alice"},
    )
    run = gateway.run(response.headers["x-run-id"])
    assert (run.end_user_id, run.connection_id) == ("alice", connection.public_id)
    shown = gateway.http.get(f"/v1/connections/{connection.public_id}", headers={"Authorization": f"Bearer {secret}"})
    assert connection.last_used_at is None and shown.json()["last_used_at"] is not None
    # Tools are listed for an end user too, but not by a key that may not act for one.
    tools = gateway.http.get("/v1/tools", headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": "alice"})
    assert tools.status_code == 200 and tools.json()["tools"]
    owner_only = {"Authorization": f"Bearer {gateway.key(owner, acts_for='owner')}", "X-End-User-Id": "alice"}
    assert gateway.http.get("/v1/tools", headers=owner_only).status_code == 403


def test_bad_end_user_ids_and_keys_that_may_not_act_for_them(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    gateway.connect(owner, provider, account="owner-login")
    gateway.connect(owner, provider, account="alice-login", end_user="alice")
    secret = gateway.key(owner)
    # (A client strips spaces around a header value, so those cannot be sent to be refused.)
    for bad in ("x" * 201, "tab\there", "caf\xe9".encode("latin-1"), ""):
        status, body = login(gateway, secret, **{"X-End-User-Id": bad})  # type: ignore[arg-type]
        assert status == 400 and body["error"] == "bad_request", bad
    assert end_users.search(gateway.engine, owner) == [end_users.find(gateway.engine, owner, "alice")]

    owner_only = gateway.key(owner, acts_for="owner")
    assert login(gateway, owner_only)[1]["data"]["login"] == "owner-login"
    status, body = login(gateway, owner_only, **{"X-End-User-Id": "alice"})
    assert status == 403 and body["error"] == "scope_not_allowed"

    end_users_only = gateway.key(owner, acts_for="end_users")
    assert login(gateway, end_users_only, **{"X-End-User-Id": "alice"})[1]["data"]["login"] == "alice-login"
    status, body = login(gateway, end_users_only)
    assert status == 403 and body["error"] == "scope_not_allowed"


def test_several_connections_per_integration_chosen_by_x_connection_id(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    work = gateway.connect(owner, provider, account="alice-work", end_user="alice")
    time.sleep(0.002)  # connected_at orders the two; the later one is the default
    personal = gateway.connect(owner, provider, account="alice-personal", end_user="alice")
    assert work.public_id != personal.public_id
    alice = {"X-End-User-Id": "alice"}

    assert login(gateway, secret, **alice)[1]["data"]["login"] == "alice-personal"
    assert login(gateway, secret, **alice, **{"X-Connection-Id": work.public_id})[1]["data"]["login"] == "alice-work"

    # Reconnecting the same provider account keeps its connection (and id).
    again = gateway.connect(owner, provider, account="alice-work", end_user="alice")
    assert again.public_id == work.public_id

    # Another end user's connection, or one that does not exist, is not found for alice.
    bob = gateway.connect(owner, provider, account="bob-login", end_user="bob")
    for named in (bob.public_id, "conn_" + "0" * 32):
        status, body = login(gateway, secret, **alice, **{"X-Connection-Id": named})
        assert status == 404 and body["error"] == "not_found", named
    status, body = login(gateway, secret, **alice, **{"X-Connection-Id": "nope"})
    assert status == 400


def test_a_queued_call_runs_for_its_end_user(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    gateway.connect(owner, provider, account="owner-login")
    gateway.connect(owner, provider, account="alice-login", end_user="alice")
    response = gateway.http.post(
        "/v1/github/get_authenticated_user",
        json={"params": {}, "async": True},
        headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": "alice"},
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while True:
        run = gateway.http.get(f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {secret}"}).json()
        if run["status"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert run["status"] == "completed", run
    assert run["result"]["data"]["login"] == "alice-login"


def test_an_idempotency_key_replays_only_for_the_same_end_user(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    gateway.connect(owner, provider, account="alice-login", end_user="alice")
    gateway.connect(owner, provider, account="bob-login", end_user="bob")

    def call(end_user: str):  # type: ignore[no-untyped-def]
        return gateway.http.post(
            "/v1/github/get_authenticated_user",
            json={"params": {}},
            headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": end_user, "Idempotency-Key": "k1"},
        )

    first = call("alice")
    assert first.status_code == 200 and first.json()["data"]["login"] == "alice-login"
    assert call("alice").headers["idempotent-replayed"] == "true"
    other = call("bob")
    assert other.status_code == 422 and other.json()["error"] == "idempotency_mismatch"


def test_an_end_users_missing_connection_links_to_their_own_connect_page(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    gateway.connect(owner, provider, account="owner-login")
    status, body = login(gateway, secret, **{"X-End-User-Id": "dana"})
    assert status == 403 and body["error"] == "integration_not_connected"
    # A fresh connect link for dana and GitHub: no dashboard, no login.
    assert body["action_url"].startswith(f"{gateway.settings.public_url}/connect?token=cs_")
    from tests.test_connect_sessions import EndUserBrowser

    person = EndUserBrowser(gateway)
    assert person.open(body["action_url"].replace(gateway.settings.public_url, gateway.url)).status_code == 303
    shown = person.page()
    assert shown.status_code == 200 and "Connect GitHub" in shown.text and "Slack" not in shown.text
    person.close()
    # The owner's own missing connection still points at the dashboard.
    other = gateway.user()
    status, body = login(gateway, gateway.key(other))
    assert status == 403 and "/dashboard/integrations/github" in body["action_url"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_mcp_client_bound_to_an_end_user_sees_only_their_connections(
    gateway: Gateway, provider, anyio_backend: str
) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    gateway.connect(owner, provider, account="owner-login")
    gateway.connect(owner, provider, account="alice-login", end_user="alice")
    from tests.test_mcp import mcp_client_with

    async with mcp_client_with(gateway, {"Authorization": f"Bearer {secret}", "X-End-User-Id": "alice"}) as client:
        me = await client.call_tool("github_get_authenticated_user", {})
        listed = await client.call_tool("list_integrations", {})
    assert me.structured_content["data"]["login"] == "alice-login"
    github = next(i for i in listed.structured_content["integrations"] if i["integration"] == "github")
    assert github["status"] == "connected" and github["account"] == "alice-login"
    # Bound by the /mcp URL instead of a header; a new end user has nothing connected.
    async with mcp_client_with(gateway, {"Authorization": f"Bearer {secret}"}, "?end_user_id=erin") as client:
        refused = await client.call_tool("github_get_authenticated_user", {})
        offered = await client.call_tool("connect_integration", {"integration": "github"})
    assert refused.is_error and "integration_not_connected" in refused.content[0].text
    assert offered.structured_content["action_url"].startswith(f"{gateway.settings.public_url}/connect?token=cs_")


def test_runs_and_waitpoints_are_listed_per_end_user(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    auth = {"Authorization": f"Bearer {secret}"}
    gateway.connect(owner, provider, account="owner-login")
    gateway.connect(owner, provider, account="alice-login", end_user="alice")
    gateway.connect(owner, provider, account="bob-login", end_user="bob")
    ids = {}
    for who in ("alice", "bob", None):
        headers = {**auth, **({"X-End-User-Id": who} if who else {})}
        made = gateway.http.post("/v1/github/get_authenticated_user", json={"params": {}}, headers=headers)
        ids[who] = made.headers["x-run-id"]
        gateway.run(ids[who])

    def listed(**headers: str) -> list[str]:
        return [r["id"] for r in gateway.http.get("/v1/runs", headers={**auth, **headers}).json()["runs"]]

    assert set(listed()) == set(ids.values())
    assert listed(**{"X-End-User-Id": "alice"}) == [ids["alice"]]
    only_bob = gateway.http.get("/v1/runs?end_user_id=bob", headers=auth).json()["runs"]
    assert [(r["id"], r["end_user_id"]) for r in only_bob] == [(ids["bob"], "bob")]
    assert only_bob[0]["connection_id"].startswith("conn_")
    # Acting for alice, bob's run is not there, by list or by id.
    assert gateway.http.get("/v1/runs?end_user_id=bob", headers={**auth, "X-End-User-Id": "alice"}).status_code == 400
    assert gateway.http.get(f"/v1/runs/{ids['bob']}", headers={**auth, "X-End-User-Id": "alice"}).status_code == 404
    # Keys that act for one side only see only that side's runs.
    owner_only = {"Authorization": f"Bearer {gateway.key(owner, acts_for='owner')}"}
    assert [r["id"] for r in gateway.http.get("/v1/runs", headers=owner_only).json()["runs"]] == [ids[None]]
    assert gateway.http.get(f"/v1/runs/{ids['alice']}", headers=owner_only).status_code == 404
    end_users_only = {"Authorization": f"Bearer {gateway.key(owner, acts_for='end_users')}"}
    seen = {r["id"] for r in gateway.http.get("/v1/runs", headers=end_users_only).json()["runs"]}
    assert seen == {ids["alice"], ids["bob"]}

    made = gateway.http.post("/v1/waitpoints", json={"timeout": "1h"}, headers={**auth, "X-End-User-Id": "alice"})
    assert made.status_code == 200, made.text
    mine = gateway.http.get("/v1/waitpoints", headers={**auth, "X-End-User-Id": "alice"}).json()["data"]
    assert [(w["id"], w["endUserId"]) for w in mine] == [(made.json()["id"], "alice")]
    assert gateway.http.get("/v1/waitpoints?end_user_id=bob", headers=auth).json()["data"] == []
    # Acting for bob, alice's waitpoint is not there by id either.
    theirs = f"/v1/waitpoints/{made.json()['id']}"
    assert gateway.http.get(theirs, headers={**auth, "X-End-User-Id": "bob"}).status_code == 404
    assert gateway.http.get(theirs, headers={**auth, "X-End-User-Id": "alice"}).status_code == 200


def test_two_end_users_queues_of_one_name_never_wait_on_each_other(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    for who in ("alice", "bob"):
        gateway.connect(owner, provider, integration="fakeapi", account=f"{who}-login", end_user=who)
    gate = provider.gate("record")  # holds the first call that reaches the upstream

    def queue(who: str, seq: int) -> dict:
        made = gateway.http.post(
            "/v1/fakeapi/record",
            json={"params": {"queue": who, "seq": seq}, "queue": "sync"},
            headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": who},
        )
        assert made.status_code == 202, made.text
        return made.json()

    def status(run_id: str) -> str:
        return gateway.http.get(f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {secret}"}).json()["status"]

    held = queue("alice", 0)
    gate.wait_arrived()
    assert held["in_queue"] == 1 and queue("alice", 1)["in_queue"] == 2
    other = queue("bob", 0)
    assert other["in_queue"] == 1  # bob's own queue named "sync": nothing ahead of him
    deadline = time.monotonic() + 30
    while status(other["id"]) != "completed":
        assert time.monotonic() < deadline, "bob's call waited behind alice's queue"
        time.sleep(0.05)
    assert status(held["id"]) == "running"

    def depth(who: str | None) -> int:
        headers = {"Authorization": f"Bearer {secret}", **({"X-End-User-Id": who} if who else {})}
        return gateway.http.get("/v1/queues/sync", headers=headers).json()["in_queue"]

    assert (depth("alice"), depth("bob"), depth(None)) == (2, 0, 0)
    gate.open()
