"""A person's connections: stored tokens (encrypted) for one integration each."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine

from gateway.crypto import Box
from gateway.storage import caches
from gateway.storage.models import Connection, utcnow

# Every call loads its connection. A change in this process drops the entry at once; one in
# another process is seen within caches.SECONDS (a refreshed token there costs at most one extra
# 401 here, which the refresh path resolves by re-reading the row).


def cached(engine: Engine, user_id: int, integration: str) -> Connection | None:
    cache = caches.of(engine).connections
    found = cache.get((user_id, integration))
    if not isinstance(found, Connection):
        found = get(engine, user_id, integration)
        if found is not None:
            cache.put((user_id, integration), found)
    return found


def in_cache(engine: Engine, user_id: int, integration: str) -> Connection | None:
    """The cached connection, without touching the database (the event loop's fast path)."""
    found = caches.of(engine).connections.get((user_id, integration))
    return found if isinstance(found, Connection) else None


def forget(engine: Engine, user_id: int, integration: str) -> None:
    caches.of(engine).connections.drop((user_id, integration))


def get(engine: Engine, user_id: int, integration: str) -> Connection | None:
    with engine.connect() as c:
        row = c.execute(
            select(Connection.__table__).where(Connection.user_id == user_id, Connection.integration == integration)
        ).first()
    return Connection(**row._mapping) if row else None


def get_by_id(engine: Engine, connection_id: int) -> Connection | None:
    with engine.connect() as c:
        row = c.execute(select(Connection.__table__).where(Connection.id == connection_id)).first()
    return Connection(**row._mapping) if row else None


def list_for_user(engine: Engine, user_id: int) -> list[Connection]:
    with engine.connect() as c:
        rows = c.execute(select(Connection.__table__).where(Connection.user_id == user_id)).all()
    return [Connection(**r._mapping) for r in rows]


def expires_at_from(token: dict[str, Any]) -> dt.datetime | None:
    if token.get("expires_at"):
        return dt.datetime.fromtimestamp(int(token["expires_at"]), dt.UTC)
    if token.get("expires_in"):
        return utcnow() + dt.timedelta(seconds=int(token["expires_in"]))
    return None


def save(
    engine: Engine,
    box: Box,
    *,
    user_id: int,
    integration: str,
    access_token: str,
    refresh_token: str | None = None,
    token_type: str | None = "bearer",
    expires_at: dt.datetime | None = None,
    scopes: str | None = None,
    account: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Connection:
    """Creates or replaces the person's connection; a new connect always starts clean."""
    now = utcnow()
    values = dict(
        status="connected",
        access_token=box.encrypt(access_token),
        refresh_token=box.encrypt(refresh_token),
        token_type=token_type,
        expires_at=expires_at,
        scopes=scopes,
        account=account,
        extra=extra,
        refresh_lease_until=None,
        refresh_lease_owner=None,
        updated_at=now,
        connected_at=now,
        last_error=None,
        last_error_at=None,
    )
    with engine.begin() as c:
        updated = c.execute(
            update(Connection)
            .where(Connection.user_id == user_id, Connection.integration == integration)
            .values(**values)
        ).rowcount
        if not updated:
            c.execute(
                Connection.__table__.insert().values(user_id=user_id, integration=integration, created_at=now, **values)
            )
    forget(engine, user_id, integration)
    found = get(engine, user_id, integration)
    assert found is not None
    return found


def record_error(engine: Engine, connection: Connection, message: str) -> None:
    """Marks the connection as refused by its upstream, for its page to say so."""
    forget(engine, connection.user_id, connection.integration)
    with engine.begin() as c:
        c.execute(
            update(Connection)
            .where(Connection.id == connection.id)
            .values(last_error=message[:500], last_error_at=utcnow())
        )


def clear_error(engine: Engine, connection: Connection) -> None:
    """A call went through again: the refusal is over. Only called when one is recorded, so a
    successful call on a healthy connection writes nothing."""
    forget(engine, connection.user_id, connection.integration)
    with engine.begin() as c:
        c.execute(
            update(Connection)
            .where(Connection.id == connection.id, Connection.last_error_at.is_not(None))
            .values(last_error=None, last_error_at=None)
        )


def remove(engine: Engine, user_id: int, integration: str) -> bool:
    forget(engine, user_id, integration)
    with engine.begin() as c:
        return (
            c.execute(
                delete(Connection).where(Connection.user_id == user_id, Connection.integration == integration)
            ).rowcount
            == 1
        )
