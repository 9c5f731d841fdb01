"""run queue: messages sent while a thread is busy wait their turn as queued runs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported from the models (see 0004).
QUEUED_WHERE = "status = 'queued'"


def upgrade() -> None:
    # Plain ADD COLUMN (no table copy, also on SQLite); no run is queued yet.
    op.add_column("runs", sa.Column("queue_position", sa.Integer(), nullable=True))
    op.add_column(
        "runs",
        sa.Column("queue_ahead", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("runs", sa.Column("preempted", sa.String(length=16), nullable=True))
    op.add_column("runs", sa.Column("grants", sa.Text(), nullable=True))
    op.add_column(
        "messages",
        sa.Column("interrupted", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # A thread's queue, read at every end of one of its runs: only queued runs are indexed.
    op.create_index(
        "ix_runs_queued",
        "runs",
        ["thread_id"],
        sqlite_where=sa.text(QUEUED_WHERE),
        postgresql_where=sa.text(QUEUED_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_queued", table_name="runs")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("interrupted")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("grants")
        batch.drop_column("preempted")
        batch.drop_column("queue_ahead")
        batch.drop_column("queue_position")
