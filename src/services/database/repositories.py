"""Reads and writes of threads and reads of messages, runs and events (the run ledger,
``src/services/ledger.py``, is the one writer of runs, their events and run messages).
Repositories never commit: the use case owns the transaction.

Every read of user data filters by its owner in the query itself, so a caller cannot forget to.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from src.services.database.models import MessageRow, RunEventRow, RunRow, ThreadRow
from src.services.domain import Event, Message, Run, RunError, RunStatus, Thread


def _thread(row: ThreadRow) -> Thread:
    return Thread(id=row.id, user_id=row.user_id, title=row.title, created_at=row.created_at)


def _message(row: MessageRow) -> Message:
    role: Literal["user", "assistant"] = "assistant" if row.role == "assistant" else "user"
    return Message(
        id=row.id,
        thread_id=row.thread_id,
        role=role,
        content=row.content,
        run_id=row.run_id,
        created_at=row.created_at,
    )


def _run(row: RunRow) -> Run:
    error = None
    if row.error_code is not None:
        error = RunError(code=row.error_code, message=row.error_message or "")
    status: RunStatus = row.status  # type: ignore[assignment]  # constrained by the writers
    return Run(
        id=row.id,
        thread_id=row.thread_id,
        user_id=row.user_id,
        status=status,
        route=row.route,
        error=error,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def _event(row: RunEventRow, thread_id: str) -> Event:
    data: dict[str, Any] = json.loads(row.data)
    return Event(
        type=row.type,
        run_id=row.run_id,
        thread_id=thread_id,
        seq=row.seq,
        ts=row.ts,
        agent=row.agent,
        data=data,
    )


# threads


async def add_thread(session: AsyncSession, thread: Thread) -> None:
    session.add(
        ThreadRow(
            id=thread.id, user_id=thread.user_id, title=thread.title, created_at=thread.created_at
        )
    )
    await session.flush()


async def get_thread(session: AsyncSession, *, thread_id: str, user_id: str) -> Thread | None:
    row = await session.scalar(
        select(ThreadRow).where(ThreadRow.id == thread_id, ThreadRow.user_id == user_id)
    )
    return None if row is None else _thread(row)


async def list_threads(session: AsyncSession, *, user_id: str) -> list[Thread]:
    rows = await session.scalars(
        select(ThreadRow)
        .where(ThreadRow.user_id == user_id)
        .order_by(ThreadRow.created_at.desc(), ThreadRow.id)
    )
    return [_thread(r) for r in rows]


# messages


async def assistant_message(session: AsyncSession, *, run_id: str) -> Message | None:
    row = await session.scalar(
        select(MessageRow).where(MessageRow.run_id == run_id, MessageRow.role == "assistant")
    )
    return None if row is None else _message(row)


async def list_messages(
    session: AsyncSession, *, thread_id: str, user_id: str, role: str | None = None
) -> list[Message]:
    query = (
        select(MessageRow)
        .join(ThreadRow, ThreadRow.id == MessageRow.thread_id)
        .where(MessageRow.thread_id == thread_id, ThreadRow.user_id == user_id)
        .order_by(MessageRow.created_at, MessageRow.id)
    )
    if role is not None:
        query = query.where(MessageRow.role == role)
    return [_message(r) for r in await session.scalars(query)]


# runs


async def get_run(session: AsyncSession, *, run_id: str, user_id: str) -> Run | None:
    row = await session.scalar(
        select(RunRow)
        .where(RunRow.id == run_id, RunRow.user_id == user_id)
        # another session (a cancel, another worker) may have finished it since we loaded it
        .execution_options(populate_existing=True)
    )
    return None if row is None else _run(row)


# events


async def list_events(
    session: AsyncSession, *, run_id: str, user_id: str, after: int
) -> list[Event]:
    rows = await session.execute(
        select(RunEventRow, RunRow.thread_id)
        .join(RunRow, RunRow.id == RunEventRow.run_id)
        .where(RunEventRow.run_id == run_id, RunRow.user_id == user_id, RunEventRow.seq > after)
        .order_by(RunEventRow.seq)
    )
    return [_event(row, thread_id) for row, thread_id in rows]
