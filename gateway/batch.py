"""Group commit for the hot path's writes: daily-limit counts, refunds and run rows.

Every call counts itself against its limits before the upstream and records a run row
after it. One transaction each through SQLAlchemy was most of the gateway's own cost
(docs/benchmarks.md). Here the writes asked for during one turn of the event loop share
one transaction on one DBAPI connection, run in the order they were asked for; each
caller awaits its own result, which is given only once the transaction has committed.
A transaction that fails fails every write in it with a DBAPIError, which callers
answer as 503 (nothing is half-written: it rolled back).

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
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .models import DailyUsage, Run

logger = logging.getLogger("gateway.batch")

Subjects = list[tuple[str, int | None]]


class _Refused(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


@dataclasses.dataclass
class _Op:
    kind: str  # count | refund | insert_run
    args: Any
    future: asyncio.Future[Any] | None


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
        self.run_columns = [c.name for c in table.columns]
        self.insert_run = (
            f"INSERT INTO {table.name} ({', '.join(self.run_columns)}) "
            f"VALUES ({', '.join(mark for _ in self.run_columns)})"
        )
        self.run_processors: list[Callable[[Any], Any] | None] = [
            c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns
        ]
        day_type = DailyUsage.__table__.c.day.type  # type: ignore[attr-defined]
        self.day_processor = day_type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)

    def run_row(self, values: dict[str, Any]) -> tuple[Any, ...]:
        get = values.get
        return tuple(
            value if process is None or value is None else process(value)
            for value, process in zip(map(get, self.run_columns), self.run_processors, strict=True)
        )


class Batcher:
    """One process's queue of hot writes, flushed at the end of each event-loop turn."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sql = Statements(engine)
        self._ops: list[_Op] = []
        self._scheduled = False
        self._connection: Any = None
        self.batches = 0

    async def count(self, subjects: Subjects, day: dt.date) -> list[int] | int:
        """Adds one call to each subject's count for `day`, all or none.

        Returns the new counts, or the index of the first subject whose limit was already
        reached (then no subject was counted).
        """
        return await self._submit("count", (subjects, self.sql.day_processor(day)), wait=True)

    def refund(self, subjects: list[str], day: dt.date) -> None:
        """Takes one call back from each subject's count; rides along with the next batch."""
        self._submit("refund", (subjects, self.sql.day_processor(day)), wait=False)

    async def insert_run(self, values: dict[str, Any]) -> None:
        await self._submit("insert_run", self.sql.run_row(values), wait=True)

    def _submit(self, kind: str, args: Any, wait: bool) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future() if wait else None
        self._ops.append(_Op(kind, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        ops, self._ops, self._scheduled = self._ops, [], False
        if not ops:
            return
        self.batches += 1
        try:
            results = self._run(ops)
        except Exception as exc:
            error: Exception = exc
            if isinstance(exc, self.engine.dialect.loaded_dbapi.Error):
                self._drop_connection()
                error = DBAPIError("batched writes", None, exc)
            logger.error("a batch of %d writes failed: %s", len(ops), type(exc).__name__)
            for op in ops:
                if op.future is not None and not op.future.done():
                    op.future.set_exception(error)
            return
        for op, result in zip(ops, results, strict=True):
            if op.future is not None and not op.future.done():
                op.future.set_result(result)

    def _run(self, ops: list[_Op]) -> list[Any]:
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        connection = self._connection
        cursor = connection.cursor()
        try:
            results: list[Any] = [None] * len(ops)
            rows = [op.args for op in ops if op.kind == "insert_run"]
            if rows:
                cursor.executemany(self.sql.insert_run, rows)
            for index, op in enumerate(ops):
                if op.kind == "count":
                    results[index] = self._count(cursor, *op.args)
                elif op.kind == "refund":
                    subjects, day = op.args
                    for subject in subjects:
                        cursor.execute(self.sql.decrement, (subject, day))
            connection.commit()
            return results
        except BaseException:
            with contextlib.suppress(Exception):  # the error that matters is the one being raised
                connection.rollback()
            raise
        finally:
            cursor.close()

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

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
            except Exception:
                logger.debug("invalidating a failed connection failed", exc_info=True)

    def close(self) -> None:
        if self._ops:
            self._flush()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
