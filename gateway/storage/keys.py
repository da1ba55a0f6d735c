"""API keys: created once, stored only as a SHA-256 hash with a display prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import and_, or_, select
from sqlalchemy import update as sa_update
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from gateway.storage import caches
from gateway.storage.database import session
from gateway.storage.models import ApiKey, Run, Waitpoint, utcnow

KEY_PREFIX = "sk_"


def generate() -> str:
    # 32 random bytes: 256 bits.
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(KEY_PREFIX) + 6]


def create(
    engine: Engine,
    user_id: int,
    name: str = "",
    integrations: list[str] | None = None,
    daily_limit: int | None = None,
    require_approval: bool = False,
    acts_for: str = "any",
) -> tuple[ApiKey, str]:
    """Returns the row and the secret; the secret is never stored or shown again."""
    secret = generate()
    key = ApiKey(
        user_id=user_id,
        name=name,
        prefix=display_prefix(secret),
        key_hash=hash_key(secret),
        integrations=integrations,
        daily_limit=daily_limit,
        require_approval=require_approval,
        acts_for=acts_for,
    )
    with session(engine) as s:
        s.add(key)
        s.commit()
        s.refresh(key)
    return key, secret


# Every call checks its key: a revocation in this process applies at once, in another within
# caches.SECONDS.


def in_cache(engine: Engine, secret: str) -> ApiKey | None:
    """The key for `secret` if this process has it cached: no database (the event loop's fast path)."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    digest = hash_key(secret)
    cached = caches.of(engine).keys.get(digest)
    return cached if isinstance(cached, ApiKey) and hmac.compare_digest(cached.key_hash, digest) else None


def authenticate(engine: Engine, secret: str) -> ApiKey | None:
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    digest = hash_key(secret)
    cached = caches.of(engine).keys.get(digest)
    if isinstance(cached, ApiKey) and hmac.compare_digest(cached.key_hash, digest):
        return cached
    with engine.connect() as sql:
        row = sql.execute(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))).first()
    if row is None:
        return None
    key = ApiKey(**row._mapping)
    # The lookup is by hash; compare again in constant time so no timing path depends on the secret.
    if not hmac.compare_digest(key.key_hash, digest):
        return None
    caches.of(engine).keys.put(digest, key)
    return key


def forget(engine: Engine, key_id: int | None = None) -> None:
    """Drops cached keys (one, or all of this engine's) after a change in this process."""
    caches.of(engine).keys.drop_where(lambda _, v: key_id is None or getattr(v, "id", None) == key_id)


def for_user(engine: Engine, user_id: int) -> list[ApiKey]:
    """A person's keys, newest first, revoked ones included."""
    with engine.connect() as sql:
        rows = sql.execute(select(ApiKey.__table__).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc())).all()
    return [ApiKey(**r._mapping) for r in rows]


def active_for_user(engine: Engine, user_id: int) -> list[ApiKey]:
    return [k for k in for_user(engine, user_id) if k.revoked_at is None]


def get_for_user(engine: Engine, user_id: int, key_id: int) -> ApiKey | None:
    with engine.connect() as sql:
        row = sql.execute(select(ApiKey.__table__).where(ApiKey.id == key_id, ApiKey.user_id == user_id)).first()
    return ApiKey(**row._mapping) if row else None


def update(engine: Engine, user_id: int, key_id: int, **values: object) -> bool:
    """Changes an active key of this person's (name, integrations, daily limit, approval)."""
    with engine.begin() as sql:
        statement = sa_update(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        changed = sql.execute(statement.values(**values)).rowcount == 1
    forget(engine, key_id)  # a narrowed key must not live on in this process's cache
    return changed


def cached_by_id(engine: Engine, key_id: int) -> ApiKey | None:
    """A key by id for queue workers, with the same 2-second bound on changes made elsewhere."""
    cache = caches.of(engine).keys
    found = cache.get(("id", key_id))
    if not isinstance(found, ApiKey):
        found = by_id(engine, key_id)
        if found is not None:
            cache.put(("id", key_id), found)
    return found


def by_id(engine: Engine, key_id: int) -> ApiKey | None:
    with engine.connect() as sql:
        row = sql.execute(select(ApiKey.__table__).where(ApiKey.id == key_id)).first()
    return ApiKey(**row._mapping) if row else None


# "Last used" to the minute is enough, and saves a write on nearly every call (caches.TOUCH_SECONDS).


def touch_due(engine: Engine, key_id: int) -> bool:
    """Whether the key's last use is worth writing now (once per caches.TOUCH_SECONDS per process); no database."""
    touched = caches.of(engine).touched
    if touched.get(key_id) is not None:
        return False
    touched.put(key_id, True)
    return True


def touch(engine: Engine, key_id: int) -> None:
    with engine.begin() as sql:
        sql.execute(sa_update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


# The one visibility rule for an API key: it sees its owner's records and, when it is limited to
# some integrations, only theirs and those of no integration (a manual waitpoint); a key that acts
# for its owner only sees no end user's records, one that acts for end users only none of the
# owner's own. `allows` decides for an integration, `sees` for a record in hand, `visible` in SQL;
# every reader for a key uses them.


def allows(key: ApiKey, integration: str | None) -> bool:
    return integration is None or key.integrations is None or integration in key.integrations


def sees(key: ApiKey, record: Run | Waitpoint) -> bool:
    if key.acts_for == "owner" and record.end_user_id is not None:
        return False
    if key.acts_for == "end_users" and record.end_user_id is None:
        return False
    return record.user_id == key.user_id and allows(key, record.integration)


def visible(key: ApiKey, model: type[Run] | type[Waitpoint]) -> ColumnElement[bool]:
    """`sees` as a WHERE term, for the queries that list or count records for a key."""
    terms: list[ColumnElement[bool]] = [model.user_id == key.user_id]
    if key.integrations is not None:
        terms.append(or_(model.integration.is_(None), model.integration.in_(key.integrations)))
    if key.acts_for == "owner":
        terms.append(model.end_user_id.is_(None))
    elif key.acts_for == "end_users":
        terms.append(model.end_user_id.is_not(None))
    return terms[0] if len(terms) == 1 else and_(*terms)


def revoke(engine: Engine, key_id: int, user_id: int | None = None) -> bool:
    statement = sa_update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    if user_id is not None:
        statement = statement.where(ApiKey.user_id == user_id)
    with engine.begin() as sql:
        revoked = sql.execute(statement.values(revoked_at=utcnow())).rowcount == 1
    forget(engine, key_id)
    return revoked
