"""Running the alembic migrations from code, and asking whether a database is up to date.

Migrations are safe to start concurrently: any number of processes (hosts running
``isochat serve``, several ``isochat migrate``) may call ``upgrade_to_head`` on one database at
the same moment. alembic/env.py serialises them with a lock held while it reads the current
revision and upgrades, so the first one migrates and the others, once they get the lock, find
the schema at head and do nothing:

- PostgreSQL: a session-level advisory lock, ``pg_advisory_lock(MIGRATION_LOCK_KEY)``, on the
  migration connection. Advisory locks are per database, so databases on one server do not wait
  for each other. It needs a real session: behind a pooler in transaction mode (PgBouncer
  ``pool_mode=transaction``) migrate over a direct connection.
- SQLite file: an exclusive ``flock`` (through ``filelock``) on a sibling file
  ``<database file>.migrate.lock``, waited for at most ``MIGRATION_LOCK_TIMEOUT_S``.
  ``:memory:`` databases are private to one connection and need none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock, Timeout
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("isochat.migrations")

# In a checkout, alembic.ini and alembic/ sit at the project root, three levels above this
# package; an installed isochat has the same alembic/ as its package src.migrations.
PROJECT_ROOT = Path(__file__).resolve().parents[3]
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


def migrations_directory() -> Path:
    """Where the migrations are: the checkout's alembic/, else the installed package's."""
    if (PROJECT_ROOT / "alembic" / "env.py").is_file():
        return PROJECT_ROOT / "alembic"
    spec = importlib.util.find_spec("src.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("isochat's migrations are missing from this installation")
    return Path(next(iter(spec.submodule_search_locations)))


MIGRATION_LOCK_NAME = "isochat.migrations"
# pg_advisory_lock takes a signed 64-bit key: the first 8 bytes of the name's SHA-256, so that
# every version of isochat agrees on it without a registry of keys. (-958539339995782858; in
# pg_locks: locktype 'advisory', classid 4071789964, objid 2152751414, objsubid 1.)
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(MIGRATION_LOCK_NAME.encode()).digest()[:8], "big", signed=True
)
# How long a process waits for another one's SQLite migration before giving up. A migration of
# a SQLite file takes well under a second; a lock held this long means a hung process.
MIGRATION_LOCK_TIMEOUT_S = 120.0


class MigrationLockTimeout(RuntimeError):
    """Another process held the migration lock for longer than we agreed to wait."""


def _escape(value: str) -> str:
    # Config options go through configparser interpolation: a literal "%" (an URL-encoded
    # password, a path) must be doubled or it is rejected.
    return value.replace("%", "%%")


def _base_config() -> Config:
    if ALEMBIC_INI.is_file():
        cfg = Config(str(ALEMBIC_INI))
    else:  # installed: no alembic.ini, only what running the migrations needs
        cfg = Config()
        cfg.set_main_option("path_separator", "os")
    # Absolute, so migrations are found whatever the current directory is.
    cfg.set_main_option("script_location", _escape(str(migrations_directory())))
    # The process that runs migrations in-process has its own logging; do not let
    # alembic.ini's fileConfig replace it.
    cfg.attributes["configure_logger"] = False
    return cfg


def alembic_config(database_url: str) -> Config:
    """The project's alembic Config aimed at ``database_url`` (env.py prefers it to Settings).

    env.py locks the database against concurrent migrations itself (see the module docstring),
    unless the caller hands it a connection in ``cfg.attributes["connection"]``: such a caller
    holds the lock itself (``postgres_advisory_lock``, ``sqlite_file_lock``).
    ``cfg.attributes["migration_lock_timeout_s"]`` overrides ``MIGRATION_LOCK_TIMEOUT_S``.
    """
    cfg = _base_config()
    cfg.set_main_option("sqlalchemy.url", _escape(database_url))
    return cfg


def upgrade_to_head(database_url: str) -> None:
    """Bring the database up to the newest revision; safe to call from several processes at
    once (they take turns, and all return with the schema at head).

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


def sqlite_database_file(database_url: str) -> Path | None:
    """The file a SQLite URL names, or None: not SQLite, or an in-memory database."""
    url = make_url(database_url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        # A URI filename (``?uri=true``): the path is the URI's, and mode=memory is in memory.
        # SQLAlchemy moves the URL's query (mode=...) off the database name; look at both.
        uri = urlsplit(database)
        url_mode = url.query.get("mode", ())
        modes = [*parse_qs(uri.query).get("mode", [])]
        modes += [url_mode] if isinstance(url_mode, str) else url_mode
        if uri.path in ("", ":memory:") or "memory" in modes:
            return None
        return Path(uri.path)
    return Path(database)


def sqlite_lock_file(database_file: Path) -> Path:
    return database_file.with_name(database_file.name + ".migrate.lock")


@contextmanager
def sqlite_file_lock(
    database_file: Path, *, timeout_s: float = MIGRATION_LOCK_TIMEOUT_S
) -> Iterator[Path]:
    """Hold the migration lock of a SQLite file for the block (yields the lock file's path);
    ``MigrationLockTimeout`` after ``timeout_s`` of waiting for another holder.

    An exclusive ``flock`` on ``<database file>.migrate.lock``: the kernel releases it when the
    holder exits, even killed, so a dead migrator never blocks the next one. The lock file is
    left in place (``preserve_lock_file``): deleting it would let a process that opened the old
    file and one that creates a new one both believe they hold the lock. For the same reason
    there is no fallback to a lock that is a file's existence (filelock's "soft" lock, for
    file systems without ``flock``): one left behind by a killed migrator would block every
    later one; such a file system gets an error instead.

    ``filelock`` waits by polling a non-blocking ``flock``: a blocking one has no timeout, and
    a signal interrupts it only in the main thread (migrations may run in a worker thread).
    """
    lock_path = sqlite_lock_file(database_file)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, preserve_lock_file=True, fallback_to_soft=False)
    try:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info("another process is migrating; waiting for the lock %s", lock_path)
            lock.acquire(timeout=timeout_s)
    except Timeout:
        raise MigrationLockTimeout(
            f"gave up after {timeout_s:g} s waiting for the migration lock {lock_path}: "
            "another process is migrating this database, or is hung holding the lock"
        ) from None
    try:
        yield lock_path
    finally:
        lock.release()


@contextmanager
def postgres_advisory_lock(connection: Connection) -> Iterator[None]:
    """Hold the PostgreSQL migration lock on ``connection``'s session for the block.

    Session-level, not transaction-level: alembic commits its own transactions inside the
    block, and the lock must outlive them. The connection is left outside any transaction on
    entry, so alembic begins (and commits) its own; its reads then see what the previous
    holder committed. It commits on entry and rolls back on exit: use it on a connection with
    no transaction of yours open. Waits as long as the holder migrates: a PostgreSQL migration may
    legitimately take minutes (an index on a big table), and a holder that dies loses its
    session and so the lock.
    """
    got_it = connection.execute(select(func.pg_try_advisory_lock(MIGRATION_LOCK_KEY))).scalar()
    if not got_it:
        log.info("another process is migrating; waiting for the PostgreSQL migration lock")
        connection.execute(select(func.pg_advisory_lock(MIGRATION_LOCK_KEY)))
    connection.commit()
    try:
        yield
    finally:
        _release_advisory_lock(connection)


def _release_advisory_lock(connection: Connection) -> None:
    try:
        # A failed migration leaves its transaction rolled back by alembic, but anything still
        # open (or aborted) must end before the unlock can run.
        connection.rollback()
        connection.execute(select(func.pg_advisory_unlock(MIGRATION_LOCK_KEY)))
        connection.commit()
    except SQLAlchemyError:
        # The session is broken (lost connection): it is closed right after, which releases
        # its locks anyway; raising here would hide the error that got us here.
        log.warning("could not release the PostgreSQL migration lock", exc_info=True)
