"""Alembic environment of isochat (async engine).

The database URL is, in order of preference: the ``sqlalchemy.url`` set on the Config by the
caller (``src.services.database.migrations.alembic_config``), else the application's settings.
A caller that already holds a connection passes it as ``config.attributes["connection"]``
(a sync ``Connection``, e.g. from inside ``AsyncConnection.run_sync``) and it is used as is.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from src.services.database.models import Base
from src.settings import Settings

config = context.config

# Code that runs migrations in-process has set up logging itself and says so; only the
# alembic command line takes its logging from alembic.ini.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def run_migrations_offline() -> None:
    """Emit the SQL of the migrations instead of running them (``alembic upgrade --sql``)."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters a table only by copying it; batch mode does that for us.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
        # SQLite creates the file but not the directory it lives in.
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations(database_url()))
    elif isinstance(connection, Connection):
        do_run_migrations(connection)
    else:
        raise TypeError(
            "config.attributes['connection'] must be a sync Connection; with an "
            "AsyncConnection, call alembic from inside `await connection.run_sync(...)`"
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
