"""The database engine, the threads that use it (`Database`), and the migrations entry point."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection as SqlConnection
from sqlalchemy.engine import Engine, make_url
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
from gateway.errors import DatabaseTimeout
from gateway.storage import caches
from gateway.storage.batch import Batcher, within

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
logger = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

# How long a request waits for the database before answering 503 (GATEWAY_DATABASE_TIMEOUT).
DEFAULT_TIMEOUT = 5.0
# What one statement may take on PostgreSQL: past it the server cancels it, so a lock wait or a
# runaway query frees its connection and thread instead of holding them for good.
STATEMENT_TIMEOUT_MS = 30_000
# TCP keepalives and tcp_user_timeout end a connection whose peer stopped answering (a partition,
# a host that vanished) within seconds rather than the kernel's ~15 minutes of retransmissions.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 10_000
# Threads that run database work; PostgreSQL's pool has room for each of them plus the batcher.
THREADS = 16


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL + synchronous=NORMAL commits a row tens of times faster than the default journal
    # (docs/benchmarks.md).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Checkpoints are the `checkpoints` thread's job; SQLite's own, inside a commit, is the
    # fallback for a WAL that thread cannot keep short (or a process that runs no such thread).
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cursor.close()


def make_engine(database_url: str, timeout: float = DEFAULT_TIMEOUT) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, json_deserializer=jsoncodec.loads_stored)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "checkout", _not_on_the_event_loop)
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    # Options in the URL (a search_path, a statement_timeout of the operator's own) come after
    # ours, so they win; connect_args would otherwise replace them.
    options = " ".join(filter(None, [f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", url.query.get("options")]))
    connect_args = {
        "connect_timeout": max(1, round(timeout)),
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "options": options,
        **KEEPALIVES,
    }
    engine = create_engine(
        url,
        pool_size=20,
        max_overflow=20,
        pool_timeout=timeout,
        connect_args=connect_args,
        json_deserializer=jsoncodec.loads_stored,
    )
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _not_on_the_event_loop)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


# What a connection taken on a thread that runs an event loop does: "warn" logs where it came from
# (once per place), "raise" fails it (the test suite sets it, so a missed place fails a test).
ON_LOOP = "warn"
_warned: set[str] = set()
# Set by the app for its requests and background tasks: the checks below concern the gateway's own
# work, not a test or a command that shares the thread.
serving: contextvars.ContextVar[bool] = contextvars.ContextVar("serving", default=False)


def _not_on_the_event_loop(dbapi_connection, record, proxy) -> None:  # type: ignore[no-untyped-def]
    if asyncio._get_running_loop() is None or not serving.get():
        return
    if ON_LOOP == "raise":
        raise RuntimeError("database work on the event loop: go through Database.run")
    ours = [
        f for f in traceback.extract_stack()[:-1] if "/gateway/" in f.filename and "site-packages" not in f.filename
    ]
    where = "".join(traceback.format_list(ours[-4:]))
    if where not in _warned:
        _warned.add(where)
        logger.warning("database work on the event loop (it blocks every request meanwhile):\n%s", where)


class Database:
    """The engine, and the threads that use it: nothing waits on the database on the event loop.

    Storage functions stay plain synchronous functions taking the engine; `run` calls one in a
    thread and waits at most `timeout` for it, so a database that stops answering costs a caller
    a 503 after a few seconds, not the whole process. Every read settles this process's pending
    batched writes first, so nothing that reads needs to remember to flush.
    """

    def __init__(self, engine: Engine, timeout: float = DEFAULT_TIMEOUT, threads: int = THREADS) -> None:
        self.engine = engine
        self.timeout = timeout
        self.batcher = Batcher(engine, timeout)
        self.caches = caches.of(engine)
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="gateway-db")

    async def run(
        self,
        fn: Callable[Concatenate[Engine, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`fn(engine, *args, **kwargs)` in a thread, once pending batched writes are committed."""
        await self.settle()
        return await self.run_unsettled(fn, *args, **kwargs)

    async def run_unsettled(self, fn: Callable[Concatenate[Engine, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`run` for what never reads batched rows (keys, connections): no wait for a commit."""
        loop = asyncio.get_running_loop()
        return await self.within(
            loop.run_in_executor(self._threads, functools.partial(fn, self.engine, *args, **kwargs))
        )

    async def settle(self) -> None:
        await self.within(self.batcher.settle())

    async def within(self, awaitable: Awaitable[T]) -> T:
        return await within(awaitable, self.timeout)

    async def aclose(self) -> None:
        await self.batcher.aclose()
        self._threads.shutdown(wait=False, cancel_futures=True)


# Pessimistic disconnect handling (SQLAlchemy's recipe), but only for a connection that sat idle:
# pool_pre_ping's round trip on every checkout was a large share of a queue worker's time (docs/benchmarks.md).
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
AUTOCHECKPOINT_PAGES = 10_000  # 40 MB of WAL: several seconds of the busiest load (docs/benchmarks.md)


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


async def write_until_landed(database: Database, write: Callable[[], T], *, patience: float, what: str) -> T:
    """Runs `write` until it lands: again, with backoff, while the database is unreachable, for up to
    `patience` seconds, then raises its last error. For what cannot be had again once dropped: a
    result the upstream produced, a token the provider rotated. `what` names it in the log, never
    its content."""

    def warn(state: RetryCallState) -> None:
        if state.attempt_number == 1 and state.outcome is not None:
            error = type(state.outcome.exception()).__name__
            logger.warning("%s could not be written (%s); retrying for up to %.0f s", what, error, patience)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type((DBAPIError, DatabaseTimeout)),
        wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
        stop=stop_before_delay(patience),
        before_sleep=warn,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await database.run_unsettled(lambda _engine: write())
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def _alembic_config(connection: SqlConnection) -> Config:
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
