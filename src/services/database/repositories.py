"""Reads and writes of chat data. Repositories never commit: the use case owns the transaction.

Every read of user data filters by its owner in the query itself, so a caller cannot forget to.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select, update
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


async def add_message(session: AsyncSession, message: Message) -> None:
    session.add(
        MessageRow(
            id=message.id,
            thread_id=message.thread_id,
            role=message.role,
            content=message.content,
            run_id=message.run_id,
            created_at=message.created_at,
        )
    )
    await session.flush()


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


async def add_run(session: AsyncSession, run: Run, *, request_id: str | None) -> None:
    """Flushes at once so a second running run on the thread fails here (IntegrityError)."""
    session.add(
        RunRow(
            id=run.id,
            thread_id=run.thread_id,
            user_id=run.user_id,
            status=run.status,
            route=run.route,
            request_id=request_id,
            created_at=run.created_at,
        )
    )
    await session.flush()


async def get_run(session: AsyncSession, *, run_id: str, user_id: str) -> Run | None:
    row = await session.scalar(
        select(RunRow)
        .where(RunRow.id == run_id, RunRow.user_id == user_id)
        # another session (a cancel, another worker) may have finished it since we loaded it
        .execution_options(populate_existing=True)
    )
    return None if row is None else _run(row)


async def set_route(session: AsyncSession, *, run_id: str, route: str) -> None:
    await session.execute(update(RunRow).where(RunRow.id == run_id).values(route=route))


async def finish_run(
    session: AsyncSession,
    *,
    run_id: str,
    status: RunStatus,
    error: RunError | None,
    finished_at: datetime,
) -> bool:
    """Move a running run to ``status``; False when it had already finished (nothing changed)."""
    result = await session.execute(
        update(RunRow)
        .where(RunRow.id == run_id, RunRow.status == "running")
        .values(
            status=status,
            error_code=None if error is None else error.code,
            error_message=None if error is None else error.message,
            finished_at=finished_at,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def count_running_runs(session: AsyncSession, *, user_id: str) -> int:
    count = await session.scalar(
        select(func.count()).where(RunRow.user_id == user_id, RunRow.status == "running")
    )
    return int(count or 0)


async def running_runs(session: AsyncSession) -> list[Run]:
    rows = await session.scalars(
        select(RunRow).where(RunRow.status == "running").execution_options(populate_existing=True)
    )
    return [_run(r) for r in rows]


# events


async def add_event(session: AsyncSession, event: Event) -> None:
    session.add(
        RunEventRow(
            run_id=event.run_id,
            seq=event.seq,
            type=event.type,
            agent=event.agent,
            data=json.dumps(event.data, ensure_ascii=False),
            ts=event.ts,
        )
    )
    await session.flush()


async def last_seq(session: AsyncSession, *, run_id: str) -> int:
    got = await session.scalar(
        select(func.max(RunEventRow.seq)).where(RunEventRow.run_id == run_id)
    )
    return int(got or 0)


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
