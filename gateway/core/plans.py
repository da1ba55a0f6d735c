"""Plans: how many connections and calls per UTC day a person may have.

Built-in plans can be replaced or extended by a YAML file (GATEWAY_PLANS_FILE):

    free: {max_connections: 10, daily_calls: 5000}
    team: {max_connections: 50, daily_calls: 100000, end_user_connections: 5, end_user_daily_calls: 1000}
    unlimited: {max_connections: null, daily_calls: null}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.storage.caches import Cache
from gateway.storage.models import User

if TYPE_CHECKING:
    from gateway.storage.database import Database


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    # The account's own connections (an end user's are counted per end user, below).
    max_connections: int | None = Field(default=None, ge=0)
    daily_calls: int | None = Field(default=None, ge=0)
    # Per end user of the account's (X-End-User-Id): their connections, and their calls per UTC day
    # (which also count against the account's daily_calls).
    end_user_connections: int | None = Field(default=None, ge=0)
    end_user_daily_calls: int | None = Field(default=None, ge=0)


BUILTIN: dict[str, Plan] = {
    "free": Plan(name="free", max_connections=10, daily_calls=5000),
    "team": Plan(name="team", max_connections=50, daily_calls=100_000),
    "unlimited": Plan(name="unlimited"),
}


class PlanError(ValueError):
    """The plans file does not validate; the message names the file and the plan."""


def load(path: Path | None) -> dict[str, Plan]:
    plans = dict(BUILTIN)
    if path is None:
        return plans
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path}: cannot read plans: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: the file must map plan names to limits")
    for name, fields in data.items():
        try:
            plans[str(name)] = Plan(name=str(name), **(fields or {}))
        except (ValidationError, TypeError) as exc:
            raise PlanError(f"{path}: {name}: {exc}") from None
    return plans


@dataclasses.dataclass
class PlanBook:
    """The plans, and each person's plan name cached briefly: the hot path reads it on every call."""

    plans: dict[str, Plan]
    default: str
    # Each person's plan name, by user id: bounded, least recently used out first.
    _cache: Cache[str] = dataclasses.field(default_factory=lambda: Cache(5.0))

    def get(self, name: str) -> Plan:
        """The plan whose limits apply to `name`: a name the book lacks gets the default plan's."""
        return self.plans.get(name) or self.plans.get(self.default) or Plan(name=name)

    def known(self, name: str) -> bool:
        return name in self.plans

    def for_user(self, engine: Engine, user_id: int) -> Plan:
        name = self._cache.get(user_id)
        if name is None:
            with engine.connect() as c:
                name = c.execute(select(User.plan).where(User.id == user_id)).scalar_one_or_none() or self.default
            self._cache.put(user_id, name)
        return self.get(name)

    async def of(self, database: Database, user_id: int) -> Plan:
        """`for_user` from the event loop: the database only on a cache miss, in a database thread."""
        name = self._cache.get(user_id)
        return self.get(name) if name is not None else await database.run_unsettled(self.for_user, user_id)

    def forget(self, user_id: int) -> None:
        self._cache.drop(user_id)
