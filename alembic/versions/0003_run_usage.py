"""run usage: the tokens a run's model calls used

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table copy, also on SQLite); runs ended before have no usage (null).
    op.add_column("runs", sa.Column("prompt_tokens", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("completion_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("completion_tokens")
        batch.drop_column("prompt_tokens")
