"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and go back down."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from gateway.storage import database as db
from gateway.storage import models  # noqa: F401  (registers the tables)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_migrations_match_the_models_and_downgrade(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    assert db.migrations_current(engine)
    with engine.connect() as c:
        differences = compare_metadata(MigrationContext.configure(c), SQLModel.metadata)
    assert differences == [], f"the models and the migrations disagree: {differences}"
    from alembic import command

    with engine.begin() as c:
        command.downgrade(db._alembic_config(c), "base")
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.migrations_current(engine)
    engine.dispose()
