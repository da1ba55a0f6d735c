"""Waitpoints: tokens that something else completes later (a callback, a connection, an approval).

Waiting costs no database query per waiter: each process keeps one future per
waited waitpoint and one background poll that asks about all of them at once.
A completion in the same process wakes its waiters at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.errors import BadRequest
from gateway.storage import keys
from gateway.storage.models import ApiKey, EndUser, Waitpoint, new_id, utcnow

if TYPE_CHECKING:
    from gateway.core.runtime import Services
    from gateway.storage.database import Database

logger = logging.getLogger(__name__)

# A whole number of one unit, from 1s to 30d (MAX_TIMEOUT), spelled out per unit so that the
# OpenAPI document can state the same rule: 1-2592000s, 1-43200m, 1-720h, 1-30d or 1-4w.
DURATION_PATTERN = (
    r"^(?:(?:[1-9][0-9]{0,5}|1[0-9]{6}|2[0-4][0-9]{5}|25[0-8][0-9]{4}|259[01][0-9]{3}|2592000)s"
    r"|(?:[1-9][0-9]{0,3}|[1-3][0-9]{4}|4[0-2][0-9]{3}|43[01][0-9]{2}|43200)m"
    r"|(?:[1-9][0-9]?|[1-6][0-9]{2}|7[01][0-9]|720)h"
    r"|(?:[1-9]|[12][0-9]|30)d"
    r"|[1-4]w)$"
)
DURATION = re.compile(DURATION_PATTERN)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_TIMEOUT = dt.timedelta(days=30)
CONNECTION_TIMEOUT = dt.timedelta(hours=1)
POLL_EVERY = 0.5
STATUSES = ("WAITING", "COMPLETED", "TIMED_OUT", "CANCELLED")
# Kinds a person may cancel: an approval's waitpoint ends when they decide on the held call.
CANCELLABLE = ("manual", "connection")


def parse_duration(value: Any, field: str) -> dt.timedelta:
    if not isinstance(value, str) or DURATION.fullmatch(value) is None:
        raise BadRequest(f'\'{field}\' must be a duration from 1s to 30d, such as "30s", "10m", "2h" or "1d".')
    return dt.timedelta(seconds=int(value[:-1]) * UNITS[value[-1]])


def _row(engine: Engine, **where: Any) -> Waitpoint | None:
    statement = select(Waitpoint.__table__)
    for name, value in where.items():
        statement = statement.where(getattr(Waitpoint, name) == value)
    with engine.connect() as c:
        row = c.execute(statement).first()
    return Waitpoint(**row._mapping) if row else None


def get(engine: Engine, waitpoint_id: str, user_id: int | None = None) -> Waitpoint | None:
    found = _row(engine, id=waitpoint_id) if user_id is None else _row(engine, id=waitpoint_id, user_id=user_id)
    if found is not None and found.status == "WAITING" and found.timeout_at <= utcnow():
        expire_due(engine)
        found = _row(engine, id=waitpoint_id)
    return found


def create(
    engine: Engine,
    *,
    user_id: int,
    api_key_id: int | None,
    timeout: dt.timedelta,
    idempotency_key: str | None = None,
    idempotency_ttl: dt.timedelta = dt.timedelta(hours=1),
    tags: list[str] | None = None,
    kind: str = "manual",
    integration: str | None = None,
    end_user_id: str | None = None,
) -> tuple[Waitpoint, bool]:
    """Returns the waitpoint and whether it was cached (same idempotency key within its TTL)."""
    now = utcnow()
    if idempotency_key is not None:
        with engine.begin() as c:
            # A key past its TTL is free again: take it off the old waitpoint.
            c.execute(
                update(Waitpoint)
                .where(
                    Waitpoint.user_id == user_id,
                    Waitpoint.idempotency_key == idempotency_key,
                    Waitpoint.idempotency_expires_at <= now,
                )
                .values(idempotency_key=None)
            )
        cached = _row(engine, user_id=user_id, idempotency_key=idempotency_key)
        if cached is not None:
            return cached, True
    waitpoint = Waitpoint(
        id=new_id("waitpoint"),
        user_id=user_id,
        api_key_id=api_key_id,
        kind=kind,
        integration=integration,
        end_user_id=end_user_id,
        tags=tags,
        idempotency_key=idempotency_key,
        idempotency_expires_at=now + idempotency_ttl if idempotency_key else None,
        timeout_at=now + timeout,
        created_at=now,
    )
    try:
        with engine.begin() as c:
            c.execute(Waitpoint.__table__.insert().values(**waitpoint.model_dump()))
    except IntegrityError:
        cached = _row(engine, user_id=user_id, idempotency_key=idempotency_key)
        if cached is None:
            raise
        return cached, True
    return waitpoint, False


def complete(engine: Engine, waitpoint_id: str, output: Any) -> bool:
    """The first completion wins; returns whether this one did."""
    with engine.begin() as c:
        won = (
            c.execute(
                update(Waitpoint)
                .where(Waitpoint.id == waitpoint_id, Waitpoint.status == "WAITING", Waitpoint.timeout_at > utcnow())
                .values(status="COMPLETED", output=output, completed_at=utcnow())
            ).rowcount
            == 1
        )
    if won:
        notifier_for(engine).wake(waitpoint_id)
    return won


def cancel(engine: Engine, waitpoint_id: str, user_id: int, by: str = "the person, in the dashboard") -> bool:
    """Ends a waiting waitpoint with a `cancelled` error, like a timeout that came early: whoever
    waits on it gets that error at once. Returns whether this call cancelled it."""
    now = utcnow()
    with engine.begin() as c:
        won = (
            c.execute(
                update(Waitpoint)
                .where(
                    Waitpoint.id == waitpoint_id,
                    Waitpoint.user_id == user_id,
                    Waitpoint.kind.in_(CANCELLABLE),
                    Waitpoint.status == "WAITING",
                    Waitpoint.timeout_at > now,
                )
                .values(
                    status="CANCELLED",
                    completed_at=now,
                    error={"code": "cancelled", "message": f"The waitpoint was cancelled by {by}."},
                )
            ).rowcount
            == 1
        )
    if won:
        notifier_for(engine).wake(waitpoint_id)
    return won


def expire_due(engine: Engine) -> list[str]:
    """Times out every waiting waitpoint whose time has come, whether or not anyone polls it."""
    now = utcnow()
    with engine.begin() as c:
        due = [
            r[0]
            for r in c.execute(
                select(Waitpoint.id).where(Waitpoint.status == "WAITING", Waitpoint.timeout_at <= now)
            ).all()
        ]
        if due:
            c.execute(
                update(Waitpoint)
                .where(Waitpoint.id.in_(due), Waitpoint.status == "WAITING")
                .values(
                    status="TIMED_OUT",
                    completed_at=now,
                    error={"code": "timeout", "message": "The waitpoint timed out before it was completed."},
                )
            )
    notifier = notifier_for(engine)
    for waitpoint_id in due:
        notifier.wake(waitpoint_id)
    return due


def _for_end_user(end_user_id: str | None) -> Any:
    return Waitpoint.end_user_id.is_(None) if end_user_id is None else Waitpoint.end_user_id == end_user_id


def connection_waitpoint(engine: Engine, user_id: int, integration: str, end_user_id: str | None = None) -> Waitpoint:
    """The live waitpoint that completes when this person (or their end user) (re)connects this integration."""
    with engine.connect() as c:
        row = c.execute(
            select(Waitpoint.__table__)
            .where(
                Waitpoint.user_id == user_id,
                _for_end_user(end_user_id),
                Waitpoint.kind == "connection",
                Waitpoint.integration == integration,
                Waitpoint.status == "WAITING",
                Waitpoint.timeout_at > utcnow() + dt.timedelta(minutes=5),
            )
            .order_by(Waitpoint.id.desc())
            .limit(1)
        ).first()
    if row is not None:
        return Waitpoint(**row._mapping)
    waitpoint, _ = create(
        engine,
        user_id=user_id,
        api_key_id=None,
        timeout=CONNECTION_TIMEOUT,
        kind="connection",
        integration=integration,
        end_user_id=end_user_id,
    )
    return waitpoint


def connected(
    engine: Engine, user_id: int, integration: str, connected_at: dt.datetime, end_user_id: str | None = None
) -> None:
    """Completes every waitpoint waiting for this connection."""
    with engine.connect() as c:
        ids = [
            r[0]
            for r in c.execute(
                select(Waitpoint.id).where(
                    Waitpoint.user_id == user_id,
                    _for_end_user(end_user_id),
                    Waitpoint.kind == "connection",
                    Waitpoint.integration == integration,
                    Waitpoint.status == "WAITING",
                )
            ).all()
        ]
    for waitpoint_id in ids:
        complete(engine, waitpoint_id, {"integration": integration, "connected_at": connected_at.isoformat()})


@dataclasses.dataclass
class WaitFilter:
    user_id: int
    key: ApiKey | None = None  # read for an API key: only what it may see (keys.visible)
    statuses: list[str] | None = None
    idempotency_key: str | None = None
    tags: list[str] | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    before_id: str | None = None
    # The owner's id for an end user: only that end user's waitpoints.
    end_user_id: str | None = None
    limit: int = 20


def search(engine: Engine, f: WaitFilter) -> list[Waitpoint]:
    expire_due(engine)
    owner = keys.visible(f.key, Waitpoint) if f.key is not None else Waitpoint.user_id == f.user_id
    statement = select(Waitpoint.__table__).where(owner)
    if f.end_user_id is not None:
        statement = statement.where(Waitpoint.end_user_id == f.end_user_id)
    if f.statuses:
        statement = statement.where(Waitpoint.status.in_(f.statuses))
    if f.idempotency_key:
        statement = statement.where(Waitpoint.idempotency_key == f.idempotency_key)
    if f.since:
        statement = statement.where(Waitpoint.created_at >= f.since)
    if f.until:
        statement = statement.where(Waitpoint.created_at < f.until)
    if f.before_id:
        statement = statement.where(Waitpoint.id < f.before_id)
    statement = statement.order_by(Waitpoint.id.desc())
    found: list[Waitpoint] = []
    with engine.connect() as c:
        # Tags are a JSON list: filter in Python, reading in pages, so it works on SQLite and PostgreSQL.
        for row in c.execute(statement).yield_per(200):
            waitpoint = Waitpoint(**row._mapping)
            if f.tags and not set(f.tags) <= set(waitpoint.tags or []):
                continue
            found.append(waitpoint)
            if len(found) >= f.limit:
                break
    return found


class Notifier:
    """One future per waited waitpoint in this process, and one poll for all of them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self.polls = 0

    def wake(self, waitpoint_id: str) -> None:
        for future in self._waiters.pop(waitpoint_id, []):
            if not future.done():
                future.get_loop().call_soon_threadsafe(_resolve, future)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def wait(self, waitpoint_id: str, seconds: float) -> None:
        """Returns when the waitpoint may have changed, or after `seconds`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(waitpoint_id, []).append(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(waitpoint_id)
            if waiters and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[waitpoint_id]

    async def _poll(self) -> None:
        # Other processes complete waitpoints too: ask about every waited one in one query.
        while self._waiters:
            await asyncio.sleep(POLL_EVERY)
            ids = list(self._waiters)
            if not ids:
                continue
            self.polls += 1
            try:
                done = await asyncio.to_thread(_ended, self._engine, ids)
            except Exception:
                logger.exception("polling waitpoints failed; retrying")
                continue
            for (waitpoint_id,) in done:
                self.wake(waitpoint_id)


def _ended(engine: Engine, ids: list[str]) -> list[Any]:
    expire_due(engine)
    with engine.connect() as c:
        return list(c.execute(select(Waitpoint.id).where(Waitpoint.id.in_(ids), Waitpoint.status != "WAITING")).all())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_notifiers: weakref.WeakKeyDictionary[Engine, Notifier] = weakref.WeakKeyDictionary()


def notifier_for(engine: Engine) -> Notifier:
    if engine not in _notifiers:
        _notifiers[engine] = Notifier(engine)
    return _notifiers[engine]


async def wait(database: Database, waitpoint: Waitpoint, seconds: float) -> Waitpoint:
    """Blocks up to `seconds` (and never past the waitpoint's own timeout) for it to end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    current = waitpoint
    while current.status == "WAITING":
        left = min(deadline - loop.time(), (current.timeout_at - utcnow()).total_seconds() + 0.05)
        if deadline - loop.time() <= 0:
            break
        await notifier_for(database.engine).wait(current.id, max(left, 0.01))
        refreshed = await database.run_unsettled(get, current.id)
        if refreshed is None:
            break
        current = refreshed
    return current


async def wait_for_connection(
    database: Database,
    user_id: int,
    integration: str,
    seconds: float,
    since: dt.datetime | None = None,
    end_user: EndUser | None = None,
) -> dict[str, Any] | None:
    """Waits for this person (or their end user) to (re)connect an integration after `since` (default: now).

    Returns the connection waitpoint's output, or None when `seconds` ran out first.
    """
    from gateway.storage import connections

    since = since or utcnow()
    end_user_key = end_user.id if end_user is not None else None
    external_id = end_user.external_id if end_user is not None else None
    current = await database.run_unsettled(connections.get, user_id, integration, end_user_key)
    if current is not None and current.status == "connected" and current.connected_at >= since:
        return {"integration": integration, "connected_at": current.connected_at.isoformat()}
    waitpoint = await database.run_unsettled(connection_waitpoint, user_id, integration, external_id)
    ended = await wait(database, waitpoint, seconds)
    return ended.output if ended.status == "COMPLETED" else None


def callback_signer(services: Services):  # type: ignore[no-untyped-def]
    return services.signer("waitpoint-callback", None)


def public_signer(services: Services):  # type: ignore[no-untyped-def]
    return services.signer("waitpoint-public", None)


def urls(services: Services, waitpoint: Waitpoint) -> dict[str, str]:
    token = callback_signer(services).dumps(waitpoint.id)
    base = services.settings.action_url(f"/v1/waitpoints/{waitpoint.id}")
    return {"url": f"{base}/callback/{token}", "wait_url": f"{base}/wait"}


def reference(services: Services, waitpoint: Waitpoint) -> dict[str, str]:
    """What an error or a held call carries so that a caller can wait on it."""
    return {"id": waitpoint.id, "wait_url": urls(services, waitpoint)["wait_url"]}
