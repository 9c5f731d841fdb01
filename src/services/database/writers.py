"""Where write transactions run: SQLite's writer thread, or the application's engine."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

T = TypeVar("T")
# Transactions committed together at most: bounds how long the first of a batch waits for the
# last (a batch of 64 small writes takes a few milliseconds).
MAX_BATCH = 64


class Writer(Protocol):
    """Where write transactions run: ``await writer.run(work)`` commits what ``work`` did on the
    connection it is given, or rolls it back if it raised."""

    def run(self, work: Callable[[Connection], T]) -> Awaitable[T]: ...

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


class _Write:
    """One write transaction waiting for the writer thread, and its outcome."""

    __slots__ = ("error", "future", "result", "work")

    def __init__(self, work: Callable[[Connection], Any], future: asyncio.Future[Any]) -> None:
        self.work = work
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


class SQLiteWriter:
    """Every write transaction of this process on one SQLite connection, in one thread, with
    the transactions that queue up meanwhile committed together (group commit).

    SQLite has one writer at a time. With a pool of writers, the others sleep in SQLite's busy
    handler (in steps of up to 100 ms, in no order): a lock convoy that gave one run in a
    hundred a 1.7 s wait at ten runs in flight. Here writers queue for the thread first come
    first served, and reads go on beside it on the async engine's pool (WAL). A whole
    transaction is one trip to the thread: through aiosqlite each statement costs about four
    (cursor, execute, fetch, close), and a run writes about ten transactions.

    What queued while the thread was busy goes in one SQLite transaction, each in a savepoint
    of its own: a commit writes every page it touched to the WAL, and BEGIN, COMMIT and the
    wake-up of the event loop were most of a small write's cost. A transaction that raises is
    rolled back to its savepoint alone; the others commit. Nobody hears of a write before its
    batch has committed, so an event is still stored before it is published; a batch whose
    BEGIN or COMMIT fails fails every write in it, and none of them stored anything.
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
        # No lock between the loop and the thread (a lock held by a thread that lost the GIL
        # stalled the loop): a deque's append and popleft are atomic, and a drain scheduled
        # twice is harmless, the thread running one at a time.
        self._queued: collections.deque[_Write] = collections.deque()
        self._draining = False  # a drain is scheduled on the thread, or running

    def run(self, work: Callable[[Connection], T]) -> asyncio.Future[T]:
        """The outcome of ``work``'s transaction, once committed. Cancelling the future gives
        the write up if its batch has not started yet (else it commits all the same)."""
        loop = asyncio.get_running_loop()
        write = _Write(work, loop.create_future())
        self._queued.append(write)
        if not self._draining:
            self._draining = True
            self._thread.submit(self._drain, loop)
        return write.future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: commit what is queued, batch after batch, until nothing is."""
        queued = self._queued
        while True:
            batch = [queued.popleft() for _ in range(min(len(queued), MAX_BATCH))]
            if not batch:
                self._draining = False
                if not queued:  # else it came after the look and before the flag: go on
                    return
                self._draining = True
                continue
            self._commit(batch)
            # One wake-up of the loop per batch (none if the loop is closed: nobody waits).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, batch)

    def _commit(self, batch: list[_Write]) -> None:
        # A write whose caller stopped waiting before its turn came is never run.
        live = [write for write in batch if not write.future.cancelled()]
        if not live:
            return
        try:
            with self.engine.begin() as conn:
                if len(live) == 1:
                    live[0].result = live[0].work(conn)  # raising rolls the transaction back
                    return
                # The driver's own connection: a savepoint through SQLAlchemy costs more than
                # the small write it guards.
                driver: Any = conn.connection.driver_connection
                for write in live:
                    driver.execute("SAVEPOINT isochat_write")
                    try:
                        write.result = write.work(conn)
                    except Exception as exc:
                        driver.execute("ROLLBACK TO isochat_write")
                        write.error = exc
                    driver.execute("RELEASE isochat_write")
        except Exception as exc:  # nothing of the batch is stored
            self._end_transaction_left_open()
            for write in live:
                if write.error is None:
                    write.error, write.result = exc, None

    def _end_transaction_left_open(self) -> None:
        """A COMMIT that failed (a deferred constraint, a full disk) leaves SQLite's transaction
        open, and the pool does not reset its connection: every later BEGIN would fail."""
        with contextlib.suppress(Exception), self.engine.connect() as conn:
            driver: Any = conn.connection.driver_connection
            driver.rollback()  # nothing happens when no transaction is open

    def checked_out(self) -> int:
        pool = self.engine.pool
        return pool.checkedout() if isinstance(pool, QueuePool) else 0

    async def dispose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=False)


def _settle(batch: list[_Write]) -> None:
    """On the loop: tell each write of a committed batch its outcome."""
    for write in batch:
        if write.future.done():  # given up (cancelled) meanwhile
            continue
        if write.error is None:
            write.future.set_result(write.result)
        else:
            write.future.set_exception(write.error)
        write.work = write.result = write.error = None  # type: ignore[assignment]


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
