"""Daily call limits (per person, from the plan, and per API key) and the plan's connection limit.

Counting is one conditional UPDATE per subject inside one transaction
(`count = count + 1 WHERE count < limit`), so N concurrent calls against a
limit of L let exactly L through, on SQLite and on PostgreSQL with any number
of processes. The statements ride in the process's group commit (batch.py):
a call waits for its count to be committed before it goes upstream.

What counts: a direct call once the gateway has validated it and is about to
call the upstream; a queued or held call when it is accepted, not again when
it runs. A call the gateway itself turns away before calling the upstream
(not connected, token expired, bad params, no such endpoint...) is refunded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from gateway.core import links
from gateway.core.plans import Plan
from gateway.errors import DailyLimitReached, PlanLimitReached
from gateway.settings import Settings
from gateway.storage.batch import Batcher, Queued
from gateway.storage.models import ApiKey, Connection, DailyUsage, utcnow


@dataclasses.dataclass
class Usage:
    limit: int | None
    remaining: int | None
    reset: dt.datetime
    # A queued call's place in its queue, counted in the transaction that stored it.
    in_queue: int | None = None
    # The subjects this call was counted against: what a refund gives back.
    counted: list[str] = dataclasses.field(default_factory=list)

    def headers(self) -> dict[str, str]:
        if self.limit is None:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.remaining or 0, 0)),
            "X-RateLimit-Reset": str(int(self.reset.timestamp())),
        }


def today() -> dt.date:
    return utcnow().date()


@functools.lru_cache(maxsize=4)
def _midnight_after(day: dt.date) -> dt.datetime:
    after = day + dt.timedelta(days=1)
    return dt.datetime(after.year, after.month, after.day, tzinfo=dt.UTC)


def next_reset() -> dt.datetime:
    return _midnight_after(today())


def user_subject(user_id: int) -> str:
    return f"user:{user_id}"


def key_subject(key_id: int | None) -> str:
    return f"key:{key_id}"


def end_user_subject(end_user_id: int) -> str:
    return f"end_user:{end_user_id}"


def _subjects(key: ApiKey, plan: Plan, end_user_id: int | None = None) -> list[tuple[str, int | None]]:
    # A person's calls are always counted (the usage page shows them); a key's only when it has a
    # limit of its own, and an end user's only when the plan limits them: each saves a write on
    # every call that has none.
    subjects: list[tuple[str, int | None]] = [(user_subject(key.user_id), plan.daily_calls)]
    if key.daily_limit is not None:
        subjects.append((key_subject(key.id), key.daily_limit))
    if end_user_id is not None and plan.end_user_daily_calls is not None:
        subjects.append((end_user_subject(end_user_id), plan.end_user_daily_calls))
    return subjects


WHO = {"user": "This account's plan", "key": "This API key", "end_user": "This account's plan, per end user,"}


async def reserve(
    batcher: Batcher,
    settings: Settings,
    key: ApiKey,
    plan: Plan,
    queued: Queued | None = None,
    end_user_id: int | None = None,
) -> Usage:
    """Counts one call against the person's, the key's and the end user's limits, or raises
    daily_limit_reached naming the limit. With `queued`, the queued call's row is stored with its
    count, or not at all."""
    subjects = _subjects(key, plan, end_user_id)
    place = None
    if queued is None:
        counted = await batcher.counted(subjects, today())
    else:
        counted, place = await batcher.enqueued(subjects, today(), queued)
    if isinstance(counted, int):
        subject, limit = subjects[counted]
        reset = next_reset()
        who = WHO[subject.split(":", 1)[0]]
        raise DailyLimitReached(
            f"{who} allows {limit} calls per UTC day, all used; the count resets at {reset.isoformat()}.",
            action_url=links.usage(settings),
            headers={
                "Retry-After": str(max(int((reset - utcnow()).total_seconds()), 1)),
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(reset.timestamp())),
            },
        )
    usage = _tightest(
        [(limit, limit - count) for (_, limit), count in zip(subjects, counted, strict=True) if limit is not None]
    )
    usage.in_queue = place
    usage.counted = [subject for subject, _ in subjects]
    return usage


def refund(batcher: Batcher, usage: Usage) -> None:
    """Gives a counted call back (the gateway turned it away) to exactly the subjects it was counted
    against; written with the next batch."""
    batcher.refund(usage.counted, today())


def current(engine: Engine, key: ApiKey, plan: Plan, end_user_id: int | None = None) -> Usage:
    subjects = _subjects(key, plan, end_user_id)
    with engine.connect() as c:
        counts = dict(
            c.execute(
                select(DailyUsage.subject, DailyUsage.count).where(
                    DailyUsage.subject.in_([s for s, _ in subjects]), DailyUsage.day == today()
                )
            ).all()
        )
    return _tightest([(limit, limit - counts.get(s, 0)) for s, limit in subjects if limit is not None])


def used_today(engine: Engine, subject: str) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                select(DailyUsage.count).where(DailyUsage.subject == subject, DailyUsage.day == today())
            ).scalar_one_or_none()
            or 0
        )


def _tightest(remaining: list[tuple[int, int]]) -> Usage:
    if not remaining:
        return Usage(limit=None, remaining=None, reset=next_reset())
    limit, left = min(remaining, key=lambda pair: pair[1])
    return Usage(limit=limit, remaining=left, reset=next_reset())


def connections_used(engine: Engine, user_id: int, end_user_id: int | None = None) -> int:
    """The account's own connections, or one end user's."""
    owned = Connection.end_user_id.is_(None) if end_user_id is None else Connection.end_user_id == end_user_id
    with engine.connect() as c:
        return int(c.execute(select(func.count()).where(Connection.user_id == user_id, owned)).scalar_one())


def ensure_end_user_can_connect(
    engine: Engine, settings: Settings, plan: Plan, user_id: int, end_user_id: int, reconnecting: bool
) -> None:
    """One more connection must fit the plan's limit per end user; reconnecting one is always allowed."""
    if plan.end_user_connections is None or reconnecting:
        return
    if connections_used(engine, user_id, end_user_id) >= plan.end_user_connections:
        raise PlanLimitReached(
            f"This account's plan allows {plan.end_user_connections} connections per end user, and this end user "
            "has them all: remove one (or reconnect an existing one) first.",
            action_url=links.usage(settings),
        )


def ensure_can_connect(engine: Engine, settings: Settings, plan: Plan, user_id: int, integration: str) -> None:
    """Reconnecting is always allowed; one more connection must fit the plan."""
    if plan.max_connections is None:
        return
    with engine.connect() as c:
        existing = c.execute(
            select(Connection.id).where(
                Connection.user_id == user_id,
                Connection.end_user_id.is_(None),
                Connection.integration == integration,
            )
        ).first()
    if existing is None and connections_used(engine, user_id) >= plan.max_connections:
        raise PlanLimitReached(
            # Not the plan's name: a person whose plan left the plans file gets the default's limits.
            f"This account's plan allows {plan.max_connections} connected integrations; "
            "disconnect one or move to a larger plan.",
            action_url=links.usage(settings),
        )
