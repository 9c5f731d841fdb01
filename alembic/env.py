"""Alembic environment of isochat (async engine).

The database URL is, in order of preference: the ``sqlalchemy.url`` set on the Config by the
caller (``src.services.database.migrations.alembic_config``), else the application's settings.

Concurrent migrations are safe: the online path locks the database (PostgreSQL advisory lock on
the migration connection, a file lock beside a SQLite file) before alembic reads the current
revision, and keeps it until the upgrade is committed, so processes started together take turns
and the later ones find nothing to do. See ``src.services.database.migrations``.

A caller that already holds a connection passes it as ``config.attributes["connection"]``
(a sync ``Connection``, e.g. from inside ``AsyncConnection.run_sync``) and it is used as is,
without any lock: that caller owns the connection's transactions and serialises its own
migrations (``postgres_advisory_lock(connection)`` or ``sqlite_file_lock(path)`` around the
alembic command).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager, nullcontext
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from src.services.database.migrations import (
    MIGRATION_LOCK_TIMEOUT_S,
    postgres_advisory_lock,
    sqlite_database_file,
    sqlite_file_lock,
)
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


def do_run_migrations_locked(connection: Connection) -> None:
    # Locked on the migration connection itself, so that reading the current revision and
    # upgrading both happen under the lock and a second process sees the first one's result.
    lock = (
        postgres_advisory_lock(connection)
        if connection.dialect.name == "postgresql"
        else nullcontext()
    )
    with lock:
        do_run_migrations(connection)


async def run_async_migrations(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        # NullPool: closing the connection ends the PostgreSQL session, which drops its
        # advisory lock even if unlocking failed.
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations_locked)
    finally:
        await engine.dispose()


def sqlite_lock(url: str) -> AbstractContextManager[object]:
    """The file lock of a SQLite file database (nothing to lock otherwise). Taken outside the
    migration's event loop, because waiting for it blocks."""
    database_file = sqlite_database_file(url)
    if database_file is None:
        return nullcontext()
    # SQLite creates the file but not the directory it lives in.
    database_file.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = float(config.attributes.get("migration_lock_timeout_s", MIGRATION_LOCK_TIMEOUT_S))
    return sqlite_file_lock(database_file, timeout_s=timeout_s)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = database_url()
        with sqlite_lock(url):
            asyncio.run(run_async_migrations(url))
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
