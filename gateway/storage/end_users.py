"""End users: an owner's own users, known by the owner's id for them, made on first use."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.storage import caches
from gateway.storage.models import Connection, ConnectSession, EndUser, Run, Waitpoint, from_row, utcnow

# 1-200 printable characters (visible ASCII and spaces inside, no control characters): what a
# header can carry unchanged, and what an owner's own ids (UUIDs, emails, numbers) look like.
EXTERNAL_ID = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,198}[\x21-\x7e])?$")


def valid_external_id(value: str) -> bool:
    return bool(EXTERNAL_ID.match(value))


def find(engine: Engine, user_id: int, external_id: str) -> EndUser | None:
    with engine.connect() as c:
        row = c.execute(
            select(EndUser.__table__).where(EndUser.user_id == user_id, EndUser.external_id == external_id)
        ).first()
    return from_row(EndUser, row._mapping) if row else None


def resolve(engine: Engine, user_id: int, external_id: str, **details: Any) -> EndUser:
    """The owner's end user with this id, made now if this is its first use (two processes making
    it at once agree on one row). `details` (display_name, email) fill in what is not known yet."""
    cache = caches.of(engine).end_users
    found = cache.get((user_id, external_id))
    if isinstance(found, EndUser) and not _missing(found, details):
        return found
    found = find(engine, user_id, external_id)
    if found is None:
        try:
            with engine.begin() as c:
                c.execute(EndUser.__table__.insert().values(user_id=user_id, external_id=external_id, **details))
        except IntegrityError:
            pass  # made by another call meanwhile
        found = find(engine, user_id, external_id)
        assert found is not None
    elif _missing(found, details):
        found = update_details(engine, found, **{k: v for k, v in details.items() if getattr(found, k) is None})
    cache.put((user_id, external_id), found)
    return found


def _missing(end_user: EndUser, details: dict[str, Any]) -> bool:
    return any(value is not None and getattr(end_user, name) is None for name, value in details.items())


def by_id(engine: Engine, end_user_id: int) -> EndUser | None:
    with engine.connect() as c:
        row = c.execute(select(EndUser.__table__).where(EndUser.id == end_user_id)).first()
    return from_row(EndUser, row._mapping) if row else None


def known(engine: Engine, user_id: int, external_id: str) -> EndUser | None:
    """The end user if they exist (cached), without making one: what a queued call or a lookup uses."""
    cache = caches.of(engine).end_users
    found = cache.get((user_id, external_id))
    if isinstance(found, EndUser):
        return found
    found = find(engine, user_id, external_id)
    if found is not None:
        cache.put((user_id, external_id), found)
    return found


def in_cache(engine: Engine, user_id: int, external_id: str) -> EndUser | None:
    found = caches.of(engine).end_users.get((user_id, external_id))
    return found if isinstance(found, EndUser) else None


def update_details(engine: Engine, end_user: EndUser, **values: Any) -> EndUser:
    """Renames an end user (display_name, email); None clears a value."""
    with engine.begin() as c:
        c.execute(update(EndUser).where(EndUser.id == end_user.id).values(**values))
    caches.of(engine).end_users.drop((end_user.user_id, end_user.external_id))
    found = find(engine, end_user.user_id, end_user.external_id)
    assert found is not None
    return found


def search(engine: Engine, user_id: int, query: str | None = None, limit: int = 50, after: int = 0) -> list[EndUser]:
    """An owner's end users, oldest first, matching `query` in their id, name or email."""
    statement = select(EndUser.__table__).where(EndUser.user_id == user_id, EndUser.id > after)
    if query:
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        statement = statement.where(
            or_(
                EndUser.external_id.ilike(pattern, escape="\\"),
                EndUser.display_name.ilike(pattern, escape="\\"),
                EndUser.email.ilike(pattern, escape="\\"),
            )
        )
    with engine.connect() as c:
        rows = c.execute(statement.order_by(EndUser.id).limit(limit)).all()
    return [from_row(EndUser, r._mapping) for r in rows]


def external_ids(engine: Engine, ids: set[int]) -> dict[int, str]:
    """The owner's ids for these end users."""
    if not ids:
        return {}
    with engine.connect() as c:
        rows = c.execute(select(EndUser.id, EndUser.external_id).where(EndUser.id.in_(sorted(ids)))).all()
    return {int(i): str(e) for i, e in rows}


def connection_counts(engine: Engine, end_user_ids: list[int]) -> dict[int, int]:
    if not end_user_ids:
        return {}
    with engine.connect() as c:
        rows = c.execute(
            select(Connection.end_user_id, func.count())
            .where(Connection.end_user_id.in_(end_user_ids))
            .group_by(Connection.end_user_id)
        ).all()
    return {int(end_user_id): int(count) for end_user_id, count in rows}


def delete_all(engine: Engine, end_user: EndUser) -> None:
    """Removes the end user, their connections (the caller revokes the tokens first) and connect
    sessions, their waitpoints, and the stored payloads of their runs (the rows stay, for the
    owner's history and counts, without what was sent or answered)."""
    with engine.begin() as c:
        # Queued calls not started yet would run with no connection and no payload: they end here.
        c.execute(
            update(Run)
            .where(Run.user_id == end_user.user_id, Run.end_user_id == end_user.external_id, Run.status == "pending")
            .values(status="cancelled", ended_at=utcnow(), error_code="cancelled", http_status=None)
        )
        c.execute(delete(ConnectSession).where(ConnectSession.end_user_id == end_user.id))
        c.execute(delete(Connection).where(Connection.end_user_id == end_user.id))
        c.execute(
            delete(Waitpoint).where(
                Waitpoint.user_id == end_user.user_id, Waitpoint.end_user_id == end_user.external_id
            )
        )
        c.execute(
            update(Run)
            .where(Run.user_id == end_user.user_id, Run.end_user_id == end_user.external_id)
            .values(request=None, result=None, callback_url=None)
        )
        c.execute(delete(EndUser).where(EndUser.id == end_user.id))
    caches.of(engine).end_users.drop((end_user.user_id, end_user.external_id))
    caches.of(engine).connections.drop_where(lambda key, _: isinstance(key, tuple) and key[1] == end_user.id)
