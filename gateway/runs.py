"""Run history: one row per call, written without anything secret in it."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import select
from sqlalchemy.engine import Engine

from .models import Run, new_id, utcnow


@dataclasses.dataclass
class RunRecord:
    """What a call did, filled in as the pipeline goes and written once at the end."""

    id: str
    user_id: int | None = None
    api_key_id: int | None = None
    integration: str = ""
    endpoint: str = ""
    status: str = "running"
    http_status: int | None = None
    upstream_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    refreshed: bool = False
    queue_name: str | None = None
    started_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    ended_at: dt.datetime | None = None

    @classmethod
    def start(cls) -> RunRecord:
        return cls(id=new_id("run"))

    def finish(self, status: str, http_status: int) -> None:
        self.status = status
        self.http_status = http_status
        self.ended_at = utcnow()

    def values(self) -> dict[str, object]:
        values = dataclasses.asdict(self)
        values["created_at"] = self.started_at
        values["integration"] = self.integration[:100]
        values["endpoint"] = self.endpoint[:100]
        if self.ended_at is not None:
            values["duration_ms"] = (self.ended_at - self.started_at).total_seconds() * 1000
        return values


def insert(engine: Engine, record: RunRecord) -> None:
    with engine.begin() as c:
        c.execute(Run.__table__.insert().values(**record.values()))


def get(engine: Engine, run_id: str, user_id: int) -> Run | None:
    with engine.connect() as c:
        row = c.execute(select(Run.__table__).where(Run.id == run_id, Run.user_id == user_id)).first()
    return Run(**row._mapping) if row else None
