"""Partial indexes on runs: the queue indexes hold only pending and running calls, the expiry
index only rows that expire, and no index on api_key_id alone (uq_runs_idempotency starts with
it), so a direct call's row is written to four B-trees instead of eight.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ACTIVE = "status IN ('pending', 'running')"


def _partial(condition: str) -> dict[str, object]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def upgrade() -> None:
    op.drop_index("ix_runs_api_key_id", table_name="runs")
    op.drop_index("ix_runs_claim", table_name="runs")
    op.drop_index("ix_runs_queue", table_name="runs")
    op.drop_index("ix_runs_expires_at", table_name="runs")
    op.create_index("ix_runs_active", "runs", ["status", "id"], **_partial(ACTIVE))
    op.create_index("ix_runs_queue", "runs", ["user_id", "queue_name", "status", "id"], **_partial(ACTIVE))
    op.create_index("ix_runs_expires_at", "runs", ["expires_at"], **_partial("expires_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_runs_expires_at", table_name="runs")
    op.drop_index("ix_runs_queue", table_name="runs")
    op.drop_index("ix_runs_active", table_name="runs")
    op.create_index("ix_runs_expires_at", "runs", ["expires_at"])
    op.create_index("ix_runs_queue", "runs", ["user_id", "queue_name", "status", "id"])
    op.create_index("ix_runs_claim", "runs", ["status", "lease_until"])
    op.create_index("ix_runs_api_key_id", "runs", ["api_key_id"])
