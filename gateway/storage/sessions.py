"""Browser sessions kept in the database, and the sign-in throttle.

The cookie holds a random value and the table only its SHA-256, so a copy of
the database opens no session. A session ends for real: logging out deletes
the row, and a password change bumps `User.session_version` and deletes them all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from gateway.storage.models import LoginAttempt, User, WebSession, utcnow

LIFETIME = dt.timedelta(days=14)

# Sign-in throttle: attempts within the window, per email and per client IP.
# Counted in the database so that every process sees the same numbers.
THROTTLE_WINDOW = dt.timedelta(minutes=15)
MAX_PER_EMAIL = 5
MAX_PER_IP = 20


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Active:
    """A live session and its user."""

    id: str
    user: User


def start(engine: Engine, user: User) -> str:
    """Creates a session for `user`; returns the cookie value (never stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with engine.begin() as c:
        # Expired rows go whenever someone signs in, so the table stays the size of live sessions.
        c.execute(delete(WebSession).where(WebSession.expires_at < now))
        c.execute(
            WebSession.__table__.insert().values(
                id=hash_token(token),
                user_id=user.id,
                session_version=user.session_version,
                created_at=now,
                expires_at=now + LIFETIME,
            )
        )
    return token


def lookup(engine: Engine, token: str) -> Active | None:
    if not token or len(token) > 100:
        return None
    session_id = hash_token(token)
    with engine.connect() as c:
        row = c.execute(select(WebSession.__table__).where(WebSession.id == session_id)).first()
        if row is None or row.expires_at <= utcnow():
            return None
        user_row = c.execute(select(User.__table__).where(User.id == row.user_id)).first()
    if user_row is None or user_row.session_version != row.session_version:
        return None
    return Active(id=session_id, user=User(**user_row._mapping))


def end(engine: Engine, session_id: str) -> None:
    with engine.begin() as c:
        c.execute(delete(WebSession).where(WebSession.id == session_id))


def set_password_hash(engine: Engine, user_id: int, password_hash: str) -> User:
    """Stores a new hash and ends every session of the user; the caller starts a new one."""
    with engine.begin() as c:
        c.execute(
            update(User)
            .where(User.id == user_id)
            .values(password_hash=password_hash, session_version=User.session_version + 1)
        )
        c.execute(delete(WebSession).where(WebSession.user_id == user_id))
        row = c.execute(select(User.__table__).where(User.id == user_id)).one()
    return User(**row._mapping)


def attempt(engine: Engine, email: str, ip: str) -> bool:
    """Records a sign-in attempt; False when the email or the IP has had too many recently.

    The attempt is written before it is counted, so concurrent attempts in
    several processes all see each other. A refused attempt is taken back so
    that waiting out the window is enough.
    """
    now = utcnow()
    since = now - THROTTLE_WINDOW
    with engine.begin() as c:
        c.execute(delete(LoginAttempt).where(LoginAttempt.at < since))
        attempt_id = c.execute(
            LoginAttempt.__table__.insert().values(email=email[:320], ip=ip[:64], at=now)
        ).inserted_primary_key[0]
    with engine.connect() as c:
        recent = select(func.count()).select_from(LoginAttempt).where(LoginAttempt.at >= since)
        by_email = c.execute(recent.where(LoginAttempt.email == email[:320])).scalar_one()
        by_ip = c.execute(recent.where(LoginAttempt.ip == ip[:64])).scalar_one()
    if by_email > MAX_PER_EMAIL or by_ip > MAX_PER_IP:
        with engine.begin() as c:
            c.execute(delete(LoginAttempt).where(LoginAttempt.id == attempt_id))
        return False
    return True


def succeeded(engine: Engine, email: str, ip: str) -> None:
    """A correct password clears this person's failures from this address."""
    with engine.begin() as c:
        c.execute(delete(LoginAttempt).where(LoginAttempt.email == email[:320], LoginAttempt.ip == ip[:64]))
