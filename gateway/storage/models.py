"""The gateway's tables. Secrets are stored encrypted (tokens) or hashed (API keys)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy import JSON, Column, Index, UniqueConstraint, literal_column, text
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, SQLModel

M = TypeVar("M", bound=SQLModel)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_last_id = [0, 0]
_id_lock = threading.Lock()
# OS randomness read 4 KiB at a time: one getrandom() call per ~500 ids instead of one each
# (each call costs microseconds under load). A forked child must never reuse its parent's bytes.
_entropy = bytearray()
os.register_at_fork(after_in_child=_entropy.clear)


def _random_bytes(size: int) -> bytes:
    # The caller holds _id_lock.
    if len(_entropy) < size:
        _entropy[:] = os.urandom(4096)
    chunk = bytes(_entropy[-size:])
    del _entropy[-size:]
    return chunk


def random_hex(size: int) -> str:
    """`size` random bytes as hex, for identifiers that must not be guessable."""
    with _id_lock:
        return _random_bytes(size).hex()


def from_row(model: type[M], mapping: Mapping[str, Any]) -> M:
    """A table model from a row, built as the ORM builds what it loads: no __init__. SQLModel's
    constructor sets each field through the ORM's instrumentation, ~150 µs for a run's 28
    columns, a fifth of a queue worker's CPU (bench); this takes ~8 µs. A column the row lacks
    reads as None. Like one from `Model(**row._mapping)`, the instance belongs to no session."""
    mapper = model.__mapper__  # type: ignore[attr-defined]
    if not mapper.configured:
        configure_mappers()
    instance: M = mapper.class_manager.new_instance()
    instance.__dict__.update(mapping)
    object.__setattr__(instance, "__pydantic_fields_set__", set(mapping))
    return instance


def new_id(prefix: str) -> str:
    """A time-ordered id: 48-bit milliseconds, a 16-bit sequence, 64 random bits.

    Ids made by one process are strictly increasing, even within one millisecond:
    queue order and "newest first" rely on it.
    """
    with _id_lock:
        ms, seq = int(time.time() * 1000), 0
        if ms <= _last_id[0]:
            ms, seq = _last_id[0], _last_id[1] + 1
            if seq > 0xFFFF:
                ms, seq = ms + 1, 0
        _last_id[:] = [ms, seq]
        tail = _random_bytes(8)
    return f"{prefix}_{ms:012x}{seq:04x}{tail.hex()}"


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(index=True, unique=True, max_length=320)
    password_hash: str
    plan: str = Field(default="free", max_length=64)
    # Bumped on logout-everywhere and password change: sessions carry the value they saw.
    session_version: int = 1
    created_at: dt.datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=32)
    key_hash: str = Field(index=True, unique=True, max_length=64)
    # None means every integration; otherwise the list of integration names.
    integrations: list[str] | None = Field(default=None, sa_column=Column(JSON))
    daily_limit: int | None = None
    require_approval: bool = False
    # Whom the key may act for: "any" (its owner, or an end user named by X-End-User-Id),
    # "owner" (never an end user) or "end_users" (only with X-End-User-Id).
    acts_for: str = Field(default="any", max_length=16)
    created_at: dt.datetime = Field(default_factory=utcnow)
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


class EndUser(SQLModel, table=True):
    """One of an owner's own users, known by the owner's id for them (X-End-User-Id): made on first
    use, never signed in. Their connections, runs and waitpoints carry this row's id."""

    __tablename__ = "end_users"
    __table_args__ = (UniqueConstraint("user_id", "external_id", name="uq_end_users_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id")
    external_id: str = Field(max_length=200)
    display_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    created_at: dt.datetime = Field(default_factory=utcnow)


class ConnectSession(SQLModel, table=True):
    """A short-lived token (`cs_...`, only its SHA-256 stored) that lets one end user connect some
    integrations on the hosted connect page, without a dashboard login."""

    __tablename__ = "connect_sessions"

    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id")
    end_user_id: int = Field(foreign_key="end_users.id", index=True)
    api_key_id: int | None = Field(default=None, foreign_key="api_keys.id")
    # None: every integration the key that made it may use.
    integrations: list[str] | None = Field(default=None, sa_column=Column(JSON))
    redirect_url: str | None = None
    allowed_origins: list[str] | None = Field(default=None, sa_column=Column(JSON))
    # The name of the owner's app, shown on the connect page ("Acme wants to use your GitHub").
    app_name: str | None = Field(default=None, max_length=100)
    # SHA-256 of the browser binding the first opening of the link set (a cookie): the link then
    # works in that browser only.
    browser: str | None = Field(default=None, max_length=64)
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime = Field(index=True)


class Connection(SQLModel, table=True):
    __tablename__ = "connections"
    __table_args__ = (
        Index("ix_connections_owner", "user_id", "end_user_id", "integration"),
        UniqueConstraint("public_id", name="uq_connections_public_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # What the API shows and X-Connection-Id names (`conn_...`); the integer id stays internal.
    public_id: str = Field(default_factory=lambda: new_id("conn"), max_length=40)
    user_id: int = Field(foreign_key="users.id", index=True)
    # None: the owner's own connection; else one of the owner's end users'.
    end_user_id: int | None = Field(default=None, foreign_key="end_users.id")
    integration: str = Field(max_length=100)
    label: str | None = Field(default=None, max_length=200)
    # The one a call uses when it names none and there are several (see storage.connections.choose).
    is_default: bool = False
    # connected | needs_reconnect
    status: str = Field(default="connected", max_length=32)
    account: str | None = Field(default=None, max_length=320)
    scopes: str | None = None
    access_token: str | None = None  # Fernet ciphertext
    refresh_token: str | None = None  # Fernet ciphertext
    token_type: str | None = Field(default=None, max_length=32)
    expires_at: dt.datetime | None = None
    # Values taken from the token response or entered at connect time (instance_url, cloud_id...).
    extra: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Cross-process single-flight refresh: a lease, not a held database lock.
    refresh_lease_until: dt.datetime | None = None
    refresh_lease_owner: str | None = Field(default=None, max_length=64)
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    connected_at: dt.datetime = Field(default_factory=utcnow)
    # The upstream's last refusal of a pasted key (401), shown on the integration's page until a
    # call succeeds again or the person reconnects.
    last_error: str | None = Field(default=None, max_length=500)
    last_error_at: dt.datetime | None = None
    # When a call last used it, to the minute (written at most once a minute per process).
    last_used_at: dt.datetime | None = None


# A queued call that is not over. The partial indexes below hold only such rows (or rows with an
# expiry), so a direct call's row goes into four B-trees (the table, its id, (user_id, id) and
# (api_key_id, idempotency_key)) instead of eight: each is a page written per commit.
# Queries meant to use them must repeat the condition as literal SQL (is_active): SQLite
# matches a partial index only on the same terms, PostgreSQL only on constants.
ACTIVE_CONDITION = "status IN ('pending', 'running')"


def _partial(condition: str) -> dict[str, Any]:
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_user_id_id", "user_id", "id"),
        Index("ix_runs_queue", "user_id", "queue_name", "status", "id", **_partial(ACTIVE_CONDITION)),
        Index("ix_runs_active", "status", "id", **_partial(ACTIVE_CONDITION)),
        Index("ix_runs_expires_at", "expires_at", **_partial("expires_at IS NOT NULL")),
        UniqueConstraint("api_key_id", "idempotency_key", name="uq_runs_idempotency"),
    )

    id: str = Field(primary_key=True, max_length=40)
    user_id: int = Field(foreign_key="users.id")
    # The end user the call acted for (their X-End-User-Id, as the API shows it), and the
    # connection it used (`conn_...`).
    end_user_id: str | None = Field(default=None, max_length=200)
    connection_id: str | None = Field(default=None, max_length=40)
    # No index of its own: uq_runs_idempotency (api_key_id, idempotency_key) serves lookups by key.
    api_key_id: int | None = Field(default=None, foreign_key="api_keys.id")
    integration: str = Field(max_length=100)
    endpoint: str = Field(max_length=100)
    # pending | running | completed | failed | timeout | cancelled
    # No index of its own: ix_runs_active and (user_id, id) serve every query, and each index is
    # one more B-tree page written per call.
    status: str = Field(default="running", max_length=16)
    http_status: int | None = None
    upstream_status: int | None = None
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    attempts: int = 0
    refreshed: bool = False
    queue_name: str | None = Field(default=None, max_length=200)
    created_at: dt.datetime = Field(default_factory=utcnow)
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    duration_ms: float | None = None
    # Queued and approval-held calls keep what they need to run later, encrypted.
    request: str | None = None
    # The final {"status","data"} or error body, encrypted, for polling and idempotent repeats.
    result: str | None = None
    lease_until: dt.datetime | None = None
    worker_id: str | None = Field(default=None, max_length=64)
    expires_at: dt.datetime | None = None
    callback_url: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    waitpoint_id: str | None = Field(default=None, max_length=48)
    # none | pending | approved | rejected | expired
    approval: str | None = Field(default=None, max_length=16)
    approval_expires_at: dt.datetime | None = None


class DailyUsage(SQLModel, table=True):
    """Calls counted per subject ('user:1', 'key:7') per UTC day, updated atomically."""

    __tablename__ = "daily_usage"

    subject: str = Field(primary_key=True, max_length=64)
    day: dt.date = Field(primary_key=True)
    count: int = 0


class Waitpoint(SQLModel, table=True):
    """A token something else completes later: a callback, a connection, an approval."""

    __tablename__ = "waitpoints"
    __table_args__ = (
        Index("ix_waitpoints_user_id_id", "user_id", "id"),
        Index("ix_waitpoints_status_timeout", "status", "timeout_at"),
        UniqueConstraint("user_id", "idempotency_key", name="uq_waitpoints_idempotency"),
    )

    id: str = Field(primary_key=True, max_length=48)
    user_id: int = Field(foreign_key="users.id")
    api_key_id: int | None = Field(default=None, foreign_key="api_keys.id")
    # The end user it is for (their X-End-User-Id), as on runs.
    end_user_id: str | None = Field(default=None, max_length=200)
    # WAITING | COMPLETED | TIMED_OUT | CANCELLED
    status: str = Field(default="WAITING", max_length=16)
    # manual | connection | approval
    kind: str = Field(default="manual", max_length=16)
    integration: str | None = Field(default=None, max_length=100)
    output: Any = Field(default=None, sa_column=Column(JSON))
    error: Any = Field(default=None, sa_column=Column(JSON))
    tags: list[str] | None = Field(default=None, sa_column=Column(JSON))
    idempotency_key: str | None = Field(default=None, max_length=255)
    idempotency_expires_at: dt.datetime | None = None
    timeout_at: dt.datetime
    created_at: dt.datetime = Field(default_factory=utcnow)
    completed_at: dt.datetime | None = None


class WebSession(SQLModel, table=True):
    """A signed-in browser. The cookie holds a random value; only its SHA-256 is stored."""

    __tablename__ = "web_sessions"

    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    # The user's session_version at sign-in: a password change bumps it and ends every session.
    session_version: int
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime = Field(index=True)


class OAuthState(SQLModel, table=True):
    """One pending connect: single-use, bound to the web session that started it."""

    __tablename__ = "oauth_states"

    # SHA-256 of the state value sent to the provider.
    id: str = Field(primary_key=True, max_length=64)
    session_id: str = Field(max_length=64)
    user_id: int = Field(foreign_key="users.id")
    integration: str = Field(max_length=100)
    # A connect session's flow: for that end user, and (reconnecting) that connection.
    end_user_id: int | None = None
    connection_id: str | None = Field(default=None, max_length=40)
    code_verifier: str | None = None  # Fernet ciphertext
    redirect_uri: str
    next_path: str | None = None
    # Values the person typed before leaving for the provider (the spec's connection_fields).
    fields: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime = Field(index=True)


class LoginAttempt(SQLModel, table=True):
    """Recent sign-in and sign-up attempts, counted per email and per client IP."""

    __tablename__ = "login_attempts"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, index=True)
    ip: str = Field(max_length=64, index=True)
    at: dt.datetime = Field(default_factory=utcnow, index=True)


def is_active(status: Any) -> Any:
    """`status IN ('pending', 'running')` as literal SQL, so the partial indexes on runs apply."""
    return status.in_([literal_column("'pending'"), literal_column("'running'")])
