"""Group commit for the hot path's writes: daily-limit counts, refunds and run rows.

Every call counts itself against its limits before the upstream and records a run row
after it. One transaction each through SQLAlchemy was most of the gateway's own cost
(docs/benchmarks.md). Here the writes of calls in flight share one transaction on one
DBAPI connection, committed on a writer thread of its own. A count alone in the process is
committed at once; when other calls are in flight it waits up to GROUP_DELAY for them to
join, or less once every call in flight is waiting on the commit (PostgreSQL's
commit_delay and commit_siblings, the same idea), and writes that arrive during a commit
go together with the next.

- A count is awaited: the call goes upstream only once its count is committed, so limits
  stay exact across processes. A transaction that fails fails every count in it with a
  DBAPIError (the call answers 503; the transaction rolled back, nothing is half-written).
- A queued call is a count with its row: the count, the pending row and its place in its queue
  are written in one transaction with the other queued calls of the moment, and the caller
  gets its 202 once that commits. A limit already reached writes no row.
- A run row and a refund are not awaited: the answer goes out first and the row follows
  with the next commit, at most ROW_DELAY later. Every read through `Database` settles
  first (`Batcher.settle`), so a process always shows the calls it answered. A row that cannot be written is logged and counted
  (`on_lost`): the answer reflects a call the upstream already ran, and must not be
  replaced by a 503 that invites a retry.

The statements are plain SQL on the DBAPI connection, built once per dialect; values
go through the columns' own SQLAlchemy bind processors, so rows are stored exactly as
the ORM stores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import DateTime, Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway import jsoncodec
from gateway.errors import DatabaseTimeout
from gateway.storage.models import DailyUsage, Run

logger = logging.getLogger(__name__)
T = TypeVar("T")

Subjects = list[tuple[str, int | None]]
# Columns only queued and held calls fill (runs.create_pending). A direct call's row leaves them
# NULL, and an INSERT naming only the others is measurably cheaper per row on SQLite (docs/benchmarks.md).
QUEUED_ONLY = frozenset(
    {
        "request",
        "lease_until",
        "expires_at",
        "callback_url",
        "idempotency_key",
        "request_hash",
        "waitpoint_id",
        "approval",
        "approval_expires_at",
    }
)
# How long a count waits for other calls in flight to join its commit. Without it, under load
# each flush held about one write; with it, many (docs/benchmarks.md). uvloop's
# timers count whole milliseconds (a delay under 0.5 ms is the next turn of the loop).
GROUP_DELAY = 0.001
# How long a run row or refund may wait for a commit: they ride along with the next count's
# commit, so a lone caller pays one commit per call rather than two.
ROW_DELAY = 0.002


def _processor(column: Any, dialect: Any) -> Callable[[Any], Any] | None:
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None or not isinstance(getattr(column.type, "impl", column.type), DateTime):
        return process
    return _faster_datetime(process)


def _aware_utc_text(value: dt.datetime) -> str:
    if value.utcoffset() is None:
        raise ValueError("Datetime values must have timezone information.")
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _faster_datetime(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLite stores datetimes as text, three per row, and SQLAlchemy's processors are slow to write
    it; isoformat writes the same text several times faster (docs/benchmarks.md): used only if,
    for a probe, it writes exactly what SQLAlchemy writes."""
    probe = dt.datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    return _aware_utc_text if process(probe) == _aware_utc_text(probe) else process


def _json_value(value: Any) -> Any:
    # json_populate_recordset reads text: a time as naive UTC, as the ORM stores it.
    if isinstance(value, dt.datetime) and value.utcoffset() is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat()
    return value.isoformat() if isinstance(value, dt.datetime | dt.date) else value


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """Awaits at most `timeout`, then answers 503: the database did not answer in time."""
    try:
        # asyncio.timeout rather than wait_for: no task or future of its own on every database call.
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise DatabaseTimeout(
            f"The gateway's database did not answer within {timeout:g} s; try again shortly."
        ) from None


class Statements:
    """The SQL text of each hot statement for one dialect, and the bind processors for run rows."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        usage = DailyUsage.__table__.name  # type: ignore[attr-defined]
        self.increment = f"UPDATE {usage} SET count = count + 1 WHERE subject = {mark} AND day = {mark} RETURNING count"
        self.increment_below = (
            f"UPDATE {usage} SET count = count + 1 WHERE subject = {mark} AND day = {mark} AND count < {mark} "
            "RETURNING count"
        )
        self.create = f"INSERT INTO {usage} (subject, day, count) VALUES ({mark}, {mark}, 0) ON CONFLICT DO NOTHING"
        self.decrement = f"UPDATE {usage} SET count = count - 1 WHERE subject = {mark} AND day = {mark} AND count > 0"
        table: Table = Run.__table__  # type: ignore[assignment]
        columns = [c for c in table.columns if c.name not in QUEUED_ONLY]
        self.run_columns = [c.name for c in columns]
        self.insert_run = (
            f"INSERT INTO {table.name} ({', '.join(self.run_columns)}) "
            f"VALUES ({', '.join(mark for _ in self.run_columns)})"
        )
        # PostgreSQL: the whole batch as one statement (migration 0007's gateway_count and the run
        # rows from one JSON array), sent in autocommit: one round trip, one transaction.
        self.one_statement = dialect.name == "postgresql"
        self.batch = (
            f"WITH inserted AS (INSERT INTO {table.name} ({', '.join(self.run_columns)}) "
            f"SELECT {', '.join(self.run_columns)} FROM json_populate_recordset(NULL::{table.name}, %s::json)) "
            "SELECT gateway_count(%s::text[], %s::date[], %s::text[], %s::integer[], %s::integer[], %s::date[])"
        )
        self.run_processors = _processors(columns, dialect)
        # A queued call's row names every column; its place counts the calls ahead of it in its queue.
        self.pending_columns = [c.name for c in table.columns]
        self.pending_processors = _processors(list(table.columns), dialect)
        self.insert_pending = (
            f"INSERT INTO {table.name} ({', '.join(self.pending_columns)}) "
            f"VALUES ({', '.join(mark for _ in self.pending_columns)})"
        )
        self.mark = mark
        # The end user's queue (NULL: the owner's), compared null-safely as each dialect spells it.
        same = "IS" if dialect.name == "sqlite" else "IS NOT DISTINCT FROM"
        self.position = (
            f"SELECT count(*) FROM {table.name} WHERE user_id = {mark} AND queue_name = {mark} "
            f"AND status IN ('pending', 'running') AND id <= {mark} AND end_user_id {same} {mark}"
        )
        day_type = DailyUsage.__table__.c.day.type  # type: ignore[attr-defined]
        self.day_processor = day_type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)

    def run_row(self, values: dict[str, Any]) -> list[Any]:
        return _row(values, self.run_columns, self.run_processors)

    def pending_row(self, values: dict[str, Any]) -> list[Any]:
        return _row(values, self.pending_columns, self.pending_processors)

    def place(self, queued: Queued) -> tuple[str, list[Any]]:
        """The statement and arguments that count a queued call's place, as the key that queued it
        sees its queue (storage.keys.visible)."""
        args: list[Any] = [queued.user_id, queued.queue_name, queued.run_id, queued.end_user_id]
        if queued.integrations is None:
            return self.position, args
        marks = ", ".join(self.mark for _ in queued.integrations) or "NULL"
        return f"{self.position} AND (integration IS NULL OR integration IN ({marks}))", [
            *args,
            *queued.integrations,
        ]


def _processors(columns: list[Any], dialect: Any) -> list[tuple[int, Callable[[Any], Any]]]:
    processors = [_processor(c, dialect) for c in columns]
    return [(index, process) for index, process in enumerate(processors) if process is not None]


def _row(values: dict[str, Any], columns: list[str], processors: list[tuple[int, Callable[[Any], Any]]]) -> list[Any]:
    row = list(map(values.get, columns))
    for index, process in processors:
        if row[index] is not None:
            row[index] = process(row[index])
    return row


@dataclasses.dataclass
class Queued:
    """A queued call's pending row (every column, as Statements.pending_row makes it) and what
    places it in its queue."""

    row: list[Any]
    user_id: int
    queue_name: str
    run_id: str
    # The end user whose queue it joins (None: the owner's).
    end_user_id: str | None
    # The integrations the key that queued it may see (None: all): its place counts only those.
    integrations: list[str] | None
    # With an Idempotency-Key, a twin may get there first: this one then fails alone.
    guarded: bool = False


class Batcher:
    """One process's hot writes, committed on a writer thread of their own.

    The event loop only collects writes and hands them over: a commit, however slow (a lock
    wait, a database that stopped answering), never holds the loop. While one commit is in
    flight the next writes gather and go together when it ends, so a slow commit makes the
    next group larger rather than the queue longer.
    """

    def __init__(self, engine: Engine, timeout: float = 5.0) -> None:
        self.engine = engine
        # The most a count is awaited (GATEWAY_DATABASE_TIMEOUT): then the call answers 503.
        self.timeout = timeout
        self.sql = Statements(engine)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="gateway-batch")
        self._inflight: asyncio.Future[Any] | None = None
        # Writes handed over so far, and writes committed (or failed) so far: what settle() waits on.
        self._handed = 0
        self._done = 0
        self._settling: list[tuple[int, asyncio.Future[None]]] = []
        self._counts: list[tuple[Subjects, Any, asyncio.Future[Any], Queued | None]] = []
        self._refunds: list[tuple[list[str], Any]] = []
        self._rows: list[list[Any]] = []
        self._scheduled = False
        self._timer: asyncio.Handle | None = None
        self._timer_when = 0.0
        # Calls in flight in this process (kept by execute.py): how many could join a commit.
        self.calls = 0
        self._connection: Any = None
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._integrity_error: type[Exception] = engine.dialect.loaded_dbapi.IntegrityError
        # Called with the number of run rows a failed batch lost.
        self.on_lost: Callable[[int], None] = lambda rows: None

    def count(self, subjects: Subjects, day: dt.date) -> asyncio.Future[list[int] | int]:
        """Adds one call to each subject's count for `day`, all or none. Resolves to the new
        counts, or to the index of the first subject whose limit was already reached (then
        no subject was counted)."""
        return self._add_count(subjects, day, None)

    def enqueue(self, subjects: Subjects, day: dt.date, queued: Queued) -> asyncio.Future[tuple[list[int] | int, int]]:
        """`count`, and when counted the queued call's row, in one transaction. Resolves to the
        count's result and the call's place in its queue (0 when the limit was reached and nothing
        was written); fails with IntegrityError when a guarded row's twin is already stored."""
        return self._add_count(subjects, day, queued)

    def _add_count(self, subjects: Subjects, day: dt.date, queued: Queued | None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._counts.append((subjects, self.sql.day_processor(day), future, queued))
        self._handed += 1
        if self.calls <= 1:
            # Alone in the process: nothing can join this commit, so waiting a turn of the loop
            # would only add to the call's latency.
            self.flush()
        elif len(self._counts) >= self.calls:
            self._flush_within(0)  # every call in flight waits on this commit: nothing more is coming
        else:
            # Other calls are in flight: give them a moment to join this commit (a group-commit
            # delay only when there is a group, as PostgreSQL's commit_delay/commit_siblings do).
            self._flush_within(GROUP_DELAY)
        return future

    async def counted(self, subjects: Subjects, day: dt.date) -> list[int] | int:
        """`count`, awaited at most `timeout`: a count given up is not made (or is refunded)."""
        return await within(self.count(subjects, day), self.timeout)

    async def enqueued(self, subjects: Subjects, day: dt.date, queued: Queued) -> tuple[list[int] | int, int]:
        """`enqueue`, awaited at most `timeout`. One given up before its commit is not written; one
        given up during it stays queued, as a request whose answer was lost would."""
        return await within(self.enqueue(subjects, day, queued), self.timeout)

    def refund(self, subjects: list[str], day: dt.date) -> None:
        """Takes one call back from each subject's count."""
        self._refunds.append((subjects, self.sql.day_processor(day)))
        self._handed += 1
        self._flush_within(ROW_DELAY)

    def insert_run(self, values: dict[str, Any]) -> None:
        self._rows.append(self.sql.run_row(values))
        self._handed += 1
        self._flush_within(ROW_DELAY)

    def _flush_within(self, delay: float) -> None:
        if self._scheduled:
            return  # already at the next turn of the loop
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
            self._timer = None
        if delay <= 0:
            self._scheduled = True
            loop.call_soon(self.flush)
        else:
            # uvloop's handles do not all say when they are due: keep it here.
            self._timer, self._timer_when = loop.call_at(when, self.flush), when

    def flush(self) -> None:
        """Hands what is pending to the writer thread, unless a commit is in flight: then it
        goes when that one ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._scheduled = False
        if self._inflight is not None:
            return
        # A count whose caller gave up (timed out, cancelled) is not made: it never went upstream.
        counts = [c for c in self._counts if not c[2].done()]
        given_up = len(self._counts) - len(counts)
        refunds, rows = self._refunds, self._rows
        self._counts, self._refunds, self._rows = [], [], []
        if not (counts or refunds or rows):
            self._committed(given_up)
            return
        size = len(counts) + len(refunds) + len(rows) + given_up
        loop = asyncio.get_running_loop()
        self._inflight = loop.run_in_executor(self._writer, self._run, counts, refunds, rows)
        self._inflight.add_done_callback(lambda done: self._landed(done, counts, len(rows), size))

    def _landed(self, done: asyncio.Future[Any], counts: list[Any], rows: int, size: int) -> None:
        self._inflight = None
        error = done.exception()
        if error is not None:
            if isinstance(error, self._dbapi_error):
                error = DBAPIError("batched writes", None, error)
            logger.error("a batch of %d counts and %d run rows failed: %s", len(counts), rows, type(error).__name__)
            if rows:
                self.on_lost(rows)
            for _, _, future, _ in counts:
                if not future.done():
                    future.set_exception(error)
        else:
            for (subjects, day, future, queued), result in zip(counts, done.result(), strict=True):
                if isinstance(result, self._integrity_error):
                    if not future.done():
                        future.set_exception(IntegrityError("queued call", None, result))
                elif not future.done():
                    future.set_result(result)
                elif isinstance(result, list) and queued is None:
                    # Counted, but its caller stopped waiting (and answered without calling): give it back.
                    self._refunds.append(([subject for subject, _ in subjects], day))
                    self._handed += 1
        self._committed(size)
        if self._counts or self._refunds or self._rows:
            self.flush()

    def _committed(self, writes: int) -> None:
        self._done += writes
        still = []
        for target, waiter in self._settling:
            if self._done >= target:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._settling = still

    async def settle(self) -> None:
        """Returns once every write handed to this batcher before the call has been committed
        (or has failed): what reads run rows and counts back sees this process's own calls."""
        if self._done >= self._handed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settling.append((self._handed, waiter))
        self.flush()
        await waiter

    def _run(
        self,
        counts: list[tuple[Subjects, Any, asyncio.Future[Any], Queued | None]],
        refunds: list[tuple[list[str], Any]],
        rows: list[list[Any]],
    ) -> list[Any]:
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        try:
            cursor = connection.cursor()
        except BaseException:
            self._drop_connection()
            raise
        plain = [(index, c) for index, c in enumerate(counts) if c[3] is None]
        queued = [(index, c) for index, c in enumerate(counts) if c[3] is not None]
        results: list[Any] = [None] * len(counts)
        if self.sql.one_statement:
            try:
                if plain or refunds or rows or not queued:
                    answers = self._run_one_statement(cursor, [c for _, c in plain], refunds, rows)
                    for (index, _), answer in zip(plain, answers, strict=True):
                        results[index] = answer
                if queued:
                    # Autocommit is this connection's mode: the queued calls need a transaction of their own.
                    cursor.execute("BEGIN")
                    try:
                        for index, (subjects, day, _, item) in queued:
                            results[index] = self._enqueue(cursor, subjects, day, item)
                        cursor.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(Exception):
                            cursor.execute("ROLLBACK")
                        raise
                return results
            except BaseException as exc:
                if isinstance(exc, self._dbapi_error):
                    self._drop_connection()
                raise
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        try:
            if rows:
                cursor.executemany(self.sql.insert_run, rows)
            # Refunds first: each gives back a call counted in an earlier commit, and a count
            # queued after it must see that room.
            for subjects, day in refunds:
                for subject in subjects:
                    cursor.execute(self.sql.decrement, (subject, day))
            for index, (subjects, day, _, _) in plain:
                results[index] = self._count(cursor, subjects, day)
            if queued and not connection.driver_connection.in_transaction:
                cursor.execute("BEGIN")  # so that a guarded call's savepoint is inside this transaction
            for index, (subjects, day, _, item) in queued:
                results[index] = self._enqueue(cursor, subjects, day, item)
            connection.commit()
            return results
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the error that matters is the one being raised
                connection.rollback()
            if isinstance(exc, self._dbapi_error):
                self._drop_connection()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    def _run_one_statement(
        self,
        cursor: Any,
        counts: list[tuple[Subjects, Any, asyncio.Future[Any], Queued | None]],
        refunds: list[tuple[list[str], Any]],
        rows: list[list[Any]],
    ) -> list[list[int] | int]:
        refund_subjects = [subject for subjects, _ in refunds for subject in subjects]
        refund_days = [day for subjects, day in refunds for _ in subjects]
        subjects = [subject for call, _, _, _ in counts for subject, _ in call]
        limits = [limit for call, _, _, _ in counts for _, limit in call]
        calls = [index for index, (call, _, _, _) in enumerate(counts) for _ in call]
        days = [day for call, day, _, _ in counts for _ in call]
        records = [dict(zip(self.sql.run_columns, map(_json_value, row), strict=True)) for row in rows]
        cursor.execute(
            self.sql.batch,
            (jsoncodec.dumps(records).decode(), refund_subjects, refund_days, subjects, limits, calls, days),
        )
        answer = cursor.fetchone()[0] or []
        results: list[list[int] | int] = []
        at = 0
        for call, _, _, _ in counts:
            values = answer[at : at + len(call)]
            at += len(call)
            results.append(values.index(-1) if -1 in values else list(values))
        return results

    def _enqueue(self, cursor: Any, subjects: Subjects, day: Any, queued: Queued) -> Any:
        """One queued call inside the batch's transaction: its count, then its row and its place."""
        if queued.guarded:
            cursor.execute("SAVEPOINT gateway_queued")
        try:
            counted = self._count(cursor, subjects, day)
            if isinstance(counted, int):
                return counted, 0
            cursor.execute(self.sql.insert_pending, queued.row)
            cursor.execute(*self.sql.place(queued))
            place = int(cursor.fetchone()[0])
        except self._integrity_error as exc:
            if not queued.guarded:
                raise
            # Its twin (the same Idempotency-Key) is stored: this call alone is undone, count included.
            cursor.execute("ROLLBACK TO SAVEPOINT gateway_queued")
            cursor.execute("RELEASE SAVEPOINT gateway_queued")
            return exc
        if queued.guarded:
            cursor.execute("RELEASE SAVEPOINT gateway_queued")
        return counted, place

    def _count(self, cursor: Any, subjects: Subjects, day: Any) -> list[int] | int:
        counts: list[int] = []
        for index, (subject, limit) in enumerate(subjects):
            count = self._increment(cursor, subject, day, limit)
            if count is None:
                # Undo this call's earlier subjects: the transaction is still ours, nobody saw them.
                for undo, _ in subjects[:index]:
                    cursor.execute(self.sql.decrement, (undo, day))
                return index
            counts.append(count)
        return counts

    def _increment(self, cursor: Any, subject: str, day: Any, limit: int | None) -> int | None:
        statement, args = (
            (self.sql.increment, (subject, day)) if limit is None else (self.sql.increment_below, (subject, day, limit))
        )
        cursor.execute(statement, args)
        row = cursor.fetchone()
        if row is None:
            # The first call of the day for this subject, or a limit already reached.
            cursor.execute(self.sql.create, (subject, day))
            cursor.execute(statement, args)
            row = cursor.fetchone()
        return None if row is None else int(row[0])

    def _connect(self) -> Any:
        """A connection of the pool that answers. A batch replaces its connection only after an
        error, when the pool may hold others broken the same way (a restart, a cut): each is tried
        once, and one that fails is dropped rather than failing the batch."""
        error: Exception | None = None
        for _ in range(3):
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute("SELECT 1")
                cursor.close()
                if self.sql.one_statement:
                    connection.rollback()
                    connection.driver_connection.autocommit = True
                return connection
            except self._dbapi_error as exc:
                error = exc
                with contextlib.suppress(Exception):
                    connection.invalidate()
        assert error is not None
        raise error

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
            except Exception:
                logger.debug("invalidating a failed connection failed", exc_info=True)

    async def aclose(self) -> None:
        """Commits what is pending, then stops the writer thread."""
        with contextlib.suppress(Exception):
            await self.settle()
        self._writer.submit(self._close_connection).result()
        self._writer.shutdown(wait=True)

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                if self.sql.one_statement:
                    connection.driver_connection.autocommit = False  # back to the pool as it came
                connection.close()
