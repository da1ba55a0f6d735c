"""Run history as the dashboard reads it: filtered pages, single runs, today's counts.

Only display columns are selected: the encrypted request and result, the
callback URL and the request hash never leave the database through here.

Callers pass the engine once this process's pending run rows are committed
(`Services.settled_engine`), so a page opened right after a call shows it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from gateway.storage import runs
from gateway.storage.models import Connection, Run, from_row, utcnow

PAGE_SIZE = 50
SHOWN = [
    c
    for c in Run.__table__.columns
    if c.name not in {"request", "result", "callback_url", "request_hash", "idempotency_key"}
]


@dataclasses.dataclass(frozen=True)
class Filters:
    integration: str | None = None
    endpoint: str | None = None
    status: str | None = None
    key_id: int | None = None
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before
    run_id: str | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))


def utc_midnight(now: dt.datetime | None = None) -> dt.datetime:
    now = (now or utcnow()).astimezone(dt.UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def page(
    engine: Engine, user_id: int, filters: Filters, before: str | None = None, limit: int = PAGE_SIZE
) -> tuple[list[Run], str | None]:
    """Newest first; returns the runs and the cursor for the next (older) page, if any."""
    # Ids are time-ordered, so the id is the cursor.
    rows = runs.search(
        engine,
        runs.RunFilter(
            user_id=user_id,
            integration=filters.integration,
            endpoint=filters.endpoint,
            statuses=[filters.status] if filters.status else None,
            api_key_id=filters.key_id,
            since=filters.since,
            until=filters.until,
            run_id=filters.run_id,
            before_id=before,
            limit=limit + 1,
        ),
        columns=SHOWN,
    )
    found = rows[:limit]
    return found, (found[-1].id if len(rows) > limit else None)


def get(engine: Engine, user_id: int, run_id: str) -> Run | None:
    with engine.connect() as c:
        row = c.execute(select(*SHOWN).where(Run.id == run_id, Run.user_id == user_id)).first()
    return from_row(Run, row._mapping) if row else None


def _today(user_id: int) -> list[Any]:
    midnight = utc_midnight()
    # Run ids start with their creation time in milliseconds, so an id bound lets the
    # (user_id, id) index find today's runs; created_at keeps the count exact.
    first_id = f"run_{int(midnight.timestamp() * 1000):012x}"
    return [Run.user_id == user_id, Run.id >= first_id, Run.created_at >= midnight]


def calls_today(engine: Engine, user_id: int) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(Run).where(*_today(user_id))).scalar_one()


def calls_today_by_key(engine: Engine, user_id: int) -> dict[int, int]:
    with engine.connect() as c:
        rows = c.execute(
            select(Run.api_key_id, func.count())
            .where(*_today(user_id), Run.api_key_id.is_not(None))
            .group_by(Run.api_key_id)
        ).all()
    return {key_id: count for key_id, count in rows}


def connections_count(engine: Engine, user_id: int) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(Connection).where(Connection.user_id == user_id)).scalar_one()
