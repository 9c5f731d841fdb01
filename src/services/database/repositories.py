"""Reads and writes of threads and reads of messages, runs and events (the run ledger,
``src/services/ledger.py``, is the one writer of runs, their events and run messages).
Repositories never commit: the use case owns the transaction.

Every read of user data filters by its owner in the query itself, so a caller cannot forget to.
Statements are SQLAlchemy Core on the tables (rows, not ORM objects): no identity map, no unit of
work, a fraction of the ORM's cost per row.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from sqlalchemy import Row, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from src.services.database.models import MessageRow, RunEventRow, RunRow, ThreadRow
from src.services.domain import Event, Message, Run, RunError, RunStatus, Thread
from src.services.llm import Usage

THREADS, MESSAGES, RUNS, EVENTS = (
    ThreadRow.__table__,
    MessageRow.__table__,
    RunRow.__table__,
    RunEventRow.__table__,
)


def _thread(row: Row[Any]) -> Thread:
    return Thread(id=row.id, user_id=row.user_id, title=row.title, created_at=row.created_at)


def _message(row: Row[Any]) -> Message:
    role: Literal["user", "assistant"] = "assistant" if row.role == "assistant" else "user"
    return Message(
        id=row.id,
        thread_id=row.thread_id,
        role=role,
        content=row.content,
        run_id=row.run_id,
        created_at=row.created_at,
    )


def _run(row: Row[Any]) -> Run:
    error = None
    if row.error_code is not None:
        error = RunError(code=row.error_code, message=row.error_message or "")
    status: RunStatus = row.status  # constrained by the writers
    return Run(
        id=row.id,
        thread_id=row.thread_id,
        user_id=row.user_id,
        status=status,
        route=row.route,
        error=error,
        created_at=row.created_at,
        finished_at=row.finished_at,
        usage=None
        if row.prompt_tokens is None
        else Usage(row.prompt_tokens, row.completion_tokens or 0),
    )


def _event(row: Row[Any]) -> Event:
    data: dict[str, Any] = json.loads(row.data)
    return Event(
        type=row.type,
        run_id=row.run_id,
        thread_id=row.thread_id,
        seq=row.seq,
        ts=row.ts,
        agent=row.agent,
        data=data,
    )


# threads


def add_thread(conn: Connection, thread: Thread) -> None:
    """A write: runs in ``Database.transaction`` like the ledger's."""
    conn.execute(
        insert(ThreadRow).values(
            id=thread.id, user_id=thread.user_id, title=thread.title, created_at=thread.created_at
        )
    )


async def get_thread(session: AsyncSession, *, thread_id: str, user_id: str) -> Thread | None:
    result = await session.execute(
        select(THREADS).where(THREADS.c.id == thread_id, THREADS.c.user_id == user_id)
    )
    row = result.first()
    return None if row is None else _thread(row)


async def list_threads(session: AsyncSession, *, user_id: str) -> list[Thread]:
    rows = await session.execute(
        select(THREADS)
        .where(THREADS.c.user_id == user_id)
        .order_by(THREADS.c.created_at.desc(), THREADS.c.id)
    )
    return [_thread(r) for r in rows]


# messages


async def assistant_message(session: AsyncSession, *, run_id: str) -> Message | None:
    result = await session.execute(
        select(MESSAGES).where(MESSAGES.c.run_id == run_id, MESSAGES.c.role == "assistant")
    )
    row = result.first()
    return None if row is None else _message(row)


async def list_messages(session: AsyncSession, *, thread_id: str, user_id: str) -> list[Message]:
    query = (
        select(MESSAGES)
        .join(THREADS, THREADS.c.id == MESSAGES.c.thread_id)
        .where(MESSAGES.c.thread_id == thread_id, THREADS.c.user_id == user_id)
        .order_by(MESSAGES.c.created_at, MESSAGES.c.id)
    )
    return [_message(r) for r in await session.execute(query)]


# runs


async def get_run(session: AsyncSession, *, run_id: str, user_id: str) -> Run | None:
    result = await session.execute(
        select(RUNS).where(RUNS.c.id == run_id, RUNS.c.user_id == user_id)
    )
    row = result.first()
    return None if row is None else _run(row)


# events


async def list_events(
    session: AsyncSession, *, run_id: str, user_id: str, after: int
) -> list[Event]:
    rows = await session.execute(
        select(EVENTS, RUNS.c.thread_id)
        .join(RUNS, RUNS.c.id == EVENTS.c.run_id)
        .where(EVENTS.c.run_id == run_id, RUNS.c.user_id == user_id, EVENTS.c.seq > after)
        .order_by(EVENTS.c.seq)
    )
    return [_event(row) for row in rows]
