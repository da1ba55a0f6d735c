"""One live waitpoint per person and idempotency key.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("waitpoints") as batch:
        batch.create_unique_constraint("uq_waitpoints_idempotency", ["user_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("waitpoints") as batch:
        batch.drop_constraint("uq_waitpoints_idempotency", type_="unique")
