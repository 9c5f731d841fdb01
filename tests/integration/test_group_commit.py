"""SQLite's writer commits the transactions that queued while it was busy together: each is still
all or nothing, and nobody hears of a write before it is stored.

A batch is formed for real: the first write holds the writer thread on an event the test
controls, the others queue behind it, and the test releases it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection

from src.services.database.writers import SQLiteWriter

WITHIN_S = 30.0  # only guards against a hang


class Gate:
    """A write that holds the writer thread until ``release``: what queues meanwhile is one
    batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Connection) -> str:
        self.entered.set()
        self.release.wait(WITHIN_S)
        conn.execute(text("INSERT INTO notes (body) VALUES ('gate')"))
        return "gate"


def insert(body: str):  # type: ignore[no-untyped-def]
    def work(conn: Connection) -> str:
        conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        return body

    return work


def insert_then_fail(body: str):  # type: ignore[no-untyped-def]
    def work(conn: Connection) -> str:
        conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        raise LookupError(f"{body} changed its mind")

    return work


def orphan(conn: Connection) -> None:
    """Breaks a deferred foreign key: SQLite refuses it at COMMIT, not before."""
    conn.execute(text("INSERT INTO children (parent) VALUES (999)"))


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[tuple[SQLiteWriter, Path]]:
    path = tmp_path / "writes.db"
    with sqlite3.connect(path) as setup:
        setup.executescript(
            """
            CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
            CREATE TABLE parents (id INTEGER PRIMARY KEY);
            CREATE TABLE children (
                parent INTEGER REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
            );
            """
        )
    writer = SQLiteWriter(make_url(f"sqlite+aiosqlite:///{path}"), timeout_s=0.5)
    try:
        yield writer, path
    finally:
        await writer.dispose()


def stored(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [body for (body,) in conn.execute("SELECT body FROM notes ORDER BY id")]


async def held_batch(writer: SQLiteWriter, works: list) -> tuple[Gate, list[asyncio.Future]]:  # type: ignore[type-arg]
    """``works`` queued behind a held write; the gate is not released yet."""
    gate = Gate()
    first = writer.run(gate)
    assert await asyncio.to_thread(gate.entered.wait, WITHIN_S)
    futures = [writer.run(work) for work in works]
    return gate, [first, *futures]


async def test_queued_writes_commit_in_one_transaction(
    writer: tuple[SQLiteWriter, Path],
) -> None:
    writes, path = writer
    commits: list[int] = []
    event.listen(writes.engine, "commit", lambda conn: commits.append(1))
    gate, futures = await held_batch(writes, [insert(f"note {i}") for i in range(10)])
    await asyncio.sleep(0)
    assert stored(path) == []  # nothing is stored, or told, before the batch commits
    assert not any(future.done() for future in futures)
    gate.release.set()
    results = await asyncio.wait_for(asyncio.gather(*futures), WITHIN_S)
    assert results == ["gate", *(f"note {i}" for i in range(10))]
    assert stored(path) == ["gate", *(f"note {i}" for i in range(10))]
    assert len(commits) == 2  # the gate's own transaction, then the ten queued behind it


async def test_a_write_that_raises_is_undone_alone(writer: tuple[SQLiteWriter, Path]) -> None:
    writes, path = writer
    gate, futures = await held_batch(
        writes, [insert("before"), insert_then_fail("wrong"), insert("after")]
    )
    gate.release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WITHIN_S)
    assert outcomes[:2] == ["gate", "before"] and outcomes[3] == "after"
    assert isinstance(outcomes[2], LookupError)
    assert stored(path) == ["gate", "before", "after"]


async def test_a_batch_whose_commit_fails_stores_nothing_and_fails_every_write(
    writer: tuple[SQLiteWriter, Path],
) -> None:
    writes, path = writer
    gate, futures = await held_batch(writes, [insert("one"), orphan, insert("two")])
    gate.release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WITHIN_S)
    assert outcomes[0] == "gate"
    assert all(isinstance(outcome, Exception) for outcome in outcomes[1:])
    assert "FOREIGN KEY" in str(outcomes[2])
    assert stored(path) == ["gate"]
    assert await asyncio.wait_for(writes.run(insert("later")), WITHIN_S) == "later"
    assert stored(path) == ["gate", "later"]


async def test_a_write_given_up_before_its_batch_never_runs(
    writer: tuple[SQLiteWriter, Path],
) -> None:
    writes, path = writer
    gate, futures = await held_batch(writes, [insert("kept"), insert("given up")])
    futures[2].cancel()
    gate.release.set()
    assert await asyncio.wait_for(futures[1], WITHIN_S) == "kept"
    assert await asyncio.wait_for(writes.run(insert("next")), WITHIN_S) == "next"
    assert stored(path) == ["gate", "kept", "next"]


async def test_a_batch_that_cannot_get_the_lock_fails_every_write_and_the_next_one_works(
    writer: tuple[SQLiteWriter, Path],
) -> None:
    writes, path = writer
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds SQLite's lock
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                writes.run(insert("a")), writes.run(insert("b")), return_exceptions=True
            ),
            WITHIN_S,
        )
        assert all("locked" in str(outcome) for outcome in outcomes)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await asyncio.wait_for(writes.run(insert("c")), WITHIN_S) == "c"
    assert stored(path) == ["c"]
