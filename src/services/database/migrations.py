"""Running the alembic migrations from code, and asking whether a database is up to date."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

# alembic.ini and alembic/ sit at the project root, three levels above this package.
PROJECT_ROOT = Path(__file__).resolve().parents[3]
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


def _escape(value: str) -> str:
    # Config options go through configparser interpolation: a literal "%" (an URL-encoded
    # password, a path) must be doubled or it is rejected.
    return value.replace("%", "%%")


def _base_config() -> Config:
    cfg = Config(str(ALEMBIC_INI))
    # Absolute, so migrations are found whatever the current directory is.
    cfg.set_main_option("script_location", _escape(str(PROJECT_ROOT / "alembic")))
    # The process that runs migrations in-process has its own logging; do not let
    # alembic.ini's fileConfig replace it.
    cfg.attributes["configure_logger"] = False
    return cfg


def alembic_config(database_url: str) -> Config:
    """The project's alembic Config aimed at ``database_url`` (env.py prefers it to Settings)."""
    cfg = _base_config()
    cfg.set_main_option("sqlalchemy.url", _escape(database_url))
    return cfg


def upgrade_to_head(database_url: str) -> None:
    """Bring the database up to the newest revision.

    env.py runs its own event loop (``asyncio.run``), so call this from sync code before the
    application's loop starts, or from a worker thread (``asyncio.to_thread``).
    """
    command.upgrade(alembic_config(database_url), "head")


async def current_revision_is_head(engine: AsyncEngine) -> bool:
    """Whether the database behind ``engine`` is at the newest revision, so that the
    application can refuse to start on a schema that it does not match."""
    script_heads = set(ScriptDirectory.from_config(_base_config()).get_heads())

    def current_heads(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as conn:
        database_heads = await conn.run_sync(current_heads)
    return database_heads == script_heads
