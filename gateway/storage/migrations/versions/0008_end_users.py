"""End users: an owner's own users (end_users), connect sessions, several connections per
integration (each with a public `conn_...` id, a label and a default flag), and the end user (and
connection) a run, a waitpoint or a connect flow is for; API keys say whom they may act for. Runs and
waitpoints name the end user by the owner's id for them, as the API shows it.

Revision ID: 0008_end_users
Revises: 0007_count_function
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008_end_users"
down_revision = "0007_count_function"
branch_labels = None
depends_on = None

# Names for the constraints 0001 left unnamed, so that SQLite's table copy can drop the old
# unique (user_id, integration) by name.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _public_id() -> str:
    # The shape of storage.models.new_id("conn"), which a migration must not import.
    return f"conn_{int(time.time() * 1000):012x}{0:04x}{os.urandom(8).hex()}"


def upgrade() -> None:
    op.create_table(
        "end_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("display_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "external_id", name="uq_end_users_external_id"),
    )
    op.create_table(
        "connect_sessions",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("end_user_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("integrations", sa.JSON(), nullable=True),
        sa.Column("redirect_url", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("allowed_origins", sa.JSON(), nullable=True),
        sa.Column("app_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("browser", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["end_user_id"], ["end_users.id"]),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_connect_sessions_end_user_id", "connect_sessions", ["end_user_id"])
    op.create_index("ix_connect_sessions_expires_at", "connect_sessions", ["expires_at"])

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("acts_for", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default="any")
        )

    with op.batch_alter_table("connections") as batch:
        batch.add_column(sa.Column("public_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch.add_column(sa.Column("end_user_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("label", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("last_used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    connections = sa.table("connections", sa.column("id", sa.Integer), sa.column("public_id", sa.String))
    bind = op.get_bind()
    for (row_id,) in bind.execute(sa.select(connections.c.id)).all():
        bind.execute(connections.update().where(connections.c.id == row_id).values(public_id=_public_id()))
    with op.batch_alter_table("connections", naming_convention=NAMING) as batch:
        batch.alter_column("public_id", existing_type=sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False)
        batch.create_unique_constraint("uq_connections_public_id", ["public_id"])
        batch.create_foreign_key("fk_connections_end_user_id", "end_users", ["end_user_id"], ["id"])
        batch.drop_constraint(_old_unique(), type_="unique")
        batch.create_index("ix_connections_owner", ["user_id", "end_user_id", "integration"])

    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("end_user_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
    with op.batch_alter_table("waitpoints") as batch:
        batch.add_column(sa.Column("end_user_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
    with op.batch_alter_table("oauth_states") as batch:
        batch.add_column(sa.Column("end_user_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))


def _old_unique() -> str:
    # PostgreSQL named it itself; SQLite's copy names it by NAMING.
    if op.get_bind().dialect.name == "postgresql":
        return "connections_user_id_integration_key"
    return "uq_connections_user_id"


def downgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("connection_id")
        batch.drop_column("end_user_id")
    with op.batch_alter_table("waitpoints") as batch:
        batch.drop_column("end_user_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("connection_id")
        batch.drop_column("end_user_id")
    # Back to one connection per person and integration: end users' connections and all but the
    # newest of each person's go.
    bind = op.get_bind()
    bind.execute(sa.text("DELETE FROM connections WHERE end_user_id IS NOT NULL"))
    bind.execute(
        sa.text(
            "DELETE FROM connections WHERE id NOT IN "
            "(SELECT max(id) FROM connections GROUP BY user_id, integration)"
        )
    )
    with op.batch_alter_table("connections") as batch:
        batch.drop_index("ix_connections_owner")
        batch.drop_constraint("fk_connections_end_user_id", type_="foreignkey")
        batch.drop_constraint("uq_connections_public_id", type_="unique")
        batch.create_unique_constraint("connections_user_id_integration_key", ["user_id", "integration"])
        batch.drop_column("last_used_at")
        batch.drop_column("is_default")
        batch.drop_column("label")
        batch.drop_column("end_user_id")
        batch.drop_column("public_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("acts_for")
    op.drop_index("ix_connect_sessions_expires_at", table_name="connect_sessions")
    op.drop_index("ix_connect_sessions_end_user_id", table_name="connect_sessions")
    op.drop_table("connect_sessions")
    op.drop_table("end_users")
