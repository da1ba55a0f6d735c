"""The benchmark's databases: one account ready to call, and optionally a lived-in database around it.

Every gateway the benchmark starts, on SQLite or PostgreSQL, is seeded here.
`prepare` makes what any call needs, the way the product makes it: a user, a
connected account whose token never expires (gateway.storage.connections.save), and an
API key (gateway.storage.keys.create). `fill` adds the data-scale mode's rows with bulk
inserts straight into the tables of gateway/storage/models.py: 10,000 API keys, 100,000
runs, and a connection to every catalogue integration for each of 1,000 users.
PostgreSQL databases live in a `Schema` of their own in the local `test` database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from gateway.crypto import Box
from gateway.settings import BUILTIN_INTEGRATIONS
from gateway.specs import registry as spec_registry
from gateway.storage import connections, keys, users
from gateway.storage import database as db
from gateway.storage.models import ApiKey, Connection, DailyUsage, Run, User

from .processes import ROOT, base_env

SECRET = "bench-secret-key-" + "b" * 40
EMAIL = "bench@example.com"
PASSWORD = "correct horse battery staple"
# bench/plans.yaml: counted like any limited plan, never reached (the built-in 'free' stops at 5,000 a day).
PLAN = "bench"
# What every gateway call in the benchmark sends: params to check, one to default.
CALL_BODY = '{"params":{"fields":"id,name,items"}}'
BATCH = 5_000
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def gateway_env(database_url: str, upstream_url: str, **extra: str) -> dict[str, str]:
    """What `gateway serve` and `gateway worker` read in every benchmark: the bench spec on the fast upstream."""
    return base_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_SECRET_KEY=SECRET,
        GATEWAY_ALLOW_HTTP_UPSTREAMS="true",
        GATEWAY_EGRESS_ALLOW="127.0.0.1/32",
        GATEWAY_INTEGRATIONS_PATH=str(ROOT / "bench" / "specs"),
        GATEWAY_BENCH_BASE_URL=upstream_url,
        GATEWAY_PLANS_FILE=str(ROOT / "bench" / "plans.yaml"),
        GATEWAY_LOG_LEVEL="WARNING",
        **extra,
    )


@dataclasses.dataclass
class Account:
    user_id: int
    key_id: int
    secret: str


def prepare(engine: Engine, integration: str = "bench") -> Account:
    db.upgrade(engine)
    user = users.create(engine, EMAIL, PASSWORD, plan=PLAN)
    assert user.id is not None
    connections.save(
        engine,
        Box((SECRET,)),
        user_id=user.id,
        integration=integration,
        access_token="bench-access-token",
        expires_at=None,
        account="bench",
    )
    key, secret = keys.create(engine, user.id, name="bench")
    assert key.id is not None
    return Account(user.id, key.id, secret)


def seed(database_url: str, *, scale: bool = False) -> tuple[Account, dict[str, Any] | None]:
    """Migrates and seeds the database at `database_url`: the account, and with `scale` the bulk rows
    (their counts and how long they took, or None)."""
    engine = db.make_engine(database_url)
    try:
        account = prepare(engine)
        if not scale:
            return account, None
        started = time.monotonic()
        counts: dict[str, Any] = fill(engine, account)
        return account, {**counts, "seconds": round(time.monotonic() - started, 1)}
    finally:
        engine.dispose()


def postgres_available(url: str = PG_URL) -> bool:
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except Exception:
        return False
    finally:
        engine.dispose()


class Schema:
    """A schema of its own in the local `test` database, dropped afterwards (as tests/conftest.py does)."""

    def __init__(self, url: str = PG_URL) -> None:
        self.name = "bench_" + secrets.token_hex(6)
        self.admin = create_engine(url)
        with self.admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = f"{url}?options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        with self.admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self.admin.dispose()


class Schemas:
    """Every schema a run made; leaving the block drops them, whatever happened. Leave it after the
    processes using them have stopped (list it before `Children` in the same `with`)."""

    def __init__(self) -> None:
        self.made: list[Schema] = []

    def make(self) -> Schema:
        schema = Schema()
        self.made.append(schema)
        return schema

    def __enter__(self) -> Schemas:
        return self

    def __exit__(self, *exc: object) -> None:
        for schema in reversed(self.made):
            schema.drop()
        self.made.clear()


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _insert(engine: Engine, table: Any, rows: Iterator[dict[str, Any]]) -> int:
    count = 0
    with engine.begin() as c:
        for batch in _batches(rows):
            c.execute(table.insert(), batch)
            count += len(batch)
    return count


def _past_id(prefix: str, when: dt.datetime) -> str:
    """gateway.storage.models.new_id for a moment in the past, so old runs sort before new ones."""
    return f"{prefix}_{int(when.timestamp() * 1000):012x}{os.urandom(10).hex()}"


def fill(
    engine: Engine, account: Account, *, users_count: int = 1_000, keys_count: int = 10_000, runs_count: int = 100_000
) -> dict[str, int]:
    """Bulk rows around `account` (no ANALYZE: the gateway never runs it either); returns the row counts."""
    rng = random.Random(9)
    now = dt.datetime.now(dt.UTC)
    box = Box((SECRET,))
    catalogue = [i.name for i in spec_registry.load_registry([BUILTIN_INTEGRATIONS])]
    # Not a real hash: these accounts never sign in, and hashing 1,000 passwords would take minutes.
    password_hash = "$argon2id$v=19$m=65536,t=3,p=4$bench$not-a-password-hash"

    def user_rows() -> Iterator[dict[str, Any]]:
        for i in range(users_count - 1):
            yield dict(
                email=f"user{i}@bench.invalid",
                password_hash=password_hash,
                plan="free",
                session_version=1,
                created_at=now - dt.timedelta(days=rng.randint(1, 365)),
            )

    counts = {"users": _insert(engine, User.__table__, user_rows()) + 1}
    with engine.connect() as c:
        user_ids = [r[0] for r in c.execute(User.__table__.select().with_only_columns(User.__table__.c.id))]

    def key_rows() -> Iterator[dict[str, Any]]:
        for i in range(keys_count - 1):
            secret = keys.generate()
            yield dict(
                user_id=user_ids[i % len(user_ids)],
                name=f"key {i}",
                prefix=keys.display_prefix(secret),
                key_hash=keys.hash_key(secret),
                integrations=None if i % 3 else [rng.choice(catalogue)],
                daily_limit=None if i % 4 else 1000,
                require_approval=False,
                created_at=now - dt.timedelta(days=rng.randint(1, 365)),
                last_used_at=now - dt.timedelta(minutes=rng.randint(1, 10_000)),
                revoked_at=now - dt.timedelta(days=1) if i % 10 == 0 else None,
            )

    counts["api_keys"] = _insert(engine, ApiKey.__table__, key_rows()) + 1
    with engine.connect() as c:
        key_owner = {
            r[0]: r[1] for r in c.execute(ApiKey.__table__.select().with_only_columns(ApiKey.id, ApiKey.user_id))
        }
    key_ids = list(key_owner)
    token = box.encrypt("catalogue-access-token")

    def connection_rows() -> Iterator[dict[str, Any]]:
        for user_id in user_ids:
            for name in catalogue:
                yield dict(
                    user_id=user_id,
                    integration=name,
                    status="connected",
                    account=f"user{user_id}",
                    access_token=token,
                    refresh_token=token,
                    token_type="bearer",
                    expires_at=now + dt.timedelta(hours=1),
                    created_at=now,
                    updated_at=now,
                    connected_at=now,
                )

    counts["connections"] = _insert(engine, Connection.__table__, connection_rows()) + 1

    def run_rows() -> Iterator[dict[str, Any]]:
        for i in range(runs_count):
            # A fifth of the history is the benchmark key's own, like a busy key would have.
            key_id = account.key_id if i % 5 == 0 else rng.choice(key_ids)
            created = now - dt.timedelta(seconds=rng.randint(60, 30 * 86400))
            ok = rng.random() < 0.95
            yield dict(
                id=_past_id("run", created),
                user_id=key_owner[key_id],
                api_key_id=key_id,
                integration=rng.choice(catalogue),
                endpoint="list_things",
                status="completed" if ok else "failed",
                http_status=200 if ok else 502,
                upstream_status=200 if ok else 500,
                error_code=None if ok else "upstream_error",
                attempts=1,
                refreshed=False,
                queue_name=None if i % 10 else f"q{i % 50}",
                created_at=created,
                started_at=created,
                ended_at=created + dt.timedelta(milliseconds=120),
                duration_ms=120.0,
                idempotency_key=f"idem-{i}" if i % 20 == 0 else None,
                request_hash=hashlib.sha256(str(i).encode()).hexdigest() if i % 20 == 0 else None,
            )

    counts["runs"] = _insert(engine, Run.__table__, run_rows())

    def usage_rows() -> Iterator[dict[str, Any]]:
        for day in (now.date() - dt.timedelta(days=1), now.date()):
            for user_id in user_ids:
                if user_id != account.user_id or day != now.date():
                    yield dict(subject=f"user:{user_id}", day=day, count=rng.randint(1, 400))
            for key_id in key_ids:
                if key_id != account.key_id or day != now.date():
                    yield dict(subject=f"key:{key_id}", day=day, count=rng.randint(1, 40))

    counts["daily_usage"] = _insert(engine, DailyUsage.__table__, usage_rows())
    return counts
