"""The application's engine and its sessions (app lifetime), and the one way to run a
transaction (``Database.write`` / ``read``, a request's ``Transactions``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from src.aio import DeadlineExceeded, uninterrupted
from src.services.database.failures import DatabaseTimeout, DatabaseUnavailable
from src.services.database.migrations import current_revision_is_head
from src.services.database.writers import configure_sqlite, create_writer
from src.services.metrics import Metrics

T = TypeVar("T")
P = ParamSpec("P")


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
    configure_sqlite(engine, begin="BEGIN")
    return engine


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
