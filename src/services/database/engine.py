"""The application's engine and its sessions (app lifetime)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from src.aio import DeadlineExceeded, uninterrupted
from src.runs.domain import RunError, RunFailure
from src.services.database.migrations import current_revision_is_head
from src.services.metrics import Metrics

T = TypeVar("T")
P = ParamSpec("P")


class DatabaseUnavailable(RunFailure):
    """The database could not be reached or used in time (down, lost connection, locked, hung,
    pool exhausted), as opposed to a statement that is wrong: worth a retry on a fresh
    connection, or a 503. A run it ends fails ``database_error``."""

    code = "database_error"
    default_message = "the database failed during the run"

    def as_run_error(self) -> RunError:
        return RunError(self.code, self.default_message)  # the details are for the log


class DatabaseTimeout(DatabaseUnavailable):
    """A database step did not finish within its deadline: the database is hung or locked. A
    write cut off this way may still commit: what is stored says (see ``src/runs/ender.py``)."""


# Failures of reaching the database (SQLAlchemy's, and ours), not bugs in a statement.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    DatabaseUnavailable,
)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or used (worth a retry on a
    fresh connection), rather than that a statement was wrong. A connection killed mid-query
    surfaces as a generic ``DBAPIError`` marked as having invalidated its connection."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


async def _within_deadline(work: Awaitable[T], timeout_s: float | None) -> T:
    """``work`` (a database step, and nothing else) to its end, within ``timeout_s``. A timeout
    is told by where it came from: the step's own deadline is ``DatabaseTimeout``; a bare
    ``TimeoutError`` or ``ConnectionError`` from inside the step is the driver's (asyncpg's
    statement timeout, a socket lost under it) and is ``DatabaseUnavailable``. Anywhere else,
    such errors are not the database's."""
    try:
        return await uninterrupted(work, timeout_s=timeout_s)
    except DeadlineExceeded as exc:
        raise DatabaseTimeout(f"a database step took longer than {timeout_s:g} s") from exc
    except (TimeoutError, ConnectionError) as exc:
        raise DatabaseUnavailable(f"the database driver gave up: {exc!r}") from exc


def create_engine(
    url: str, *, pool_size: int = 5, max_overflow: int = 10, timeout_s: float = 10.0
) -> AsyncEngine:
    """The application's engine. ``timeout_s`` bounds each statement and each wait for a pooled
    connection, so a hung or locked database fails a step instead of hanging it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_timeout=timeout_s,
            # asyncpg: connecting, and every statement, give up after timeout_s.
            connect_args={"timeout": timeout_s, "command_timeout": timeout_s},
        )
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
        )
    path = parsed.database
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=timeout_s,
        connect_args={"timeout": timeout_s},  # how long a writer waits for SQLite's lock
    )
    _configure_sqlite(engine, begin="BEGIN")
    return engine


class Writer(Protocol):
    """Where write transactions run: ``await writer.run(work)`` commits what ``work`` did on the
    connection it is given, or rolls it back if it raised."""

    async def run(self, work: Callable[[Connection], T]) -> T: ...

    def checked_out(self) -> int: ...

    async def dispose(self) -> None: ...


class EngineWriter:
    """Write transactions on the application's async engine (PostgreSQL): the work runs inside
    the transaction through ``run_sync``, so the same plain code serves every database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, work: Callable[[Connection], T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    def checked_out(self) -> int:
        return 0  # counted with the application's engine, which it shares

    async def dispose(self) -> None:
        return None  # the application's engine is disposed by its owner


class SQLiteWriter:
    """Every write transaction of this process on one SQLite connection, in one thread.

    SQLite has one writer at a time. With a pool of writers, the others sleep in SQLite's busy
    handler (in steps of up to 100 ms, in no order): a lock convoy that gave one run in a
    hundred a 1.7 s wait at ten runs in flight. Here writers queue for the thread first come
    first served, and reads go on beside it on the async engine's pool (WAL). A whole
    transaction is one trip to the thread: through aiosqlite each statement costs about four
    (cursor, execute, fetch, close), and a run writes about ten transactions.
    """

    def __init__(self, url: URL, *, timeout_s: float) -> None:
        # The thread's own engine (tests hold its commits to see what a late commit does).
        self.engine = create_sync_engine(
            url.set(drivername="sqlite"),
            pool_size=1,
            max_overflow=0,
            pool_timeout=timeout_s,
            # Each use is a `begin()` block that commits or rolls back itself.
            pool_reset_on_return=None,
            # Other processes' writers (SQLite's own lock), and closing from the loop's thread.
            connect_args={"timeout": timeout_s, "check_same_thread": False},
        )
        _configure_sqlite(self.engine, begin="BEGIN IMMEDIATE")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="isochat-writer")

    async def run(self, work: Callable[[Connection], T]) -> T:
        given_up = threading.Event()

        def transaction() -> T:
            if given_up.is_set():  # its caller stopped waiting before its turn came
                raise DatabaseTimeout("the write was given up before it started")
            with self.engine.begin() as conn:
                return work(conn)

        future = asyncio.get_running_loop().run_in_executor(self._thread, transaction)
        # Seen even when nobody awaits it any more (its caller gave up at the deadline).
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            return await asyncio.shield(future)
        finally:
            given_up.set()  # a no-op once it ran; otherwise it never will

    def checked_out(self) -> int:
        pool = self.engine.pool
        return pool.checkedout() if isinstance(pool, QueuePool) else 0

    async def dispose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=False)


def create_writer(engine: AsyncEngine, *, timeout_s: float) -> Writer:
    """A SQLite file's writer thread, or the application's engine for any other database."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return EngineWriter(engine)
    return SQLiteWriter(url, timeout_s=timeout_s)


def _configure_sqlite(engine: AsyncEngine | Engine, *, begin: str) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling is switched off so that BEGIN below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers BEGIN IMMEDIATE: the write lock up front, so a transaction that reads and then
        # writes waits for the lock instead of failing with SQLITE_BUSY when another process's
        # writer got there. Readers BEGIN (deferred): a snapshot that never blocks the writer.
        conn.exec_driver_sql(begin)


def create_probe_engine(engine: AsyncEngine) -> AsyncEngine:
    """An engine for health checks that sees the database as a new client would.

    For a SQLite file: a fresh connection per check that neither creates the file nor reuses a
    pooled connection (which keeps a removed file open and would report it healthy). Elsewhere,
    the application's own pool, which pings connections before use.
    """
    url = engine.url
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return engine
    if not path.startswith("file:"):
        path = f"file:{Path(path).resolve()}"
    probe_url = url.set(database=path, query={**url.query, "mode": "rw", "uri": "true"})
    return create_async_engine(probe_url, poolclass=NullPool)


class Database:
    """Engines, session factory and the count of open sessions, and the one way to run a
    transaction: ``write(fn, ...)`` on the writer, ``read(fn, ...)`` on a pooled connection
    (a request reads with its own session: ``Transactions``). ``fn`` is plain code on a
    ``Connection`` (``src/services/database/repositories.py``, ``src/runs/ledger.py``)."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics, *, timeout_s: float = 10.0) -> None:
        self.engine = engine
        self.writer = create_writer(engine, timeout_s=timeout_s)  # where every write runs
        self._probe = create_probe_engine(engine)
        self._metrics = metrics
        # A shielded step (a whole transaction) may run a few statements, each bounded by the
        # driver at timeout_s: this is the backstop for what the driver cannot bound.
        self.step_timeout_s = 2 * timeout_s
        self._sessionmaker = async_sessionmaker(engine, expire_on_commit=False)

    async def write(
        self, work: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work(conn, *args, **kwargs)`` in one short write transaction, committed (rolled
        back if it raised); finished even if the caller is cancelled meanwhile, and bounded by
        the step deadline."""

        def transaction(conn: Connection) -> T:
            return work(conn, *args, **kwargs)

        return await _within_deadline(self.writer.run(transaction), self.step_timeout_s)

    async def read(
        self, work: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work(conn, *args, **kwargs)`` in one short read transaction on a pooled connection,
        for code that serves no request (following runs, sweeps)."""

        async def read() -> T:
            async with self.engine.connect() as conn:
                return await conn.run_sync(work, *args, **kwargs)

        return await _within_deadline(read(), self.step_timeout_s)

    async def read_in(
        self,
        session: AsyncSession,
        work: Callable[Concatenate[Connection, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``read``, on ``session`` (a request's): its transaction ends with the read."""

        def on_connection(sync_session: Session) -> T:
            return work(sync_session.connection(), *args, **kwargs)

        async def read() -> T:
            async with session.begin():
                return await session.run_sync(on_connection)

        return await _within_deadline(read(), self.step_timeout_s)

    def open_session(self) -> AsyncSession:
        session = self._sessionmaker()
        self._metrics.db_sessions_open.inc()
        return session

    async def close_session(self, session: AsyncSession) -> None:
        """Close ``session``, rolling back what was not committed; never stops half-way."""
        try:
            if session.in_transaction():
                # Real I/O (a rollback, a connection back to the pool): finish it even if
                # this task is cancelled meanwhile, or the connection stays checked out.
                await uninterrupted(session.close(), timeout_s=self.step_timeout_s)
            else:
                # No transaction means no connection and no I/O: closing cannot be cut short,
                # and the plain synchronous close skips the async bridge (~8 us a request).
                session.sync_session.close()
        finally:
            self._metrics.db_sessions_open.dec()

    async def schema_is_current(self) -> bool:
        """Whether the database, reached as a new client would, is at the newest migration;
        raises when it cannot be reached."""
        return await current_revision_is_head(self._probe)

    def checked_out_connections(self) -> int:
        checkedout: Callable[[], int] | None = getattr(self.engine.pool, "checkedout", None)
        return (checkedout() if checkedout is not None else 0) + self.writer.checked_out()

    async def dispose(self) -> None:
        await self.writer.dispose()
        await self.engine.dispose()
        if self._probe is not self.engine:
            await self._probe.dispose()


class Transactions:
    """A request's transactions: reads on its own session (a request-scoped resource, closed
    with the scope), writes on the database's writer. Use cases, tools and agents run every
    transaction through this, one call each: ``await tx.read(repo.get_run, run_id=...)``."""

    def __init__(self, *, session: AsyncSession, database: Database) -> None:
        self.session = session
        self._database = database

    async def read(
        self, work: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._database.read_in(self.session, work, *args, **kwargs)

    async def write(
        self, work: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._database.write(work, *args, **kwargs)
