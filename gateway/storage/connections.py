"""Connections: stored tokens (encrypted) for one account at one integration.

An owner (a person with a dashboard login) and each of their end users may hold several
connections to one integration (a work and a personal account, many workspaces). Each has a
public id (`conn_...`) that X-Connection-Id names; a call that names none uses the default
(`choose`): the only one, else the one marked default, else the most recently connected.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine

from gateway.crypto import Box
from gateway.storage import caches
from gateway.storage.models import Connection, from_row, new_id, utcnow

# Every call loads its connection. A change in this process drops the entries at once; one in
# another process is seen within caches.SECONDS (a refreshed token there costs at most one extra
# 401 here, which the refresh path resolves by re-reading the row).


def _key(user_id: int, end_user_id: int | None, integration: str, public_id: str | None) -> tuple[Any, ...]:
    return (user_id, end_user_id, integration, public_id)


def choose(found: list[Connection]) -> Connection | None:
    """The connection a call uses when it names none."""
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    marked = [c for c in found if c.is_default]
    if marked:
        return marked[0]
    return max(found, key=lambda c: (c.connected_at, c.id or 0))


def cached(
    engine: Engine, user_id: int, integration: str, end_user_id: int | None = None, public_id: str | None = None
) -> Connection | None:
    cache = caches.of(engine).connections
    key = _key(user_id, end_user_id, integration, public_id)
    found = cache.get(key)
    if not isinstance(found, Connection):
        found = get(engine, user_id, integration, end_user_id, public_id)
        if found is not None:
            cache.put(key, found)
    return found


def in_cache(
    engine: Engine, user_id: int, integration: str, end_user_id: int | None = None, public_id: str | None = None
) -> Connection | None:
    """The cached connection, without touching the database (the event loop's fast path)."""
    found = caches.of(engine).connections.get(_key(user_id, end_user_id, integration, public_id))
    return found if isinstance(found, Connection) else None


def forget(engine: Engine, user_id: int, integration: str, end_user_id: int | None = None) -> None:
    """Drops every cached entry for this owner (or end user) and integration: the default may change."""
    caches.of(engine).connections.drop_where(
        lambda key, _: isinstance(key, tuple) and key[:3] == (user_id, end_user_id, integration)
    )


def forget_connection(engine: Engine, connection: Connection) -> None:
    forget(engine, connection.user_id, connection.integration, connection.end_user_id)


def _owned_by(user_id: int, end_user_id: int | None) -> list[Any]:
    end_user = Connection.end_user_id.is_(None) if end_user_id is None else Connection.end_user_id == end_user_id
    return [Connection.user_id == user_id, end_user]


def list_for(
    engine: Engine,
    user_id: int,
    end_user_id: int | None = None,
    integration: str | None = None,
    *,
    every_end_user: bool = False,
) -> list[Connection]:
    """An owner's own connections (or one end user's, or with `every_end_user` all of them), oldest first."""
    conditions = [Connection.user_id == user_id] if every_end_user else _owned_by(user_id, end_user_id)
    if integration is not None:
        conditions.append(Connection.integration == integration)
    with engine.connect() as c:
        rows = c.execute(select(Connection.__table__).where(*conditions).order_by(Connection.id)).all()
    return [from_row(Connection, r._mapping) for r in rows]


def get(
    engine: Engine, user_id: int, integration: str, end_user_id: int | None = None, public_id: str | None = None
) -> Connection | None:
    """The named connection (it must be this owner's or end user's, for this integration), or the default."""
    found = list_for(engine, user_id, end_user_id, integration)
    if public_id is not None:
        return next((c for c in found if c.public_id == public_id), None)
    return choose(found)


def list_for_user(engine: Engine, user_id: int) -> list[Connection]:
    """The owner's own connections, one per integration (the default of each): the dashboard's view."""
    by_integration: dict[str, list[Connection]] = {}
    for connection in list_for(engine, user_id):
        by_integration.setdefault(connection.integration, []).append(connection)
    return [c for group in by_integration.values() if (c := choose(group)) is not None]


def by_public_id(engine: Engine, user_id: int, public_id: str) -> Connection | None:
    """One of the owner's connections, theirs or an end user's, by its public id."""
    with engine.connect() as c:
        row = c.execute(
            select(Connection.__table__).where(Connection.user_id == user_id, Connection.public_id == public_id)
        ).first()
    return from_row(Connection, row._mapping) if row else None


def get_by_id(engine: Engine, connection_id: int) -> Connection | None:
    with engine.connect() as c:
        row = c.execute(select(Connection.__table__).where(Connection.id == connection_id)).first()
    return from_row(Connection, row._mapping) if row else None


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
    end_user_id: int | None = None,
    public_id: str | None = None,
    replace_default: bool = True,
    refresh_token: str | None = None,
    token_type: str | None = "bearer",
    expires_at: dt.datetime | None = None,
    scopes: str | None = None,
    account: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Connection:
    """Stores a connect's tokens; a connect always starts clean. Which row it lands in:
    the one named (`public_id`, a reconnect), else one for the same provider account, else (with
    `replace_default`, the dashboard's one-connection pages) the current default, else a new one.
    A reconnect keeps the connection's id, label and default mark."""
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
        rows = c.execute(
            select(Connection.__table__).where(*_owned_by(user_id, end_user_id), Connection.integration == integration)
        ).all()
        existing = [from_row(Connection, r._mapping) for r in rows]
        target = _target(existing, public_id, account, replace_default)
        if target is not None:
            c.execute(update(Connection).where(Connection.id == target.id).values(**values))
            public_id = target.public_id
        else:
            public_id = new_id("conn")
            c.execute(
                Connection.__table__.insert().values(
                    public_id=public_id,
                    user_id=user_id,
                    end_user_id=end_user_id,
                    integration=integration,
                    created_at=now,
                    is_default=False,
                    **values,
                )
            )
    forget(engine, user_id, integration, end_user_id)
    found = by_public_id(engine, user_id, public_id)
    assert found is not None
    return found


def _target(
    existing: list[Connection], public_id: str | None, account: str | None, replace_default: bool
) -> Connection | None:
    if public_id is not None:
        named = next((c for c in existing if c.public_id == public_id), None)
        if named is None:
            raise LookupError(public_id)
        return named
    if account is not None:
        same = next((c for c in existing if c.account == account), None)
        if same is not None:
            return same
    return choose(existing) if replace_default else None


def change(
    engine: Engine, connection: Connection, *, label: str | None = None, make_default: bool = False
) -> Connection:
    """Sets a connection's label, or makes it its owner's (or end user's) default for its integration."""
    with engine.begin() as c:
        if make_default:
            c.execute(
                update(Connection)
                .where(
                    *_owned_by(connection.user_id, connection.end_user_id),
                    Connection.integration == connection.integration,
                )
                .values(is_default=False)
            )
            c.execute(update(Connection).where(Connection.id == connection.id).values(is_default=True))
        if label is not None:
            c.execute(update(Connection).where(Connection.id == connection.id).values(label=label or None))
    forget_connection(engine, connection)
    found = get_by_id(engine, connection.id or 0)
    assert found is not None
    return found


def record_error(engine: Engine, connection: Connection, message: str) -> None:
    """Marks the connection as refused by its upstream, for its page to say so."""
    forget_connection(engine, connection)
    with engine.begin() as c:
        c.execute(
            update(Connection)
            .where(Connection.id == connection.id)
            .values(last_error=message[:500], last_error_at=utcnow())
        )


def clear_error(engine: Engine, connection: Connection) -> None:
    """A call went through again: the refusal is over. Only called when one is recorded, so a
    successful call on a healthy connection writes nothing."""
    forget_connection(engine, connection)
    with engine.begin() as c:
        c.execute(
            update(Connection)
            .where(Connection.id == connection.id, Connection.last_error_at.is_not(None))
            .values(last_error=None, last_error_at=None)
        )


def touch_due(engine: Engine, public_id: str) -> bool:
    """Whether the connection's last use is worth writing now (once per caches.TOUCH_SECONDS per process)."""
    touched = caches.of(engine).touched
    if touched.get(("connection", public_id)) is not None:
        return False
    touched.put(("connection", public_id), True)
    return True


def touch(engine: Engine, public_id: str) -> None:
    with engine.begin() as c:
        c.execute(update(Connection).where(Connection.public_id == public_id).values(last_used_at=utcnow()))


def remove(engine: Engine, user_id: int, integration: str, end_user_id: int | None = None) -> bool:
    """Removes the default connection of the owner (or end user) for the integration."""
    found = get(engine, user_id, integration, end_user_id)
    return found is not None and remove_connection(engine, found)


def remove_connection(engine: Engine, connection: Connection) -> bool:
    forget_connection(engine, connection)
    with engine.begin() as c:
        return c.execute(delete(Connection).where(Connection.id == connection.id)).rowcount == 1
