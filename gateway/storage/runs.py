"""Run history and queued calls: one row per call, written without anything secret in clear.

A direct call writes its row once, at the end. A queued call's row is written
at submission (status `pending`) with its request encrypted, claimed by a
worker (`running`, with a lease), and finished with its result encrypted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import re
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Engine

from gateway import jsoncodec
from gateway.crypto import Box
from gateway.storage import keys
from gateway.storage.batch import Batcher, Queued
from gateway.storage.models import ApiKey, Run, from_row, is_active, new_id, utcnow

TERMINAL = ("completed", "failed", "timeout", "cancelled")
MAX_EXPIRES = 90 * 24 * 3600
QUEUE_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
# A caller's Idempotency-Key header: visible ASCII, as a header value can carry it unchanged.
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
STATUSES = ("pending", "running", *TERMINAL)
IDEMPOTENCY_TTL = dt.timedelta(hours=24)


@dataclasses.dataclass
class RunRecord:
    """What a call did, filled in as the pipeline goes."""

    id: str
    user_id: int | None = None
    api_key_id: int | None = None
    # The end user the call acts for (the owner's id for them), and the connection it named
    # (X-Connection-Id) or then used.
    end_user_id: str | None = None
    connection_id: str | None = None
    integration: str = ""
    endpoint: str = ""
    status: str = "running"
    http_status: int | None = None
    upstream_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    refreshed: bool = False
    queue_name: str | None = None
    worker_id: str | None = None
    started_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    ended_at: dt.datetime | None = None
    # Set when the row already exists (queued or idempotent calls): finish updates it.
    stored: bool = False
    # Set when the final body must be kept (queued and idempotent calls), encrypted.
    keep_result: bool = False
    # Set by workers: approval and daily limits were settled when the call was queued.
    from_queue: bool = False
    # The end user's row id, for their daily limit (not stored: the row names them by end_user_id).
    end_user_key: int | None = None
    # The stored row once finished (stored records only); None if another worker owns it now.
    finished: Run | None = None

    @classmethod
    def start(cls) -> RunRecord:
        return cls(id=new_id("run"))

    @classmethod
    def for_call(
        cls,
        key: ApiKey,
        integration: str,
        endpoint: str,
        end_user_id: str | None = None,
        connection_id: str | None = None,
    ) -> RunRecord:
        """A new call's record: whose it is and what it calls, however it arrived."""
        return cls(
            id=new_id("run"),
            user_id=key.user_id,
            api_key_id=key.id,
            integration=integration,
            endpoint=endpoint,
            end_user_id=end_user_id,
            connection_id=connection_id,
        )

    @classmethod
    def claimed(cls, run: Run, worker_id: str) -> RunRecord:
        """A queued call a worker claimed: its row exists, its result is kept, and its limits and
        approval were settled when it was queued."""
        return cls(
            id=run.id,
            user_id=run.user_id,
            api_key_id=run.api_key_id,
            end_user_id=run.end_user_id,
            connection_id=run.connection_id,
            integration=run.integration,
            endpoint=run.endpoint,
            queue_name=run.queue_name,
            worker_id=worker_id,
            attempts=run.attempts,
            started_at=run.started_at or run.created_at,
            stored=True,
            keep_result=True,
            from_queue=True,
        )

    def finish(self, status: str, http_status: int) -> None:
        self.status = status
        self.http_status = http_status
        self.ended_at = utcnow()

    def summary(self) -> str:
        """What the run did, for a log line: never its params or body."""
        return (
            f"run {self.id} ({self.integration}/{self.endpoint}: {self.status}, HTTP {self.http_status}, "
            f"upstream {self.upstream_status})"
        )

    def values(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in _STORED_FIELDS}
        values["integration"] = self.integration[:100]
        values["endpoint"] = self.endpoint[:100]
        if self.ended_at is not None:
            values["duration_ms"] = (self.ended_at - self.started_at).total_seconds() * 1000
        return values


_STORED_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(RunRecord)
    if f.name not in ("stored", "keep_result", "from_queue", "finished", "end_user_key")
)


def _insert_values(record: RunRecord, body: dict[str, Any] | None, box: Box) -> dict[str, Any]:
    values = record.values()
    # Every row carries the same keys, so a batch is one executemany.
    values["result"] = box.encrypt(json.dumps(body)) if record.keep_result and body is not None else None
    values["created_at"] = record.started_at
    return values


def save_direct(batcher: Batcher, box: Box, record: RunRecord, body: dict[str, Any] | None) -> None:
    """A direct call's row (one not stored yet) goes in with the process's group commit, after the
    answer (batch.py)."""
    batcher.insert_run(_insert_values(record, body, box))


def save(engine: Engine, box: Box, record: RunRecord, body: dict[str, Any] | None) -> bool:
    """Writes the run's final row; False when a stored row is no longer this record's to finish
    (its lease ran out and another process recovered it)."""
    values = record.values()
    if record.keep_result and body is not None:
        values["result"] = box.encrypt(json.dumps(body))
    with engine.begin() as c:
        if record.stored:
            run_id = values.pop("id")
            statement = _finish_statement(tuple(values), guarded=record.worker_id is not None)
            values["_id"], values["_worker_id"] = run_id, record.worker_id
            # The row as written, for what runs after it (waitpoints, callbacks): no second read.
            row = c.execute(statement, values).first()
            record.finished = from_row(Run, row._mapping) if row else None
            return row is not None
        values["created_at"] = record.started_at
        c.execute(Run.__table__.insert().values(**values))
    return True


def abandon(engine: Engine, record: RunRecord) -> bool:
    """A stored call the gateway gave up before the upstream acted on it (its database failed): a
    queued one goes back to the head of its queue, a direct one ends and frees its Idempotency-Key
    so that the caller's retry runs it."""
    if record.from_queue:
        values: dict[str, Any] = dict(status="pending", worker_id=None, lease_until=None, started_at=None)
    else:
        values = dict(
            status="failed",
            lease_until=None,
            idempotency_key=None,
            ended_at=utcnow(),
            error_code="service_unavailable",
            error_message="The gateway's database failed before the upstream acted on this call.",
            http_status=503,
        )
    with engine.begin() as c:
        statement = update(Run).where(Run.id == record.id, Run.worker_id == record.worker_id, Run.status == "running")
        return c.execute(statement.values(**values)).rowcount == 1


@functools.lru_cache(maxsize=16)
def _finish_statement(columns: tuple[str, ...], guarded: bool) -> Any:
    """The UPDATE that finishes a stored run, built once per shape: building it per call (the ORM's
    coercions and a fresh cache key each time) was most of a queue worker's CPU (bench)."""
    table = Run.__table__
    statement = update(table).where(table.c.id == bindparam("_id"))
    if guarded:
        # A worker whose lease was taken over must not overwrite the new owner's result.
        statement = statement.where(table.c.worker_id == bindparam("_worker_id"), table.c.status == "running")
    return statement.values({name: bindparam(name) for name in columns}).returning(*table.columns)


def create_pending(engine: Engine, box: Box, *, record: RunRecord, params: dict[str, Any], **queued: Any) -> None:
    with engine.begin() as c:
        c.execute(Run.__table__.insert().values(**_pending_values(box, record, params, **queued)))


def queued(
    batcher: Batcher, box: Box, key: ApiKey, *, record: RunRecord, params: dict[str, Any], **queued: Any
) -> Queued:
    """A queued call's row, for the batch that writes it with its count (limits.reserve): one
    transaction, shared with the other submissions of the moment, is what a queued call costs."""
    return Queued(
        row=batcher.sql.pending_row(_pending_values(box, record, params, **queued)),
        user_id=key.user_id,
        queue_name=record.queue_name or record.id,
        run_id=record.id,
        end_user_id=record.end_user_id,
        integrations=None if key.integrations is None else list(key.integrations),
        guarded=queued.get("idempotency_key") is not None,
    )


def _pending_values(
    box: Box,
    record: RunRecord,
    params: dict[str, Any],
    status: str = "pending",
    expires_at: dt.datetime | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    approval: str | None = None,
    approval_expires_at: dt.datetime | None = None,
    waitpoint_id: str | None = None,
) -> dict[str, Any]:
    values = record.values()
    values.update(
        status=status,
        created_at=record.started_at,
        started_at=None,
        request=box.encrypt(json.dumps({"params": params})),
        expires_at=expires_at,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        approval=approval,
        approval_expires_at=approval_expires_at,
        waitpoint_id=waitpoint_id,
    )
    return values


def create_started(
    engine: Engine, record: RunRecord, *, idempotency_key: str, request_hash: str, lease: dt.timedelta
) -> None:
    """A direct call's row written before the call, so an idempotent repeat can see it running. Its
    lease (extended by its process, leases.py) lets a repeat recover the key if the process dies."""
    values = record.values()
    values.update(
        created_at=record.started_at,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        lease_until=record.started_at + lease,
    )
    with engine.begin() as c:
        c.execute(Run.__table__.insert().values(**values))


def get(engine: Engine, run_id: str, user_id: int) -> Run | None:
    with engine.connect() as c:
        row = c.execute(select(Run.__table__).where(Run.id == run_id, Run.user_id == user_id)).first()
    return from_row(Run, row._mapping) if row else None


def get_any(engine: Engine, run_id: str) -> Run | None:
    with engine.connect() as c:
        row = c.execute(select(Run.__table__).where(Run.id == run_id)).first()
    return from_row(Run, row._mapping) if row else None


def by_idempotency_key(engine: Engine, api_key_id: int, key: str) -> Run | None:
    with engine.connect() as c:
        row = c.execute(select(Run.__table__).where(Run.api_key_id == api_key_id, Run.idempotency_key == key)).first()
    return from_row(Run, row._mapping) if row else None


def result_of(box: Box, run: Run) -> dict[str, Any] | None:
    return jsoncodec.loads_stored(box.decrypt(run.result) or "null") if run.result else None


def request_of(box: Box, run: Run) -> dict[str, Any]:
    return jsoncodec.loads_stored(box.decrypt(run.request) or "{}") if run.request else {}


def in_queue(
    engine: Engine, key: ApiKey, queue_name: str, up_to: str | None = None, end_user_id: str | None = None
) -> int:
    """Calls ahead of and including `up_to` (or all) that are pending or running in one queue (the
    owner's, or `end_user_id`'s), of those the key may see."""
    with engine.connect() as c:
        return int(c.execute(_in_queue(key, queue_name, up_to, end_user_id)).scalar_one())


def _in_queue(key: ApiKey, queue_name: str, up_to: str | None, end_user_id: str | None = None) -> Any:
    statement = select(func.count()).where(
        keys.visible(key, Run),
        Run.queue_name == queue_name,
        is_active(Run.status),
        Run.end_user_id.is_not_distinct_from(end_user_id),
    )
    return statement if up_to is None else statement.where(Run.id <= up_to)


def queue_depth(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        rows = c.execute(select(Run.status, func.count()).where(is_active(Run.status)).group_by(Run.status)).all()
    return {status: int(count) for status, count in rows}


def cancel(engine: Engine, run_id: str, user_id: int) -> bool:
    """Only a pending run can be removed; the status check and the change are one statement,
    so a worker's claim (which also requires `pending`) and a cancel can never both win."""
    with engine.begin() as c:
        return (
            c.execute(
                update(Run)
                .where(Run.id == run_id, Run.user_id == user_id, Run.status == "pending")
                .values(status="cancelled", ended_at=utcnow(), error_code="cancelled", http_status=None)
            ).rowcount
            == 1
        )


@dataclasses.dataclass
class RunFilter:
    user_id: int
    key: ApiKey | None = None  # read for an API key: only what it may see (keys.visible)
    integration: str | None = None
    endpoint: str | None = None
    queue: str | None = None
    statuses: list[str] | None = None
    api_key_id: int | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    before_id: str | None = None
    run_id: str | None = None
    # The owner's id for an end user: only that end user's runs.
    end_user_id: str | None = None
    limit: int = 50


def search(engine: Engine, f: RunFilter, columns: list[Any] | None = None) -> list[Run]:
    """Newest first. `columns` narrows what is read (the dashboard never reads payloads)."""
    owner = keys.visible(f.key, Run) if f.key is not None else Run.user_id == f.user_id
    statement = select(*(columns or Run.__table__.columns)).where(owner)
    if f.integration:
        statement = statement.where(Run.integration == f.integration)
    if f.endpoint:
        statement = statement.where(Run.endpoint == f.endpoint)
    if f.queue:
        statement = statement.where(Run.queue_name == f.queue)
    if f.end_user_id is not None:
        statement = statement.where(Run.end_user_id == f.end_user_id)
    if f.statuses:
        statement = statement.where(Run.status.in_(f.statuses))
    if f.api_key_id is not None:
        statement = statement.where(Run.api_key_id == f.api_key_id)
    if f.since:
        statement = statement.where(Run.created_at >= f.since)
    if f.until:
        statement = statement.where(Run.created_at < f.until)
    if f.before_id:
        statement = statement.where(Run.id < f.before_id)
    if f.run_id:
        statement = statement.where(Run.id == f.run_id)
    statement = statement.order_by(Run.id.desc()).limit(f.limit)
    with engine.connect() as c:
        return [from_row(Run, r._mapping) for r in c.execute(statement).all()]
