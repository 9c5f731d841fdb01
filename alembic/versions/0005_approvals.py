"""approvals: a run paused for a person's approval is stored with what it needs to go on

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported from the models (see 0004).
ACTIVE_WHERE = "status IN ('running', 'awaiting_approval')"


def upgrade() -> None:
    # Plain ADD COLUMN (no table copy, also on SQLite); no run is paused yet.
    op.add_column("runs", sa.Column("pause_state", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("pause_expires_at", sa.DateTime(), nullable=True))
    # A paused run holds its thread like a running one.
    op.drop_index("uq_runs_one_running_per_thread", table_name="runs")
    op.create_index(
        "uq_runs_one_active_per_thread",
        "runs",
        ["thread_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE_WHERE),
        postgresql_where=sa.text(ACTIVE_WHERE),
    )
    # Read by run and by thread without scanning (a decision reads the run's question).
    op.create_index("ix_messages_run_id", "messages", ["run_id"])
    op.create_index("ix_runs_thread_id", "runs", ["thread_id"])
    op.create_table(
        "run_approvals",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("pause", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("call_id", sa.String(length=200), nullable=False),
        sa.Column("tool", sa.String(length=200), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("edited_input", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_run_approvals_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "pause", "call_id", name=op.f("pk_run_approvals")),
    )


def downgrade() -> None:
    op.drop_table("run_approvals")
    op.drop_index("ix_runs_thread_id", table_name="runs")
    op.drop_index("ix_messages_run_id", table_name="messages")
    op.drop_index("uq_runs_one_active_per_thread", table_name="runs")
    op.create_index(
        "uq_runs_one_running_per_thread",
        "runs",
        ["thread_id"],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pause_expires_at")
        batch.drop_column("pause_state")
