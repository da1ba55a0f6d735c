"""The database engine, sessions, and the migrations entry point."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlmodel import Session
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from gateway import jsoncodec

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
logger = logging.getLogger(__name__)
T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL + synchronous=NORMAL commits a row in ~15 µs; the default journal takes
    # ~650 µs and blocks the event loop (measured on this machine).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Checkpoints are the `checkpoints` thread's job; SQLite's own, inside a commit, is the
    # fallback for a WAL that thread cannot keep short (or a process that runs no such thread).
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, json_deserializer=jsoncodec.loads_stored)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url, pool_size=20, max_overflow=20, json_deserializer=jsoncodec.loads_stored)
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


# Pessimistic disconnect handling (SQLAlchemy's recipe), but only for a connection that sat idle:
# pool_pre_ping's round trip on every checkout was a tenth of a queue worker's time (bench).
# A connection in steady use that breaks fails one statement, and SQLAlchemy then renews the pool.
IDLE_BEFORE_PING = 5.0


def _checked_in(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, proxy) -> None:  # type: ignore[no-untyped-def]
    if time.monotonic() - record.info.get("checked_in", 0.0) < IDLE_BEFORE_PING:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
    except Exception as exc:
        # The pool drops this connection and checks out another (or a new one).
        raise DisconnectionError(f"an idle connection was lost: {type(exc).__name__}") from exc


CHECKPOINT_EVERY = 0.25
AUTOCHECKPOINT_PAGES = 10_000  # 40 MB of WAL: several seconds of the busiest load measured


async def checkpoints(engine: Engine) -> None:
    """SQLite only: copies the WAL into the database in a thread, four times a second.

    Left to itself SQLite checkpoints inside the commit that crosses 1,000 WAL pages, on the
    event loop, with two fsyncs: 3 to 15 ms during which no call moves. A passive checkpoint
    here blocks no writer. At ~1,000 calls/s the WAL grows ~5,000 pages a second, past 1,000
    between two rounds, so SQLite's own threshold is raised to AUTOCHECKPOINT_PAGES (strace on
    a loaded gateway: the event loop's thread fsynced twelve times a second, and p99 at one
    connection was ~15 ms, until it was).
    """
    if not is_sqlite(engine):
        return

    def checkpoint() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    while True:
        try:
            await asyncio.to_thread(checkpoint)
        except Exception as exc:  # a locked or busy database: the next round will do
            logger.debug("checkpoint skipped: %s", type(exc).__name__)
        await asyncio.sleep(CHECKPOINT_EVERY)


async def write_until_landed(write: Callable[[], T], *, patience: float, what: str) -> T:
    """Runs `write` until it lands: again, with backoff, while the database is unreachable, for up to
    `patience` seconds, then raises its last error. For what cannot be had again once dropped: a
    result the upstream produced, a token the provider rotated. `what` names it in the log, never
    its content."""

    def warn(state: RetryCallState) -> None:
        if state.attempt_number == 1 and state.outcome is not None:
            error = type(state.outcome.exception()).__name__
            logger.warning("%s could not be written (%s); retrying for up to %.0f s", what, error, patience)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(DBAPIError),
        wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
        stop=stop_before_delay(patience),
        before_sleep=warn,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return write()
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several processes may start at once: one migrates, the others wait.
            connection.execute(text("SELECT pg_advisory_xact_lock(727700101)"))
        command.upgrade(_alembic_config(connection), revision)


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrations_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
