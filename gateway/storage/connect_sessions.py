"""Connect sessions: short-lived tokens for the hosted connect page, stored as their SHA-256 only."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine

from gateway.storage.models import ConnectSession, from_row, utcnow

PREFIX = "cs_"


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(engine: Engine, token: str, **values: Any) -> ConnectSession:
    row = dict(id=hash_token(token), created_at=utcnow(), **values)
    with engine.begin() as c:
        # Expired sessions go as new ones come: the table holds what is live, and a little more.
        c.execute(delete(ConnectSession).where(ConnectSession.expires_at < row["created_at"]))
        c.execute(ConnectSession.__table__.insert().values(**row))
    return from_row(ConnectSession, row)


def by_token(engine: Engine, token: str) -> ConnectSession | None:
    """The live session a token opens, or None (unknown, malformed or expired)."""
    if not token.startswith(PREFIX) or len(token) > 100:
        return None
    with engine.connect() as c:
        row = c.execute(select(ConnectSession.__table__).where(ConnectSession.id == hash_token(token))).first()
    if row is None:
        return None
    found = from_row(ConnectSession, row._mapping)
    return found if found.expires_at > utcnow() else None


def end(engine: Engine, session: ConnectSession) -> None:
    """Ends a session once it has connected what it was for: a token opens one connect."""
    with engine.begin() as c:
        c.execute(delete(ConnectSession).where(ConnectSession.id == session.id))


def bind_browser(engine: Engine, session: ConnectSession, binding_hash: str) -> bool:
    """Binds the session to the browser that opened its link first; False when another did."""
    with engine.begin() as c:
        taken = c.execute(
            update(ConnectSession)
            .where(ConnectSession.id == session.id, ConnectSession.browser.is_(None))
            .values(browser=binding_hash)
        ).rowcount
    return taken == 1
