"""Queued calls: submit, poll, order, cancel, history, idempotency, callbacks, durability."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.storage import claims, runs
from gateway.storage.runs import RunRecord
from tests.conftest import Gateway
from tests.servers import ServerThread


def submit(gw: Gateway, secret: str, endpoint: str, params: dict, **options: object) -> httpx.Response:
    return gw.http.post(
        f"/v1/fakeapi/{endpoint}", json={"params": params, **options}, headers={"Authorization": f"Bearer {secret}"}
    )


def wait_run(gw: Gateway, secret: str, run_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = gw.http.get(f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {secret}"}).json()
        if run["status"] in runs.TERMINAL:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end: {run}")


@pytest.fixture
def fake(gateway: Gateway, provider) -> tuple[Gateway, str]:
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    return gateway, gateway.key(user_id)


def test_submit_poll_and_result_equals_a_direct_call(fake, provider) -> None:
    gw, secret = fake
    response = submit(gw, secret, "record", {"queue": "a", "seq": 1}, queue="exports")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"id", "status", "queue_name", "in_queue"}
    assert body["status"] in ("pending", "running") and body["queue_name"] == "exports" and body["in_queue"] >= 1
    run = wait_run(gw, secret, body["id"])
    direct = submit(gw, secret, "record", {"queue": "a", "seq": 1})
    assert run["status"] == "completed"
    assert run["result"] == direct.json()
    assert run["http_status"] == 200 and run["attempts"] == 1


def test_async_without_a_name_gets_a_queue_of_its_own(fake) -> None:
    gw, secret = fake
    body = submit(gw, secret, "record", {"queue": "a", "seq": 1}, **{"async": True}).json()
    assert body["queue_name"] == body["id"]
    assert wait_run(gw, secret, body["id"])["status"] == "completed"


def test_one_queue_runs_in_order_and_never_overlaps_while_queues_run_in_parallel(fake, provider) -> None:
    gw, secret = fake
    ids = []
    for seq in range(6):
        for queue in ("q1", "q2"):
            ids.append(
                submit(gw, secret, "record", {"queue": queue, "seq": seq, "sleep": 0.05}, queue=queue).json()["id"]
            )
    for run_id in ids:
        assert wait_run(gw, secret, run_id)["status"] == "completed"
    for queue in ("q1", "q2"):
        calls = sorted((c for c in provider.recorded if c[0] == queue), key=lambda c: c[2])
        assert [c[1] for c in calls] == list(range(6))
        assert all(a[3] <= b[2] for a, b in zip(calls, calls[1:], strict=False)), "calls in one queue overlapped"
    q1 = [c for c in provider.recorded if c[0] == "q1"]
    q2 = [c for c in provider.recorded if c[0] == "q2"]
    assert any(a[2] < b[3] and b[2] < a[3] for a in q1 for b in q2), "different queues never ran together"


def test_a_failed_call_does_not_block_its_queue(fake) -> None:
    gw, secret = fake
    failed = submit(gw, secret, "missing", {}, queue="q").json()["id"]
    after = submit(gw, secret, "record", {"queue": "q", "seq": 2}, queue="q").json()["id"]
    assert wait_run(gw, secret, failed)["status"] == "failed"
    finished = wait_run(gw, secret, after)
    assert finished["status"] == "completed"


def test_cancel_only_pending_and_never_executed(fake, provider) -> None:
    gw, secret = fake
    auth = {"Authorization": f"Bearer {secret}"}
    first = submit(gw, secret, "record", {"queue": "c", "seq": 1, "sleep": 0.5}, queue="c").json()["id"]
    second = submit(gw, secret, "record", {"queue": "c", "seq": 2}, queue="c").json()
    assert second["in_queue"] == 2
    assert gw.http.get("/v1/queues/c", headers=auth).json() == {"queue_name": "c", "in_queue": 2}
    cancelled = gw.http.post(f"/v1/runs/{second['id']}/cancel", headers=auth).json()
    assert cancelled["removed"] is True
    time.sleep(0.1)
    running = gw.http.post(f"/v1/runs/{first}/cancel", headers=auth).json()
    assert running == {"removed": False, "message": "Only pending calls can be removed; this one is running."}
    assert wait_run(gw, secret, first)["status"] == "completed"
    assert wait_run(gw, secret, second["id"])["status"] == "cancelled"
    assert [c[1] for c in provider.recorded if c[0] == "c"] == [1]
    third = submit(gw, secret, "record", {"queue": "c", "seq": 3}, queue="c").json()["id"]
    assert wait_run(gw, secret, third)["status"] == "completed", "a cancelled call blocked its queue"


def test_history_filters_pages_and_privacy(fake, provider) -> None:
    gw, secret = fake
    auth = {"Authorization": f"Bearer {secret}"}
    ids = [submit(gw, secret, "record", {"queue": "h", "seq": i}, queue="h").json()["id"] for i in range(5)]
    submit(gw, secret, "missing", {})
    for run_id in ids:
        wait_run(gw, secret, run_id)
    page1 = gw.http.get("/v1/runs", params={"queue": "h", "limit": 3}, headers=auth).json()
    assert [r["id"] for r in page1["runs"]] == ids[::-1][:3]
    page2 = gw.http.get(
        "/v1/runs", params={"queue": "h", "limit": 3, "cursor": page1["next_cursor"]}, headers=auth
    ).json()
    assert [r["id"] for r in page2["runs"]] == ids[::-1][3:] and page2["next_cursor"] is None
    failed = gw.http.get("/v1/runs", params={"status": "failed"}, headers=auth).json()["runs"]
    assert [r["endpoint"] for r in failed] == ["missing"]
    assert (
        gw.http.get("/v1/runs", params={"endpoint": "record", "from": "2999-01-01T00:00:00Z"}, headers=auth).json()[
            "runs"
        ]
        == []
    )
    assert gw.http.get("/v1/runs", params={"status": "nope"}, headers=auth).status_code == 400
    assert gw.http.get("/v1/runs", params={"from": "yesterday"}, headers=auth).status_code == 400

    other = gw.key(gw.user())
    other_auth = {"Authorization": f"Bearer {other}"}
    assert gw.http.get("/v1/runs", headers=other_auth).json()["runs"] == []
    assert gw.http.get(f"/v1/runs/{ids[0]}", headers=other_auth).status_code == 404
    assert gw.http.post(f"/v1/runs/{ids[0]}/cancel", headers=other_auth).status_code == 404
    assert gw.http.get("/v1/queues/h", headers=other_auth).json()["in_queue"] == 0


def test_idempotency_direct_calls(fake, provider) -> None:
    gw, secret = fake
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "order-42"}
    body = {"params": {"queue": "i", "seq": 1}}
    first = gw.http.post("/v1/fakeapi/record", json=body, headers=headers)
    again = gw.http.post("/v1/fakeapi/record", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-run-id"] == first.headers["x-run-id"]
    assert len(provider.recorded) == 1
    mismatch = gw.http.post("/v1/fakeapi/record", json={"params": {"queue": "i", "seq": 2}}, headers=headers)
    assert mismatch.status_code == 422 and mismatch.json()["error"] == "idempotency_mismatch"
    # Keys are scoped to the API key: another key may use the same one.
    other = {**headers, "Authorization": f"Bearer {gw.key(gw.user())}"}
    assert gw.http.post("/v1/fakeapi/record", json=body, headers=other).json()["error"] == "integration_not_connected"


def test_idempotency_repeat_while_running_is_409(fake, provider) -> None:
    gw, secret = fake
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "slow-1"}
    body = {"params": {"queue": "i", "seq": 1, "sleep": 1.0}}
    results: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: results.append(gw.http.post("/v1/fakeapi/record", json=body, headers=headers))
    )
    thread.start()
    time.sleep(0.3)
    with httpx.Client(base_url=gw.url) as client:
        during = client.post("/v1/fakeapi/record", json=body, headers=headers)
    thread.join()
    assert during.status_code == 409 and during.json()["error"] == "idempotency_in_progress"
    assert results[0].status_code == 200
    assert len(provider.recorded) == 1


def test_idempotency_queued_calls(fake, provider) -> None:
    gw, secret = fake
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "queued-1"}
    body = {"params": {"queue": "i", "seq": 1}, "queue": "iq"}
    first = gw.http.post("/v1/fakeapi/record", json=body, headers=headers).json()
    again = gw.http.post("/v1/fakeapi/record", json=body, headers=headers).json()
    assert again["id"] == first["id"]
    wait_run(gw, secret, first["id"])
    assert len(provider.recorded) == 1


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []

        async def hook(request: Request) -> Response:
            self.received.append((dict(request.headers), await request.body()))
            return Response(status_code=204)

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def test_signed_callback(fake) -> None:
    gw, secret = fake
    receiver = Receiver()
    with ServerThread(receiver.app) as server:
        body = submit(
            gw, secret, "record", {"queue": "cb", "seq": 1}, queue="cb", callback_url=f"{server.url}/hook"
        ).json()
        run = wait_run(gw, secret, body["id"])
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
    [(headers, raw)] = receiver.received
    signing = gw.http.get("/v1/callbacks/secret", headers={"Authorization": f"Bearer {secret}"}).json()["secret"]
    t, v1 = (part.split("=", 1)[1] for part in headers["x-gateway-signature"].split(","))
    expected = hmac.new(signing.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(v1, expected)
    payload = json.loads(raw)
    assert payload["id"] == body["id"] and payload["status"] == "completed" and payload["result"] == run["result"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "not a url",
        "https://10.0.0.1/x",
        "https://localhost/x",
        5,
    ],
)
def test_callback_urls_are_checked(gateway: Gateway, provider, url) -> None:  # type: ignore[no-untyped-def]
    strict = dataclasses.replace(gateway.settings, allow_http_upstreams=False, egress_allow=())
    with ServerThread(create_app(strict)) as server:
        gw = Gateway(strict, server)
        user_id = gw.user()
        response = submit(gw, gw.key(user_id), "record", {"queue": "a", "seq": 1}, queue="x", callback_url=url)
        assert response.status_code == 400 and response.json()["error"] == "bad_request"
        gw.http.close()


@pytest.mark.parametrize(
    "options",
    [
        {"queue": ""},
        {"queue": "a b"},
        {"async": "yes"},
        {"expires": 0},
        {"expires": "10"},
        {"expires": 10},
        {"callback_url": "https://x.example/"},
    ],
)
def test_bad_queue_options(fake, options: dict) -> None:
    gw, secret = fake
    response = submit(gw, secret, "record", {"queue": "a", "seq": 1}, **options)
    assert response.status_code == 400, options


def test_expired_records_are_purged(fake) -> None:
    gw, secret = fake
    body = submit(gw, secret, "record", {"queue": "e", "seq": 1}, queue="e", expires=1).json()
    wait_run(gw, secret, body["id"])
    time.sleep(1.1)
    claims.purge(gw.engine)
    assert gw.http.get(f"/v1/runs/{body['id']}", headers={"Authorization": f"Bearer {secret}"}).status_code == 404


def test_pending_calls_survive_a_restart(settings, provider) -> None:
    stopped = dataclasses.replace(settings, worker_in_serve=False)
    with ServerThread(create_app(stopped)) as server:
        gw = Gateway(stopped, server)
        user_id = gw.user()
        gw.connect(user_id, provider, integration="fakeapi")
        secret = gw.key(user_id)
        ids = [submit(gw, secret, "record", {"queue": "r", "seq": i}, queue="r").json()["id"] for i in range(3)]
        time.sleep(0.3)
        assert provider.recorded == []
        gw.http.close()
    with ServerThread(create_app(settings)) as server:
        gw = Gateway(settings, server)
        assert [wait_run(gw, secret, i)["status"] for i in ids] == ["completed"] * 3
        gw.http.close()
    assert [c[1] for c in provider.recorded] == [0, 1, 2]


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_cancel_never_races_a_claim(settings) -> None:
    # No server here: its worker would claim these runs too.
    from gateway.crypto import Box
    from gateway.storage import database as db
    from gateway.storage import users

    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    gateway = type("G", (), {"engine": engine, "box": Box(settings.secret_keys)})
    user_id = users.create(engine, "racer@example.com", "correct horse battery").id
    outcomes = []
    for i in range(60):
        record = RunRecord.start()
        record.user_id, record.integration, record.endpoint, record.queue_name = user_id, "fakeapi", "text", f"race{i}"
        runs.create_pending(gateway.engine, gateway.box, record=record, params={})
        claimed: list[object] = []
        cancelled: list[bool] = []
        barrier = threading.Barrier(2)
        # Which side wins a dead heat depends on the machine (on a fast one SQLite's cancel won all
        # 60), so the start is staggered from one side's lead of 1.2 ms to the other's, through a tie.
        lead = (i % 13 - 6) * 0.0002

        def do_claim(barrier=barrier, claimed=claimed, lead=lead) -> None:  # type: ignore[no-untyped-def]
            barrier.wait()
            time.sleep(max(lead, 0))
            claimed.append(claims.claim(gateway.engine, "racer", runs.dt.timedelta(seconds=30)))

        def do_cancel(barrier=barrier, cancelled=cancelled, record=record, lead=lead) -> None:  # type: ignore[no-untyped-def]
            barrier.wait()
            time.sleep(max(-lead, 0))
            cancelled.append(runs.cancel(gateway.engine, record.id, user_id))

        threads = [threading.Thread(target=do_claim), threading.Thread(target=do_cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = claimed[0] is not None and claimed[0].id == record.id  # type: ignore[attr-defined]
        assert took != cancelled[0], "a run was both claimed and cancelled, or neither"
        status = runs.get(gateway.engine, record.id, user_id).status
        assert status == ("running" if took else "cancelled")
        outcomes.append(took)
        if took:
            runs.cancel(gateway.engine, record.id, user_id)  # no effect: it is running
            assert runs.get(gateway.engine, record.id, user_id).status == "running"
    engine.dispose()
    # Both sides won some rounds: the rounds around the tie raced with either outcome possible.
    assert 0 < sum(outcomes) < len(outcomes)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_claim_takes_its_limit_one_head_per_queue_oldest_first(settings) -> None:
    # No server here: its worker would claim these runs too.
    from gateway.crypto import Box
    from gateway.storage import database as db
    from gateway.storage import users

    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    box = Box(settings.secret_keys)
    user_id = users.create(engine, "claims@example.com", "correct horse battery").id
    made: dict[str, list[str]] = {}
    for seq in range(40):
        record = RunRecord.start()
        record.user_id, record.integration, record.endpoint = user_id, "fakeapi", "text"
        record.queue_name = f"q{seq % 8}"
        runs.create_pending(engine, box, record=record, params={})
        made.setdefault(record.queue_name, []).append(record.id)
    lease = runs.dt.timedelta(seconds=30)

    first = claims.claim_many(engine, "w1", lease, 3)
    assert [r.id for r in first] == [made[q][0] for q in ("q0", "q1", "q2")]
    assert all(r.status == "running" and r.worker_id == "w1" for r in first)
    second = claims.claim_many(engine, "w2", lease, 3)
    assert [r.id for r in second] == [made[q][0] for q in ("q3", "q4", "q5")]
    # More room than runnable calls: only the two heads left, never a second call of a busy queue.
    rest = claims.claim_many(engine, "w3", lease, 10)
    assert [r.id for r in rest] == [made["q6"][0], made["q7"][0]]
    assert claims.claim_many(engine, "w3", lease, 10) == []
    assert runs.queue_depth(engine) == {"running": 8, "pending": 32}
    engine.dispose()
