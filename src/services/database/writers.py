"""Where write transactions run: SQLite's writer thread, or the application's engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from src.services.database.failures import DatabaseTimeout

T = TypeVar("T")


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
        configure_sqlite(self.engine, begin="BEGIN IMMEDIATE")
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


def configure_sqlite(engine: AsyncEngine | Engine, *, begin: str) -> None:
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
