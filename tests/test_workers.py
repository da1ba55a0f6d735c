"""Queue guarantees with real `gateway worker` processes on PostgreSQL."""

from __future__ import annotations

import collections
import time

import pytest

from gateway.crypto import Box
from gateway.storage import connections, keys, runs, users
from gateway.storage import database as db
from gateway.storage.runs import RunRecord
from tests.conftest import PostgresSchema, postgres_available
from tests.processes import GatewayProcess, gateway_env

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not running on 127.0.0.1:5432"),
]

SECRET = "worker-test-secret-" + "z" * 32


@pytest.fixture
def pg(provider):  # type: ignore[no-untyped-def]
    schema = PostgresSchema()
    engine = db.make_engine(schema.url)
    db.upgrade(engine)
    user = users.create(engine, "queues@example.com", "correct horse battery")
    token = provider.mint()
    connections.save(
        engine,
        Box((SECRET,)),
        user_id=user.id,
        integration="fakeapi",
        access_token=token["access_token"],
        refresh_token=token["refresh_token"],
        expires_at=connections.expires_at_from(token),
    )
    key, _ = keys.create(engine, user.id)
    yield schema.url, engine, user.id, key.id
    engine.dispose()
    schema.drop()


def enqueue(engine, user_id: int, key_id: int, endpoint: str, queue: str, seq: int, sleep: float = 0) -> str:  # type: ignore[no-untyped-def]
    record = RunRecord.start()
    record.user_id, record.api_key_id, record.integration, record.endpoint = user_id, key_id, "fakeapi", endpoint
    record.queue_name = queue
    params = {"queue": queue, "seq": seq, **({"sleep": sleep} if sleep else {})}
    runs.create_pending(engine, Box((SECRET,)), record=record, params=params)
    return record.id


def wait_all(engine, ids: list[str], timeout: float) -> dict[str, str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        statuses = {i: runs.get_any(engine, i).status for i in ids}
        if all(s in runs.TERMINAL for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def test_200_calls_8_queues_3_workers_once_each_and_in_order(pg, provider) -> None:
    url, engine, user_id, key_id = pg
    # The calls wait before the workers start, and a worker claims for all its free slots at once.
    # With two slots each and eight queues, the others can never hold every queue's head, so
    # each worker finds work at its first claim: every worker must take some. Each call takes
    # 100 ms, so the queues outlast the workers' start-up.
    ids = [enqueue(engine, user_id, key_id, "record", f"q{seq % 8}", seq // 8, sleep=0.1) for seq in range(200)]
    env = gateway_env(url, provider.url, SECRET, GATEWAY_WORKER_CONCURRENCY="2")
    workers = [GatewayProcess(["worker"], env) for _ in range(3)]
    try:
        statuses = wait_all(engine, ids, timeout=90)
    finally:
        for worker in workers:
            worker.stop()
    assert collections.Counter(statuses.values()) == {"completed": 200}
    seen = collections.Counter((q, s) for q, s, _, _ in provider.recorded)
    assert len(seen) == 200 and set(seen.values()) == {1}, "a call ran twice or not at all"
    for queue in (f"q{n}" for n in range(8)):
        calls = sorted((c for c in provider.recorded if c[0] == queue), key=lambda c: c[2])
        assert [c[1] for c in calls] == list(range(25)), f"{queue} ran out of order"
        assert all(a[3] <= b[2] for a, b in zip(calls, calls[1:], strict=False)), f"{queue} overlapped"
    by_worker = collections.Counter(runs.get_any(engine, i).worker_id for i in ids)
    assert len(by_worker) == 3, f"not every worker took work: {by_worker}"


def test_a_killed_worker_leaves_a_lease_that_is_recovered(pg, provider) -> None:
    url, engine, user_id, key_id = pg
    env = gateway_env(url, provider.url, SECRET, GATEWAY_WORKER_LEASE_SECONDS="2")
    doomed = GatewayProcess(["worker"], env)
    unsafe = enqueue(engine, user_id, key_id, "record", "unsafe", 1, sleep=30)
    safe = enqueue(engine, user_id, key_id, "record_safe", "safe", 1, sleep=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and {runs.get_any(engine, i).status for i in (unsafe, safe)} != {"running"}:
        time.sleep(0.1)
    doomed.kill()  # SIGKILL mid-call: no goodbye, the lease just stops being extended

    # The retried call must finish this time: make the upstream quick.
    with engine.begin() as c:
        from sqlalchemy import update

        from gateway.storage.models import Run

        c.execute(
            update(Run)
            .where(Run.id == safe)
            .values(request=Box((SECRET,)).encrypt('{"params": {"queue": "safe", "seq": 1}}'))
        )
    rescuer = GatewayProcess(["worker"], env)
    try:
        statuses = wait_all(engine, [unsafe, safe], timeout=30)
    finally:
        rescuer.stop()
    assert statuses == {unsafe: "failed", safe: "completed"}
    lost = runs.get_any(engine, unsafe)
    assert lost.error_code == "worker_lost"
