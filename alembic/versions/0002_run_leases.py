"""run leases: owner, lease expiry and the newest event's seq on each run

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table copy, also on SQLite), so `alembic upgrade --sql` works too.
    op.add_column("runs", sa.Column("owner_id", sa.String(length=200), nullable=True))
    op.add_column("runs", sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
    op.add_column(
        "runs", sa.Column("last_seq", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    # Runs written before leases existed: their seq counter starts after their stored events.
    op.execute(
        "UPDATE runs SET last_seq = "
        "(SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_events.run_id = runs.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("last_seq")
        batch.drop_column("lease_expires_at")
        batch.drop_column("owner_id")
