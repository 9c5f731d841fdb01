"""run status check: the database refuses a status the contract does not list

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported from the models: a migration says what the schema was at its
# revision, whatever the models say later.
RUN_STATUSES = ("queued", "running", "awaiting_approval", "completed", "failed", "cancelled")
STATUS_CHECK = "status IN ({})".format(", ".join(f"'{status}'" for status in RUN_STATUSES))


def upgrade() -> None:
    _refuse_cascading_copy()
    # On SQLite batch mode copies the table into a new one (with its indexes, the partial
    # unique index included); on PostgreSQL these are two ALTER TABLEs. 32 characters: room
    # for awaiting_approval (17), which VARCHAR(16) refuses on PostgreSQL.
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("status", existing_type=sa.String(length=16), type_=sa.String(length=32))
        batch.create_check_constraint(op.f("ck_runs_status"), STATUS_CHECK)


def downgrade() -> None:
    # A run stored with a status longer than 16 characters stops this on PostgreSQL: such a run
    # cannot be written down in the old schema.
    _refuse_cascading_copy()
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(op.f("ck_runs_status"), type_="check")
        batch.alter_column("status", existing_type=sa.String(length=32), type_=sa.String(length=16))


def _refuse_cascading_copy() -> None:
    """On SQLite the copy drops the old runs table; with foreign keys enforced, that would
    delete every run's events (ON DELETE CASCADE). alembic's own connection leaves them off;
    a connection handed in with them on is refused rather than emptied."""
    if op.get_context().as_sql:
        return
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "migrate SQLite with PRAGMA foreign_keys=OFF: copying the runs table with foreign "
            "keys enforced would delete every run's events"
        )
