"""thread clients: which protocol made a thread, its client's metadata and key

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table copy, also on SQLite); every thread so far came through the API.
    op.add_column(
        "threads",
        sa.Column("origin", sa.String(length=16), nullable=False, server_default="api"),
    )
    op.add_column("threads", sa.Column("metadata", sa.Text(), nullable=True))
    op.add_column("threads", sa.Column("client_key", sa.String(length=200), nullable=True))
    op.create_index("uq_threads_user_client_key", "threads", ["user_id", "client_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_threads_user_client_key", table_name="threads")
    with op.batch_alter_table("threads") as batch:
        batch.drop_column("client_key")
        batch.drop_column("metadata")
        batch.drop_column("origin")
