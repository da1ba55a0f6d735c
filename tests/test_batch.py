"""The hot path's group commit (gateway/storage/batch.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest
import uvloop
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.core import limits
from gateway.crypto import Box
from gateway.errors import DatabaseTimeout
from gateway.storage import database as db
from gateway.storage import history, keys, runs, users
from gateway.storage.batch import Batcher
from gateway.storage.models import DailyUsage, Run
from gateway.storage.runs import RunRecord

BOX = Box(("batch-test-secret-" + "b" * 32,))


def run(coroutine):  # type: ignore[no-untyped-def]
    # The loop `gateway serve` runs on: uvloop's timers and handles differ from asyncio's.
    return uvloop.run(coroutine)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def _record(user_id: int, **changes: object) -> RunRecord:
    record = RunRecord.start()
    record.user_id, record.integration, record.endpoint = user_id, "fakeapi", "echo"
    record.attempts, record.upstream_status, record.error_code = 1, 404, "upstream_error"
    for name, value in changes.items():
        setattr(record, name, value)
    record.finish("failed", 404)
    return record


def _stored(engine: Engine, run_id: str) -> dict[str, object]:
    with engine.connect() as c:
        return dict(c.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": run_id}).one()._mapping)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_batched_row_is_stored_exactly_as_the_orm_stores_it(engine: Engine) -> None:
    user_id = users.create(engine, "rows@example.com", "correct horse battery").id
    by_orm, by_batch = _record(user_id, refreshed=True), _record(user_id, refreshed=True)
    runs.save(engine, BOX, by_orm, None)

    async def write() -> None:
        batcher = Batcher(engine)
        runs.save_direct(batcher, BOX, by_batch, None)
        await batcher.aclose()

    run(write())
    orm, batched = _stored(engine, by_orm.id), _stored(engine, by_batch.id)
    differing = {k for k in orm if k != "id" and orm[k] != batched[k]}
    # Times differ by when each record was made; their stored form must not.
    assert differing <= {"created_at", "started_at", "ended_at", "duration_ms"}
    for column in ("created_at", "started_at", "ended_at"):
        assert type(orm[column]) is type(batched[column])
        if isinstance(orm[column], str):  # SQLite: the same text, to the microsecond
            expected = (by_batch.started_at if column != "ended_at" else by_batch.ended_at).replace(tzinfo=None)
            assert batched[column] == expected.isoformat(" ", "microseconds")
            assert len(orm[column]) == len(batched[column]) and orm[column][10] == batched[column][10] == " "
    found = runs.get(engine, by_batch.id, user_id)
    assert found is not None and found.refreshed is True and found.http_status == 404


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_counts_in_one_commit_stay_exact_and_all_or_none(engine: Engine) -> None:
    day = dt.date(2026, 12, 1)

    async def go() -> list[list[int] | int]:
        batcher = Batcher(engine)
        batcher.calls = 30  # as if 30 calls were in flight: they share one commit
        futures = [batcher.count([("user:1", 7), ("key:1", None)], day) for _ in range(25)]
        # Plenty left for the person, none for this key: nothing may be counted for either.
        futures.append(batcher.count([("user:2", 100), ("key:2", 0)], day))
        results = list(await asyncio.gather(*futures))
        await batcher.aclose()
        return results

    results = run(go())
    assert [r for r in results[:25] if isinstance(r, list)] == [[n, n] for n in range(1, 8)]
    assert results[7:25] == [0] * 18 and results[25] == 1
    with engine.connect() as c:
        counts = dict(c.execute(select(DailyUsage.subject, DailyUsage.count)).all())
    assert counts == {"user:1": 7, "key:1": 7, "user:2": 0, "key:2": 0}


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_queued_calls_are_stored_with_their_counts_in_one_transaction(engine: Engine) -> None:
    """A queued submission is a count and a row written together: within the limit both land,
    with the call's place in its queue; past it, neither. A twin Idempotency-Key fails that call
    alone, its count undone, and the rest of the batch commits."""
    user_id = users.create(engine, "queued@example.com", "correct horse battery").id
    key, _ = keys.create(engine, user_id, daily_limit=3)
    narrow, _ = keys.create(engine, user_id, integrations=["other"])
    day = limits.today()
    subjects = [(limits.user_subject(user_id), None), (limits.key_subject(key.id), 3)]

    def record(queue: str) -> RunRecord:
        made = RunRecord.for_call(key, "fakeapi", "echo")
        made.queue_name = queue
        return made

    by_orm = record("q")
    runs.create_pending(engine, BOX, record=by_orm, params={"n": 0}, idempotency_key="k0", request_hash="h")
    records = [record("q") for _ in range(4)]
    twin = record("q")

    async def go() -> list[object]:
        batcher = Batcher(engine)
        futures = [
            batcher.enqueue(subjects, day, runs.queued(batcher, BOX, key, record=r, params={"n": n}))
            for n, r in enumerate(records)
        ]
        # The same Idempotency-Key as the row stored above (counted for the person only): refused, alone.
        guarded = runs.queued(batcher, BOX, key, record=twin, params={"n": 9}, idempotency_key="k0", request_hash="h")
        futures.append(batcher.enqueue(subjects[:1], day, guarded))
        futures.append(batcher.count([(limits.user_subject(user_id), None)], day))  # a direct call's count
        results = list(await asyncio.gather(*futures, return_exceptions=True))
        await batcher.aclose()
        return results

    results = run(go())
    # The row made through the ORM is first in queue q; three more fit the key's limit of 3.
    # (The direct call's count may commit before or after them: only the key's counts are ordered.)
    assert [(r[0][1], r[1]) for r in results[:3]] == [(1, 2), (2, 3), (3, 4)]  # type: ignore[index]
    assert results[3] == (1, 0)  # the key's limit: subject 1 refused, nothing written
    assert isinstance(results[4], IntegrityError)
    assert sorted([r[0][0] for r in results[:3]] + results[5]) == [1, 2, 3, 4]  # type: ignore[index,operator]
    with engine.connect() as c:
        counts = dict(c.execute(select(DailyUsage.subject, DailyUsage.count)).all())
        stored = set(c.execute(select(Run.id)).scalars())
    assert counts == {f"user:{user_id}": 4, f"key:{key.id}": 3}
    assert stored == {by_orm.id, *(r.id for r in records[:3])}
    orm, batched = _stored(engine, by_orm.id), _stored(engine, records[0].id)
    differing = {k for k in orm if orm[k] != batched[k]}
    assert differing == {"id", "created_at", "request", "idempotency_key", "request_hash"}
    assert runs.request_of(BOX, runs.get(engine, records[0].id, user_id)) == {"params": {"n": 0}}  # type: ignore[arg-type]
    # A key that sees only another integration counts none of these calls as ahead of its own.
    assert runs.in_queue(engine, narrow, "q") == 0 and runs.in_queue(engine, key, "q") == 4


def test_a_write_waits_for_calls_in_flight_but_not_longer_than_needed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    db.upgrade(engine)
    day = dt.date(2026, 12, 1)

    async def go() -> None:
        batcher = Batcher(engine)
        # Alone: handed to the writer at once (no timer), before the caller even awaits.
        batcher.calls = 1
        alone = batcher.count([("user:9", None)], day)
        assert batcher._timer is None and batcher._inflight is not None
        assert await alone == [1]
        # Two in flight, one waiting: it waits (a timer) for the other, up to the group delay.
        batcher.calls = 2
        waiting = batcher.count([("user:9", None)], day)
        # Checked before yielding: uvloop's clock is read at the start of a turn, so on a busy
        # machine a 1 ms timer can already be due at the next one.
        assert not waiting.done() and batcher._timer is not None
        assert await waiting == [2]
        # Both waiting: nothing more can come, so the commit happens at the next turn.
        first, second = batcher.count([("user:9", None)], day), batcher.count([("user:9", None)], day)
        assert batcher._timer is None and sorted([await first, await second]) == [[3], [4]]
        await batcher.aclose()

    run(go())
    engine.dispose()


def test_a_failed_commit_fails_its_counts_and_counts_its_lost_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    db.upgrade(engine)
    lost: list[int] = []

    async def go() -> None:
        batcher = Batcher(engine)
        batcher.on_lost = lost.append

        def drop() -> None:
            with engine.begin() as c:
                c.execute(text("DROP TABLE daily_usage"))

        await asyncio.to_thread(drop)
        runs.save_direct(batcher, BOX, _record(1), None)
        with pytest.raises(DBAPIError):
            await batcher.count([("user:1", None)], dt.date(2026, 12, 1))
        await batcher.aclose()

    run(go())
    assert lost == [1]
    with engine.connect() as c:
        assert c.execute(select(Run.id)).all() == []  # rolled back with the count: nothing half-written
    engine.dispose()


def test_limits_reserve_refund_through_the_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.core.plans import Plan
    from gateway.settings import Settings
    from gateway.storage.models import ApiKey

    engine = db.make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    db.upgrade(engine)
    key = ApiKey(id=3, user_id=5, prefix="sk_x", key_hash="h", daily_limit=2)
    settings = Settings(secret_keys=("x",))

    async def go() -> list[object]:
        batcher = Batcher(engine)
        first = await limits.reserve(batcher, settings, key, Plan(name="p", daily_calls=10))
        limits.refund(batcher, first)
        second = await limits.reserve(batcher, settings, key, Plan(name="p", daily_calls=10))
        third = await limits.reserve(batcher, settings, key, Plan(name="p", daily_calls=10))
        try:
            await limits.reserve(batcher, settings, key, Plan(name="p", daily_calls=10))
        except Exception as exc:  # the key's own limit of 2
            refused: object = exc
        await batcher.aclose()
        return [first.remaining, second.remaining, third.remaining, refused]

    first, second, third, refused = run(go())
    assert (first, second, third) == (1, 1, 0)
    assert getattr(refused, "code", None) == "daily_limit_reached"
    engine.dispose()


def test_sqlite_leaves_checkpoints_to_the_checkpoint_thread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A checkpoint inside a commit fsyncs twice on the event loop (3 to 15 ms with no call moving);
    # db.checkpoints does it in a thread. SQLite's own threshold, 1,000 WAL pages, was crossed four
    # times a second under load, so it is raised: 1,500 pages of commits must all still be in the WAL.
    engine = db.make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    with engine.begin() as c:
        c.execute(text("CREATE TABLE pages (body BLOB)"))
    for _ in range(1_500):
        with engine.begin() as c:
            c.execute(text("INSERT INTO pages VALUES (randomblob(3000))"))
    with engine.connect() as c:
        _busy, frames, copied = c.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    assert frames >= 1_500, frames
    assert copied == frames  # and the checkpoint, when it comes, does its job
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_the_history_pages_show_a_call_whose_row_still_waits_for_its_commit(engine: Engine) -> None:
    # A run row follows its answer by up to ROW_DELAY; a page opened right after the call must count it.
    user_id = users.create(engine, "pending@example.com", "correct horse battery").id or 0
    key, _ = keys.create(engine, user_id, "worker")
    record = _record(user_id, api_key_id=key.id)
    seen: dict[str, object] = {}

    async def read_while_pending() -> None:
        database = db.Database(engine)
        runs.save_direct(database.batcher, BOX, record, None)
        # Held for the next commit: what the pages must not miss.
        assert await asyncio.to_thread(_count_runs, engine) == 0
        seen["today"] = await database.run(history.calls_today, user_id)
        seen["by_key"] = await database.run(history.calls_today_by_key, user_id)
        seen["run"] = await database.run(history.get, user_id, record.id)
        await database.aclose()

    run(read_while_pending())
    assert seen["today"] == 1 and seen["by_key"] == {key.id: 1}
    assert seen["run"] is not None and seen["run"].id == record.id  # type: ignore[attr-defined]


def _count_runs(engine: Engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM runs")).scalar_one()


def test_a_count_whose_caller_gave_up_is_given_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A database that holds a commit past GATEWAY_DATABASE_TIMEOUT: the caller answers 503 and never
    # goes upstream, so its count, committed later, must not use up the day's limit.
    engine = db.make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    db.upgrade(engine)
    day = dt.date(2026, 12, 1)
    blocker = engine.raw_connection()
    blocker.execute("BEGIN IMMEDIATE")  # the write lock: the batch's commit waits for it

    async def go() -> None:
        batcher = Batcher(engine, timeout=0.2)
        with pytest.raises(DatabaseTimeout):
            await batcher.counted([("user:7", 5)], day)
        await asyncio.to_thread(blocker.rollback)  # the database answers again
        await batcher.settle()  # the held count's commit, then its refund's
        await batcher.aclose()

    run(go())
    blocker.close()
    with engine.connect() as c:
        assert c.execute(select(DailyUsage.count).where(DailyUsage.subject == "user:7")).scalar_one() == 0
    engine.dispose()


def test_caches_drop_the_least_recently_used_entry_not_everything() -> None:
    from gateway.storage.caches import Cache

    cache: Cache[int] = Cache(ttl=60, maxsize=3)
    for key in ("a", "b", "c"):
        cache.put(key, 1)
    assert cache.get("a") == 1  # used: "b" is now the least recently used
    cache.put("d", 1)
    assert [cache.get(k) for k in ("a", "b", "c", "d")] == [1, None, 1, 1]


def test_a_cache_entry_is_not_served_past_its_ttl() -> None:
    from gateway.storage.caches import Cache

    # A TTL of zero: expired as soon as it is stored, so nothing is served (no sleeping needed).
    expired: Cache[int] = Cache(ttl=0.0)
    expired.put("a", 1)
    assert expired.get("a") is None
    fresh: Cache[int] = Cache(ttl=60)
    fresh.put("a", 1)
    fresh.drop_where(lambda key, value: value == 2)
    assert fresh.get("a") == 1
    fresh.drop_where(lambda key, value: value == 1)
    assert fresh.get("a") is None
