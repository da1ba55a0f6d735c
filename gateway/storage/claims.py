"""Queued calls in the runs table: claiming the head of each queue, leases, recovery and purging."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import bindparam, delete, exists, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased

from gateway.crypto import Box
from gateway.errors import WorkerLost
from gateway.storage.models import Run, from_row, is_active, utcnow
from gateway.storage.runs import IDEMPOTENCY_TTL


def _claim_statement(postgresql: bool) -> Any:
    """Takes up to `:limit` runnable calls: pending, not held for approval, each first in its
    queue with nothing of its queue running. Two candidates never share a queue (the younger
    one has an older pending call), and two workers never take the same run: the rows are
    locked and skipped (`FOR UPDATE SKIP LOCKED`) on PostgreSQL, and SQLite runs the one
    statement under its write lock. Built once per dialect: building it cost more than running it.
    tests/test_queue.py holds it to its limit on both databases."""
    # Aliases throughout: a subquery naming `runs` itself would be correlated with the UPDATE's
    # own row, and every runnable row would then pick itself.
    queued, other = aliased(Run, name="queued"), aliased(Run, name="other")
    # Two probes rather than one with an OR: each is a range on ix_runs_queue (user, queue, status,
    # id), so a claim costs the same however long the queue; the OR made each probe read the queue.
    # A queue is one owner's, or one end user's: two end users' queues of the same name never wait
    # on each other.
    same_queue = (
        other.user_id == queued.user_id,
        other.queue_name == queued.queue_name,
        is_active(other.status),
        other.end_user_id.is_not_distinct_from(queued.end_user_id),
    )
    blocked = or_(
        exists().where(*same_queue, other.status == "running"),
        exists().where(*same_queue, other.status == "pending", other.id < queued.id),
    )
    candidates = (
        select(queued.id)
        .where(
            queued.status == "pending",
            is_active(queued.status),
            or_(queued.approval.is_(None), queued.approval == "approved"),
            ~blocked,
        )
        .order_by(queued.id)
        .limit(bindparam("limit"))
    )
    if postgresql:
        # A CTE runs once. As `id IN (subquery)` PostgreSQL may run the locking subquery again
        # for each row, skipping the rows it already took, and so take every runnable call.
        picked = candidates.with_for_update(skip_locked=True).cte("picked")
        chosen = Run.id == picked.c.id
    else:
        chosen = Run.id.in_(candidates)
    return (
        update(Run)
        .where(chosen, Run.status == "pending")
        .values(
            status="running",
            worker_id=bindparam("worker_id"),
            lease_until=bindparam("lease_until"),
            started_at=bindparam("now"),
        )
        .returning(*Run.__table__.columns)
    )


_CLAIM = {dialect: _claim_statement(dialect == "postgresql") for dialect in ("postgresql", "sqlite")}


def claim_many(
    engine: Engine, worker_id: str, lease: dt.timedelta, limit: int, now: dt.datetime | None = None
) -> list[Run]:
    """Up to `limit` calls for this worker, oldest first, at most one per queue; see _claim_statement.
    The claimed rows' `started_at` is `now`, which names them if the answer is lost (unclaim)."""
    now = now or utcnow()
    statement = _CLAIM["postgresql" if engine.dialect.name == "postgresql" else "sqlite"]
    with engine.begin() as c:
        rows = c.execute(statement, {"limit": limit, "worker_id": worker_id, "lease_until": now + lease, "now": now})
        claimed = [from_row(Run, r._mapping) for r in rows]
    return sorted(claimed, key=lambda run: run.id)


def unclaim(engine: Engine, worker_id: str, claimed_at: list[dt.datetime]) -> int:
    """Claims whose answer never reached their worker (the database failed mid-statement, after the
    commit): the worker never ran them, so they go back to the head of their queue."""
    with engine.begin() as c:
        return c.execute(
            update(Run)
            .where(Run.worker_id == worker_id, Run.status == "running", Run.started_at.in_(claimed_at))
            .values(status="pending", worker_id=None, lease_until=None, started_at=None)
        ).rowcount


def claim(engine: Engine, worker_id: str, lease: dt.timedelta) -> Run | None:
    claimed = claim_many(engine, worker_id, lease, 1)
    return claimed[0] if claimed else None


def extend_leases(engine: Engine, worker_id: str, run_ids: list[str], lease: dt.timedelta) -> int:
    """Extends, in one statement, the leases of the calls this worker holds: by id, so that a row it
    no longer holds (its final write never landed) runs out and is recovered."""
    with engine.begin() as c:
        return c.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.worker_id == worker_id, Run.status == "running", is_active(Run.status))
            .values(lease_until=utcnow() + lease)
        ).rowcount


def expired_leases(engine: Engine, *, queued: bool) -> list[Run]:
    """Running calls whose lease ran out: queued ones (their worker's to recover, with callbacks),
    or direct calls with an Idempotency-Key (which carry no request)."""
    kind = Run.request.is_not(None) if queued else Run.request.is_(None)
    with engine.connect() as c:
        rows = c.execute(
            select(Run.__table__).where(
                Run.status == "running", is_active(Run.status), Run.lease_until < utcnow(), kind
            )
        ).all()
    return [from_row(Run, r._mapping) for r in rows]


def recover(engine: Engine, box: Box, run: Run, retry: bool) -> bool:
    """A lease ran out: the process running the call died, or could not record its outcome. A
    queued call safe to retry runs again. Any other ends `worker_lost`, since the upstream may have
    acted; a direct call's Idempotency-Key replays that, unless the endpoint is safe to retry: then
    the key is freed, and the caller's repeat runs the call again."""
    values: dict[str, Any]
    if retry and run.request is not None:
        values = dict(status="pending", worker_id=None, lease_until=None, started_at=None)
    else:
        lost = WorkerLost(
            "The gateway process running this call stopped before its outcome was recorded; "
            "the upstream may or may not have acted on it."
        )
        values = dict(
            status="failed",
            lease_until=None,
            ended_at=utcnow(),
            error_code=lost.code,
            error_message=lost.message,
            http_status=lost.status,
            result=box.encrypt(json.dumps(lost.body(None))),
        )
        if retry:
            values["idempotency_key"] = None
    with engine.begin() as c:
        return (
            c.execute(
                update(Run)
                .where(Run.id == run.id, Run.status == "running", Run.lease_until == run.lease_until)
                .values(**values)
            ).rowcount
            == 1
        )


def purge(engine: Engine) -> tuple[int, int]:
    """Deletes records past their `expires`, and frees idempotency keys older than 24 hours."""
    now = utcnow()
    with engine.begin() as c:
        deleted = c.execute(delete(Run).where(Run.expires_at < now, Run.status != "running")).rowcount
        freed = c.execute(
            update(Run)
            .where(Run.idempotency_key.is_not(None), Run.created_at < now - IDEMPOTENCY_TTL)
            .values(idempotency_key=None)
        ).rowcount
    return deleted, freed
