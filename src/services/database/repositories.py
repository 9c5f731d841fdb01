"""Reads and writes of threads, and reads of messages, runs and events (the run ledger,
``src/runs/ledger.py``, is the one writer of runs, their events and run messages).

One calling convention: every function is plain synchronous code on a ``Connection`` and never
commits; the caller runs it in one transaction, ``Database.write(fn, ...)`` for writes,
``Transactions.read(fn, ...)`` (the request's session) or ``Database.read(fn, ...)`` for reads.

Every read of user data filters by its owner in the query itself, so a caller cannot forget to.
Statements are SQLAlchemy Core on the tables (rows, not ORM objects): no identity map, no unit of
work, a fraction of the ORM's cost per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Row, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from src.runs.domain import (
    ACTIVE_STATUSES,
    Event,
    Message,
    Run,
    RunError,
    RunStatus,
    Thread,
    Usage,
)
from src.services.database.models import APPROVALS, EVENTS, MESSAGES, RUNS, THREADS

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, and where the next one starts (None: this was the last)."""

    items: list[T]
    next_after: tuple[datetime, str] | None


# rows as domain objects (the ledger reads back with these too)


def thread_of(row: Row[Any], queued: dict[str, list[str]] | None = None) -> Thread:
    return Thread(
        id=row.id,
        user_id=row.user_id,
        title=row.title,
        created_at=row.created_at,
        active_run_id=row.active_run_id,
        queued_run_ids=tuple((queued or {}).get(row.id, ())),
        origin=row.origin,
        metadata=row.metadata,
    )


def message_of(row: Row[Any]) -> Message:
    role: Literal["user", "assistant"] = "assistant" if row.role == "assistant" else "user"
    return Message(
        id=row.id,
        thread_id=row.thread_id,
        role=role,
        content=row.content,
        run_id=row.run_id,
        created_at=row.created_at,
        interrupted=bool(row.interrupted),
    )


def run_of(row: Row[Any]) -> Run:
    error = None
    if row.error_code is not None:
        error = RunError(code=row.error_code, message=row.error_message or "")
    status: RunStatus = row.status  # constrained by the database (CHECK) and the ledger
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


def event_of(row: Row[Any], *, thread_id: str | None = None) -> Event:
    """An event from its row; ``thread_id`` when the row does not carry it (joined from its
    run)."""
    data: dict[str, Any] = json.loads(row.data)
    return Event(
        type=row.type,
        run_id=row.run_id,
        thread_id=thread_id if thread_id is not None else row.thread_id,
        seq=row.seq,
        ts=row.ts,
        agent=row.agent,
        data=data,
    )


def _page(items: list[Any], limit: int) -> Page[Any]:
    """``items`` (at most one more than ``limit``, fetched to learn whether more follow) as a
    page of ``limit``."""
    if len(items) <= limit:
        return Page(items, None)
    last = items[limit - 1]
    return Page(items[:limit], (last.created_at, last.id))


# threads

# A thread with the id of its active run (running or paused; or NULL): the partial unique
# index allows one.
_THREADS_WITH_RUN = select(THREADS, RUNS.c.id.label("active_run_id")).outerjoin(
    RUNS, and_(RUNS.c.thread_id == THREADS.c.id, RUNS.c.status.in_(ACTIVE_STATUSES))
)


def add_thread(conn: Connection, thread: Thread, *, client_key: str | None = None) -> None:
    conn.execute(
        insert(THREADS).values(
            id=thread.id,
            user_id=thread.user_id,
            title=thread.title,
            created_at=thread.created_at,
            origin=thread.origin,
            metadata=thread.metadata,
            client_key=client_key,
        )
    )


def thread_by_key(conn: Connection, *, user_id: str, client_key: str) -> Thread | None:
    """The user's thread its client names ``client_key`` (the AI SDK's chat id)."""
    row = conn.execute(
        _THREADS_WITH_RUN.where(THREADS.c.user_id == user_id, THREADS.c.client_key == client_key)
    ).first()
    return None if row is None else thread_of(row, queued_run_ids(conn, thread_ids=[row.id]))


def set_thread_metadata(conn: Connection, *, thread_id: str, user_id: str, metadata: str) -> bool:
    """Replace what the thread's client attached to it; False when the user has no such
    thread."""
    result = conn.execute(
        update(THREADS)
        .where(THREADS.c.id == thread_id, THREADS.c.user_id == user_id)
        .values(metadata=metadata)
    )
    return bool(result.rowcount)


def get_thread(conn: Connection, *, thread_id: str, user_id: str) -> Thread | None:
    row = conn.execute(
        _THREADS_WITH_RUN.where(THREADS.c.id == thread_id, THREADS.c.user_id == user_id)
    ).first()
    return None if row is None else thread_of(row, queued_run_ids(conn, thread_ids=[row.id]))


def list_threads(
    conn: Connection, *, user_id: str, limit: int, after: tuple[datetime, str] | None = None
) -> Page[Thread]:
    """The user's threads, newest first, ``limit`` at a time, from after ``after`` (the
    ``(created_at, id)`` of the last one of the page before)."""
    query = _THREADS_WITH_RUN.where(THREADS.c.user_id == user_id)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(THREADS.c.created_at < at, and_(THREADS.c.created_at == at, THREADS.c.id > last_id))
        )
    rows = conn.execute(
        query.order_by(THREADS.c.created_at.desc(), THREADS.c.id).limit(limit + 1)
    ).all()
    queued = queued_run_ids(conn, thread_ids=[row.id for row in rows])
    return _page([thread_of(row, queued) for row in rows], limit)


# The condition of the partial index ix_runs_queued, and the order a thread's queue starts in:
# runs that interrupt or roll back the busy run first, then the order of storing.
QUEUED = RUNS.c.status == "queued"
QUEUE_ORDER = (RUNS.c.queue_ahead.desc(), RUNS.c.queue_position)


def queued_run_ids(conn: Connection, *, thread_ids: list[str]) -> dict[str, list[str]]:
    """The queued runs of each of ``thread_ids``, in the order they will start."""
    if not thread_ids:
        return {}
    rows = conn.execute(
        select(RUNS.c.thread_id, RUNS.c.id)
        .where(RUNS.c.thread_id.in_(thread_ids), QUEUED)
        .order_by(RUNS.c.thread_id, *QUEUE_ORDER)
    )
    found: dict[str, list[str]] = {}
    for thread_id, run_id in rows:
        found.setdefault(thread_id, []).append(run_id)
    return found


def rename_thread(conn: Connection, *, thread_id: str, user_id: str, title: str) -> bool:
    """Whether the user's thread was there to rename."""
    result = conn.execute(
        update(THREADS)
        .where(THREADS.c.id == thread_id, THREADS.c.user_id == user_id)
        .values(title=title)
    )
    return bool(result.rowcount)


def delete_idle_thread(conn: Connection, *, thread_id: str, user_id: str) -> bool | None:
    """Delete the user's thread with its messages, runs and events, unless a run of it has not
    ended (running, paused for approval, or queued): True when deleted, False when one has
    not, None when there is no such thread. Explicit deletes, child rows first."""
    # Held first, as every writer of a thread's runs holds it (src/runs/queue.py): the same
    # order of locks everywhere, so none of them waits for another in a cycle.
    owned = conn.scalar(
        select(THREADS.c.id)
        .where(THREADS.c.id == thread_id, THREADS.c.user_id == user_id)
        .with_for_update()
    )
    if owned is None:
        return None
    busy = conn.scalar(
        select(RUNS.c.id).where(
            RUNS.c.thread_id == thread_id, RUNS.c.status.in_((*ACTIVE_STATUSES, "queued"))
        )
    )
    if busy is not None:
        return False
    runs = select(RUNS.c.id).where(RUNS.c.thread_id == thread_id).scalar_subquery()
    conn.execute(delete(APPROVALS).where(APPROVALS.c.run_id.in_(runs)))
    conn.execute(delete(EVENTS).where(EVENTS.c.run_id.in_(runs)))
    conn.execute(delete(RUNS).where(RUNS.c.thread_id == thread_id))
    conn.execute(delete(MESSAGES).where(MESSAGES.c.thread_id == thread_id))
    conn.execute(delete(THREADS).where(THREADS.c.id == thread_id))
    return True


# messages


def assistant_message(conn: Connection, *, run_id: str) -> Message | None:
    """The answer a completed run stored."""
    return _message_of_run(conn, run_id=run_id, role="assistant")


def user_message(conn: Connection, *, run_id: str) -> Message | None:
    """The message that started a run."""
    return _message_of_run(conn, run_id=run_id, role="user")


def _message_of_run(conn: Connection, *, run_id: str, role: str) -> Message | None:
    row = conn.execute(
        select(MESSAGES).where(MESSAGES.c.run_id == run_id, MESSAGES.c.role == role)
    ).first()
    return None if row is None else message_of(row)


def list_messages(
    conn: Connection,
    *,
    thread_id: str,
    user_id: str,
    limit: int | None = None,
    after: tuple[datetime, str] | None = None,
) -> Page[Message]:
    """The thread's messages, oldest first: all of them, or ``limit`` from after ``after``."""
    query = (
        select(MESSAGES)
        .join(THREADS, THREADS.c.id == MESSAGES.c.thread_id)
        .where(MESSAGES.c.thread_id == thread_id, THREADS.c.user_id == user_id)
    )
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(
                MESSAGES.c.created_at > at,
                and_(MESSAGES.c.created_at == at, MESSAGES.c.id > last_id),
            )
        )
    query = query.order_by(MESSAGES.c.created_at, MESSAGES.c.id)
    if limit is not None:
        query = query.limit(limit + 1)
    messages = [message_of(r) for r in conn.execute(query)]
    return _page(messages, limit) if limit is not None else Page(messages, None)


def thread_messages(
    conn: Connection,
    *,
    thread_id: str,
    user_id: str,
    limit: int,
    after: tuple[datetime, str] | None = None,
) -> Page[Message] | None:
    """``list_messages`` of the user's thread; None when the user has no such thread."""
    owned = conn.scalar(
        select(THREADS.c.id).where(THREADS.c.id == thread_id, THREADS.c.user_id == user_id)
    )
    if owned is None:
        return None
    return list_messages(conn, thread_id=thread_id, user_id=user_id, limit=limit, after=after)


# runs and events


def get_run(conn: Connection, *, run_id: str, user_id: str) -> Run | None:
    row = conn.execute(select(RUNS).where(RUNS.c.id == run_id, RUNS.c.user_id == user_id)).first()
    return None if row is None else run_of(row)


def list_events(conn: Connection, *, run_id: str, user_id: str, after: int) -> list[Event]:
    rows = conn.execute(
        select(EVENTS, RUNS.c.thread_id)
        .join(RUNS, RUNS.c.id == EVENTS.c.run_id)
        .where(EVENTS.c.run_id == run_id, RUNS.c.user_id == user_id, EVENTS.c.seq > after)
        .order_by(EVENTS.c.seq)
    )
    return [event_of(row) for row in rows]


def run_events(conn: Connection, *, run_id: str, user_id: str, after: int) -> list[Event] | None:
    """``list_events`` of the user's run; None when the user has no such run."""
    owned = conn.scalar(select(RUNS.c.id).where(RUNS.c.id == run_id, RUNS.c.user_id == user_id))
    if owned is None:
        return None
    return list_events(conn, run_id=run_id, user_id=user_id, after=after)


def count_awaiting_approval(conn: Connection) -> int:
    """How many runs wait for a person, of every user (for the gauge every host agrees on)."""
    return int(conn.scalar(select(func.count()).where(RUNS.c.status == "awaiting_approval")) or 0)


def runs_since(conn: Connection, *, user_id: str, since: datetime) -> list[str]:
    """The ids of the user's runs not ended, or ended at ``since`` or later, oldest first."""
    rows = conn.execute(
        select(RUNS.c.id)
        .where(
            RUNS.c.user_id == user_id,
            or_(RUNS.c.finished_at.is_(None), RUNS.c.finished_at >= since),
        )
        .order_by(RUNS.c.created_at)
    )
    return [run_id for (run_id,) in rows]
