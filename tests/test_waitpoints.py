"""Waitpoints: create, complete by callback/key/public token, wait, list, time out, connections."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from gateway.core import waitpoints
from tests.conftest import Gateway


@pytest.fixture
def caller(gateway: Gateway) -> tuple[Gateway, dict[str, str], int]:
    user_id = gateway.user()
    return gateway, {"Authorization": f"Bearer {gateway.key(user_id)}"}, user_id


def create(gw: Gateway, auth: dict, **body: object) -> httpx.Response:
    response = gw.http.post("/v1/waitpoints", json=body, headers=auth)
    if response.status_code == 200:
        # The settings' public URL is a placeholder; the server itself listens on gw.url.
        data = response.json()
        data["url"] = data["url"].replace(gw.settings.public_url, gw.url)
        return httpx.Response(200, json=data)
    return response


def test_create_and_complete_by_callback_url(caller) -> None:
    gw, auth, _ = caller
    created = create(gw, auth, timeout="1h", tags=["deploy", "prod"]).json()
    assert set(created) == {"id", "url", "isCached", "publicAccessToken"}
    assert created["id"].startswith("waitpoint_") and created["isCached"] is False
    assert created["publicAccessToken"].startswith("wpt_")
    # No API key: the URL's signed secret is enough.
    done = httpx.post(created["url"], json={"approved": True, "by": "ops"})
    assert done.status_code == 200 and done.json()["completed"] is True
    again = httpx.post(created["url"], json={"approved": False})
    assert again.json()["completed"] is False and "first completion stands" in again.json()["message"]
    shown = gw.http.get(f"/v1/waitpoints/{created['id']}", headers=auth).json()
    assert shown["status"] == "COMPLETED" and shown["output"] == {"approved": True, "by": "ops"}
    assert shown["tags"] == ["deploy", "prod"] and shown["completedAt"]
    wait = gw.http.get(f"/v1/waitpoints/{created['id']}/wait", headers=auth).json()
    assert wait == {"ok": True, "output": {"approved": True, "by": "ops"}}


def test_callback_without_a_body_gives_an_empty_object_and_a_bad_token_is_refused(caller) -> None:
    gw, auth, _ = caller
    created = create(gw, auth).json()
    forged = created["url"].rsplit("/", 1)[0] + "/forged.token.value"
    assert httpx.post(forged).status_code == 404
    assert httpx.post(created["url"]).json()["completed"] is True
    assert gw.http.get(f"/v1/waitpoints/{created['id']}", headers=auth).json()["output"] == {}


def test_complete_with_api_key_and_with_public_token(caller) -> None:
    gw, auth, _ = caller
    first = create(gw, auth).json()
    response = gw.http.post(f"/v1/waitpoints/{first['id']}/complete", json={"data": [1, 2]}, headers=auth)
    assert response.json()["completed"] is True
    second = create(gw, auth).json()
    # From a browser: CORS preflight, then the public token.
    preflight = httpx.options(f"{gw.url}/v1/waitpoints/{second['id']}/complete")
    assert preflight.headers["access-control-allow-origin"] == "*"
    public = {"Authorization": f"Bearer {second['publicAccessToken']}"}
    response = httpx.post(f"{gw.url}/v1/waitpoints/{second['id']}/complete", json={"data": "yes"}, headers=public)
    assert response.json()["completed"] is True and response.headers["access-control-allow-origin"] == "*"
    # A public token is good for its own waitpoint only.
    response = httpx.post(f"{gw.url}/v1/waitpoints/{first['id']}/complete", json={"data": 1}, headers=public)
    assert response.status_code == 401


def test_idempotency_key_returns_the_cached_waitpoint(caller) -> None:
    gw, auth, _ = caller
    first = create(gw, auth, idempotencyKey="job-7", idempotencyKeyTTL="1h").json()
    again = create(gw, auth, idempotencyKey="job-7").json()
    assert again["id"] == first["id"] and again["isCached"] is True
    short = create(gw, auth, idempotencyKey="job-8", idempotencyKeyTTL="1s").json()
    time.sleep(1.2)
    fresh = create(gw, auth, idempotencyKey="job-8").json()
    assert fresh["id"] != short["id"] and fresh["isCached"] is False
    shown = gw.http.get(f"/v1/waitpoints/{first['id']}", headers=auth).json()
    assert shown["idempotencyKey"] == "job-7" and shown["idempotencyKeyExpiresAt"]


@pytest.mark.parametrize(
    "body",
    [
        {"timeout": "10"},
        {"timeout": "0s"},
        {"timeout": "31d"},
        {"timeout": 5},
        {"tags": "x"},
        {"tags": [""]},
        {"idempotencyKeyTTL": "forever"},
        {"colour": "red"},
    ],
)
def test_bad_create_bodies(caller, body: dict) -> None:
    gw, auth, _ = caller
    assert create(gw, auth, **body).status_code == 400


def test_times_out_on_time_without_a_poller(caller) -> None:
    gw, auth, _ = caller
    created = create(gw, auth, timeout="1s").json()
    from sqlalchemy import select

    from gateway.storage.models import Waitpoint

    def status() -> str:
        with gw.engine.connect() as c:
            return c.execute(select(Waitpoint.status).where(Waitpoint.id == created["id"])).scalar_one()

    # Nobody waits or reads through the gateway; only its sweeper can end the waitpoint. Read the
    # database directly until it has (a bound, not a timing: a loaded machine sweeps later).
    deadline = time.monotonic() + 30
    while status() == "WAITING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status() == "TIMED_OUT"
    waited = gw.http.get(f"/v1/waitpoints/{created['id']}/wait", headers=auth).json()
    assert waited["ok"] is False and waited["error"]["code"] == "timeout"
    assert httpx.post(created["url"], json={}).json()["completed"] is False


def test_wait_blocks_until_completed_and_says_wait_again_when_its_bound_runs_out(caller) -> None:
    gw, auth, _ = caller
    created = create(gw, auth).json()
    started = time.monotonic()
    again = gw.http.get(f"/v1/waitpoints/{created['id']}/wait", params={"timeout": "0.5"}, headers=auth)
    assert again.status_code == 202 and again.json()["waitAgain"] is True
    assert 0.4 < time.monotonic() - started < 3
    threading.Timer(0.5, lambda: httpx.post(created["url"], json={"n": 1})).start()
    started = time.monotonic()
    done = gw.http.get(f"/v1/waitpoints/{created['id']}/wait", params={"timeout": "20s"}, headers=auth).json()
    assert done == {"ok": True, "output": {"n": 1}}
    assert time.monotonic() - started < 5


def test_500_concurrent_waiters_cost_a_bounded_number_of_queries(caller) -> None:
    gw, auth, _ = caller
    ids = [create(gw, auth).json() for _ in range(5)]
    notifier = waitpoints.notifier_for(gw.app.state.engine)
    polls_before = notifier.polls

    async def waiters() -> list[dict]:
        limits = httpx.Limits(max_connections=600)
        async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=limits) as client:
            tasks = [
                client.get(f"/v1/waitpoints/{ids[i % 5]['id']}/wait", params={"timeout": "30s"}, headers=auth)
                for i in range(500)
            ]

            async def complete_later() -> None:
                while notifier.waiting < 450:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)
                # Whoever completes a waitpoint is another party, on connections of its own: a new one
                # per completion, as waking a hundred waiters can keep the server's loop busy past its
                # keep-alive timeout, and a POST on a connection it has just closed is not retried.
                fresh = httpx.Limits(max_keepalive_connections=0)
                async with httpx.AsyncClient(timeout=60, limits=fresh) as completer:
                    for created in ids:
                        answer = await completer.post(created["url"], json={"done": True})
                        assert answer.json()["completed"] is True

            results = await asyncio.gather(*tasks, complete_later())
        return [r.json() for r in results[:-1]]

    started = time.monotonic()
    results = asyncio.run(waiters())
    elapsed = time.monotonic() - started
    assert all(r == {"ok": True, "output": {"done": True}} for r in results)
    # One poll query per half second for the whole process, not one per waiter.
    assert notifier.polls - polls_before <= elapsed / waitpoints.POLL_EVERY + 2


def test_first_completion_wins_under_concurrent_completions(caller) -> None:
    gw, auth, _ = caller
    created = create(gw, auth).json()

    async def race() -> list[bool]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(*[client.post(created["url"], json={"n": i}) for i in range(30)])
        return [a.json()["completed"] for a in answers]

    won = asyncio.run(race())
    assert won.count(True) == 1
    output = gw.http.get(f"/v1/waitpoints/{created['id']}", headers=auth).json()["output"]
    assert output == {"n": won.index(True)}


def test_list_filters_and_pages(caller) -> None:
    gw, auth, _ = caller
    a = create(gw, auth, tags=["a", "shared"]).json()
    b = create(gw, auth, tags=["b", "shared"]).json()
    c = create(gw, auth, tags=["c"], idempotencyKey="k-c").json()
    httpx.post(a["url"], json={"x": 1})
    listed = gw.http.get("/v1/waitpoints", params={"limit": 2}, headers=auth).json()
    assert [w["id"] for w in listed["data"]] == [c["id"], b["id"]]
    assert "output" not in listed["data"][0]
    rest = gw.http.get("/v1/waitpoints", params={"limit": 2, "cursor": listed["nextCursor"]}, headers=auth).json()
    assert [w["id"] for w in rest["data"]] == [a["id"]] and rest["nextCursor"] is None

    def ids(**params: str) -> list[str]:
        return [w["id"] for w in gw.http.get("/v1/waitpoints", params=params, headers=auth).json()["data"]]

    assert ids(status="COMPLETED") == [a["id"]]
    assert ids(status="WAITING,COMPLETED") == [c["id"], b["id"], a["id"]]
    assert ids(tags="shared") == [b["id"], a["id"]]
    assert ids(idempotencyKey="k-c") == [c["id"]]
    assert ids(period="1h") == [c["id"], b["id"], a["id"]]
    assert ids(**{"from": "2999-01-01"}) == []
    assert gw.http.get("/v1/waitpoints", params={"period": "2y"}, headers=auth).status_code == 400
    assert gw.http.get("/v1/waitpoints", params={"status": "DONE"}, headers=auth).status_code == 400


def test_a_foreign_users_waitpoint_is_invisible(caller) -> None:
    gw, auth, _ = caller
    created = create(gw, auth).json()
    other = {"Authorization": f"Bearer {gw.key(gw.user())}"}
    assert gw.http.get(f"/v1/waitpoints/{created['id']}", headers=other).status_code == 404
    assert gw.http.get(f"/v1/waitpoints/{created['id']}/wait", headers=other).status_code == 404
    assert gw.http.post(f"/v1/waitpoints/{created['id']}/complete", json={"data": 1}, headers=other).status_code == 404
    assert gw.http.get("/v1/waitpoints", headers=other).json()["data"] == []
    assert gw.http.get(f"/v1/waitpoints/{created['id']}", headers=auth).json()["status"] == "WAITING"


def test_errors_carry_a_waitpoint_that_completes_on_connection(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    secret = gateway.key(user_id)
    auth = {"Authorization": f"Bearer {secret}"}
    error = gateway.call(secret, "github", "get_authenticated_user").json()
    assert error["error"] == "integration_not_connected"
    waitpoint = error["waitpoint"]
    assert waitpoint["wait_url"] == f"http://127.0.0.1:9999/v1/waitpoints/{waitpoint['id']}/wait"
    # The same waitpoint is reused while it waits, not one per failed call.
    assert gateway.call(secret, "github", "get_authenticated_user").json()["waitpoint"]["id"] == waitpoint["id"]

    threading.Timer(0.5, lambda: gateway.connect(user_id, provider)).start()
    done = gateway.http.get(f"/v1/waitpoints/{waitpoint['id']}/wait", params={"timeout": "20s"}, headers=auth).json()
    assert done["ok"] is True and done["output"]["integration"] == "github" and done["output"]["connected_at"]
    assert gateway.call(secret, "github", "get_authenticated_user").status_code == 200

    provider.reject_all_refreshes = True
    provider.expire_access_tokens()
    expired = gateway.call(secret, "github", "get_authenticated_user").json()
    assert expired["error"] == "token_expired" and expired["waitpoint"]["id"] != waitpoint["id"]


def test_cancel_through_the_api_ends_a_waiter_at_once(caller) -> None:
    gw, auth, _ = caller
    created = create(gw, auth, timeout="1h").json()
    answers: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            httpx.get(
                f"{gw.url}/v1/waitpoints/{created['id']}/wait", params={"timeout": "60s"}, headers=auth, timeout=90
            )
        )
    )
    waiter.start()
    notifier = waitpoints.notifier_for(gw.engine)
    deadline = time.monotonic() + 30
    while notifier.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    cancelled = gw.http.post(f"/v1/waitpoints/{created['id']}/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cancelled"] is True and cancelled.json()["status"] == "CANCELLED"
    waiter.join(30)
    assert answers and answers[0].json()["ok"] is False
    assert answers[0].json()["error"]["code"] == "cancelled"
    again = gw.http.post(f"/v1/waitpoints/{created['id']}/cancel", headers=auth).json()
    assert again["cancelled"] is False and "CANCELLED" in again["message"]
    # A completion after the cancel changes nothing.
    assert httpx.post(created["url"], json={"late": True}).json()["completed"] is False


def test_cancel_refuses_what_the_key_cannot_see(caller) -> None:
    gw, auth, _ = caller
    other = {"Authorization": f"Bearer {gw.key(gw.user())}"}
    created = create(gw, auth).json()
    refused = gw.http.post(f"/v1/waitpoints/{created['id']}/cancel", headers=other)
    assert refused.status_code == 404 and refused.json()["error"] == "not_found"
    assert gw.http.get(f"/v1/waitpoints/{created['id']}", headers=auth).json()["status"] == "WAITING"


def test_the_duration_pattern_is_exactly_1s_to_30d() -> None:
    """The OpenAPI document states durations as this one pattern, so it must be the whole rule."""
    most = int(waitpoints.MAX_TIMEOUT.total_seconds())
    # Every number of minutes, hours, days and weeks around the limit; seconds up to 100,000 and at
    # each place where the pattern's alternatives meet.
    edges = [n + d for n in (10**6, 2 * 10**6, 2_500_000, 2_590_000, most, 10**7) for d in (-1, 0, 1)]
    for unit, size in waitpoints.UNITS.items():
        numbers = [*range(0, 100_001), *edges] if unit == "s" else range(0, most // size + 10)
        for number in numbers:
            text = f"{number}{unit}"
            assert (waitpoints.DURATION.fullmatch(text) is not None) == (1 <= number * size <= most), text
        assert waitpoints.parse_duration(f"{most // size}{unit}", "timeout").total_seconds() == most // size * size
    for text in ("010m", "1m\n", " 1m", "1M", "1.5h", "+1h"):
        assert waitpoints.DURATION.fullmatch(text) is None, text
